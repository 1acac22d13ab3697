# SDT-V3-L (E-SpikeFormer 19M, official QK-first SDSA) on ImageNet-1K.
_base_ = ['./sdtv3-s-ssa_8xb64_in1k.py']
model = dict(backbone=dict(arch='L'), head=dict(in_channels=360))
