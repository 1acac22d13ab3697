# Spikformer-8-768 (official SSA) on ImageNet-1K; paper Table 1 baseline (74.81 top-1).
_base_ = ['./spikformer-8-512-ssa_8xb64_in1k.py']
model = dict(backbone=dict(arch='8-768'), head=dict(in_channels=768))
