# SDT-V3-10M (official attention) + spiking FPN, ADE20K 512x512, 8x2 = batch 16, 160k iterations.
# Backbone outputs [C0/2, C0, C1, C3] channels at strides 2/4/8/16.
_base_ = ['./fpn_sdtv3-19m-sdsa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        arch='10M',
        init_cfg=dict(checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-10m_in1k.pth}}')),
    neck=dict(in_channels=[24, 48, 96, 240]))
