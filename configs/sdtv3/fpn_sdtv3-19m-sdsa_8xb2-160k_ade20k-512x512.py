# SDT-V3-19M (official attention: SDSA = QK-first SSA, V x4, scale 2/sqrt(d)) + spiking FPN,
# ADE20K 512x512, 8 GPUs x 2 images = batch 16, 160k iterations (paper protocol, method.md §5).
# ImageNet-pretrained backbone (converted to mmlrf keys with tools/convert_sdtv3.py):
# env MMLRF_PRETRAINED or --cfg-options model.backbone.init_cfg.checkpoint=PATH. A missing file
# is an error (tools/train.py checks before building anything; mmengine would raise too).
_base_ = [
    '../_base_/models/fpn_sdtv3.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        arch='19M',
        init_cfg=dict(type='Pretrained',
                      checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-19m_in1k.pth}}')),
    neck=dict(in_channels=[32, 64, 128, 360]),
    decode_head=dict(num_classes=150))
