# SDT-V3 (E-SpikeFormer) + spiking Semantic-FPN, the SDT-V3 segmentation protocol.
# Default: the 19M backbone with the official attention (QK-first SSA, V expanded x4,
# scale 2/sqrt(d)). Backbone outputs are at the true strides 2/4/8/16 with channels
# [C0/2, C0, C1, C3] (19M: C = [64, 128, 256, 360]); the logits come out at stride 2.
# SyncBN as mmseg's multi-GPU configs (mmengine reverts it to BN in a single process);
# RoutedConv2d: faster CPU convolutions and 1-byte spike codes saved for backward
# (docs/benchmarks.md).
norm_cfg = dict(type='SyncBN', requires_grad=True)
conv_cfg = dict(type='RoutedConv2d')
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    # EncoderDecoder with lean inference: the same predictions in less memory (row strips,
    # maps freed once read, the label map over class chunks without full-resolution logits);
    # model.lean_inference=False for the plain paths.
    type='LeanEncoderDecoder',
    lean_inference=True,
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SDTV3',
        arch='19M',
        num_heads=8,
        mlp_ratio=4,
        attn=dict(type='SSA', order='qk'),
        out_indices=(0, 1, 2, 3),
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg),
    # Neck and head neurons: MultiSpike D=4 normalised by T=4 (official QFPN / QFPNHead).
    neck=dict(type='SpikingFPN', in_channels=[32, 64, 128, 360], out_channels=128, num_outs=4,
              conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    decode_head=dict(
        type='SpikingFPNHead',
        in_channels=[128, 128, 128, 128],
        in_index=[0, 1, 2, 3],
        feature_strides=[2, 4, 8, 16],
        channels=128,
        # The official head builds a 0.1 dropout but never applies it: 0 reproduces it.
        dropout_ratio=0.0,
        num_classes=150,
        align_corners=False,
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
