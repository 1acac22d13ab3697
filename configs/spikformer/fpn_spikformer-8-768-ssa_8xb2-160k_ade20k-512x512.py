# Spikformer-8-768 (official SSA attention) + spiking FPN: the 8-512 config at width 768, same
# protocol and pretrained-checkpoint rules.
_base_ = ['./fpn_spikformer-8-512-ssa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        arch='8-768',
        init_cfg=dict(checkpoint='{{$MMLRF_PRETRAINED:checkpoints/spikformer-8-768_in1k.pth}}')),
    neck=dict(in_channels=[768] * 4))
