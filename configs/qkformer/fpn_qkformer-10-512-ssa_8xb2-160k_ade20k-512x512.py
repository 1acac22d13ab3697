# QKFormer HST-10-512 (official SSA attention) + spiking FPN: the 10-384 config at width 512
# (stage widths 128/256/512), same protocol and pretrained-checkpoint rules.
_base_ = ['./fpn_qkformer-10-384-ssa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        arch='10-512',
        init_cfg=dict(checkpoint='{{$MMLRF_PRETRAINED:checkpoints/qkformer-10-512_in1k.pth}}')),
    neck=dict(in_channels=[128, 256, 512]))
