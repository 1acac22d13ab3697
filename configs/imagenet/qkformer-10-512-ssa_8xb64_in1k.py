# QKFormer-10-512 (HST-10-512, official attention) on ImageNet-1K; paper baseline 82.04 top-1.
_base_ = ['./qkformer-10-384-ssa_8xb64_in1k.py']
model = dict(backbone=dict(arch='10-512'), head=dict(in_channels=512))
