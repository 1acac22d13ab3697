# SDT-V3-S (E-SpikeFormer 5.1M, official QK-first SDSA) on ImageNet-1K; paper baseline 75.30.
_base_ = ['./_base_/in1k_spiking.py']
model = dict(
    backbone=dict(type='SDTV3', arch='S', out_indices=(3, ), attn=dict(type='SSA', order='qk')),
    head=dict(in_channels=192))
