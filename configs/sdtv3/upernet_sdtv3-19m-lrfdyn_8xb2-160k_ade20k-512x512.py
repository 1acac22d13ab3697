# SDT-V3-19M + LRF-Dyn with mmseg's own (non-spiking) UPerHead + FCN auxiliary head, inherited
# from mmseg's upernet_r50 model config, ADE20K 512x512, 8x2 = batch 16, 160k iterations.
# A stronger, conventional head for comparison with the spiking FPN.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
model = dict(
    type='LeanEncoderDecoder',  # as in _base_/models/fpn_sdtv3.py: lean inference
    pretrained=None,
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(
        _delete_=True,
        type='SDTV3',
        arch='19M',
        attn=dict(type='LRFDyn', num_dendrites=8, dilations=(3, 5)),
        out_indices=(0, 1, 2, 3),
        conv_cfg=dict(type='RoutedConv2d'),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained',
                      checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-19m_in1k.pth}}')),
    # SDT-V3 outputs [C0/2, C0, C1, C3] = [32, 64, 128, 360] channels at strides 2/4/8/16.
    decode_head=dict(in_channels=[32, 64, 128, 360], channels=256, num_classes=150),
    auxiliary_head=dict(in_channels=128, in_index=2, num_classes=150))
