# SDT-V3-L with LRF-Dyn (global term + dendritic dynamics local term).
_base_ = ['./sdtv3-l-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(_delete_=True, type='LRFDyn')))
