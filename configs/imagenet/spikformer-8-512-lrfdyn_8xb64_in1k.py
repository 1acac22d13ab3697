# Spikformer-8-512 with LRF-Dyn (the attention map replaced by dendritic dynamics on V + LRF branch).
_base_ = ['./spikformer-8-512-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(_delete_=True, type='LRFDyn')))
