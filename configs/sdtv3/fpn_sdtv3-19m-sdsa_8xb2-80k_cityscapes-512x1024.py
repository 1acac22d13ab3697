# SDT-V3-19M (official attention) + spiking FPN on Cityscapes: 512x1024 crops, 19 classes,
# 8 GPUs x 2 = batch 16, 80k iterations (Spike2Former's length; the paper reports no Cityscapes
# result). Sliding-window inference over the 1024x2048 images with 512x1024 windows.
_base_ = [
    '../_base_/models/fpn_sdtv3.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_adamw.py'
]
model = dict(
    data_preprocessor=dict(size=(512, 1024)),
    backbone=dict(
        arch='19M',
        init_cfg=dict(type='Pretrained',
                      checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-19m_in1k.pth}}')),
    neck=dict(in_channels=[32, 64, 128, 360]),
    decode_head=dict(num_classes=19),
    test_cfg=dict(mode='slide', crop_size=(512, 1024), stride=(341, 683)))
