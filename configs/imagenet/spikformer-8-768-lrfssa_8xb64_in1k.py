# Spikformer-8-768 with LRF-SSA (SSA + dilated depth-wise local branch, dilations 3/5).
_base_ = ['./spikformer-8-768-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(type='LRFSSA', dilations=(3, 5))))
