# QKFormer HST-10-384 (official SSA attention) + spiking FPN, ADE20K 512x512, 8 GPUs x 2 = batch 16,
# 160k iterations, the SDT-V3 segmentation protocol. Multi-step LIF, T = 4.
# QKFormer: Q-K token attention in stages 1-2, SSA in stage 3; outputs at strides 4/8/16.
# ImageNet-pretrained backbone: env MMLRF_PRETRAINED or
# --cfg-options model.backbone.init_cfg.checkpoint=PATH (a missing file is an error).
_base_ = [
    '../_base_/models/fpn_sdtv3.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        _delete_=True,
        type='QKFormer',
        arch='10-384',
        T=4,
        attn=dict(type='SSA', order='kv', scale=0.125),
        conv_cfg={{_base_.conv_cfg}},
        norm_cfg={{_base_.norm_cfg}},
        init_cfg=dict(type='Pretrained',
                      checkpoint='{{$MMLRF_PRETRAINED:checkpoints/qkformer-10-384_in1k.pth}}')),
    neck=dict(in_channels=[96, 192, 384], num_outs=3),
    decode_head=dict(in_channels=[128] * 3, in_index=[0, 1, 2], feature_strides=[4, 8, 16]))
