# QKFormer-10-384 (HST-10-384, official attention) on ImageNet-1K; paper baseline 78.80 top-1.
_base_ = ['./_base_/in1k_spiking.py']
model = dict(
    backbone=dict(type='QKFormer', arch='10-384', T=4, out_indices=(2, ),
                  attn=dict(type='SSA', order='kv', scale=0.125)),
    head=dict(in_channels=384))
