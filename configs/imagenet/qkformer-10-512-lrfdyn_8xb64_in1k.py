# QKFormer-10-512 with LRF-Dyn replacing the SSA of stage 3.
_base_ = ['./qkformer-10-512-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(_delete_=True, type='LRFDyn')))
