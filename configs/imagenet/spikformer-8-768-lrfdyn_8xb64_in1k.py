# Spikformer-8-768 with LRF-Dyn (SSA global term + dendritic dynamics local term).
_base_ = ['./spikformer-8-768-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(_delete_=True, type='LRFDyn')))
