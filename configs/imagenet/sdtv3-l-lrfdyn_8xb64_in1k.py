# SDT-V3-L with LRF-Dyn (the attention map replaced by dendritic dynamics on V + LRF branch).
_base_ = ['./sdtv3-l-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(_delete_=True, type='LRFDyn')))
