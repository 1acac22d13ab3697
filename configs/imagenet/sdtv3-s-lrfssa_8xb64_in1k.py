# SDT-V3-S with LRF-SSA (QK-first global term + dilated local branch, dilations 3/5).
_base_ = ['./sdtv3-s-ssa_8xb64_in1k.py']
model = dict(backbone=dict(attn=dict(type='LRFSSA', dilations=(3, 5))))
