# ADE20K (ADEChallengeData2016), mmseg's pipeline: 512x512 crops, reduce_zero_label.
# Root: env MMLRF_ADE20K_ROOT, or `--cfg-options data_root=PATH` (tools/train.py and
# tools/test.py apply a top-level data_root to every dataloader).
# Images load through mmlrf's LoadImageFromFile (mmlrf.datasets.loading; mmcv's name, so that
# mmseg's inference APIs find it): a missing or corrupt file raises an error naming it.
# CheckSegSample (mmlrf.datasets.sample_checks) names a file whose labels are out of range or
# whose annotation size is not its image's.
_base_ = ['mmseg::_base_/datasets/ade20k.py']
data_root = '{{$MMLRF_ADE20K_ROOT:data/ade/ADEChallengeData2016}}'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegSample', num_classes=150),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegSample', num_classes=150),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=2, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
