# Spikformer-8-512 (official SSA) on ImageNet-1K; paper Table 1 baseline (73.38 top-1).
_base_ = ['./_base_/in1k_spiking.py']
model = dict(
    backbone=dict(type='Spikformer', arch='8-512', T=4, patch_size=16, multi_scale=False,
                  attn=dict(type='SSA', order='kv', scale=0.125)),
    head=dict(in_channels=512))
