# Cityscapes (gtFine, 19 classes), mmseg's pipeline: 512x1024 crops of the 2048x1024 images.
# Root: env MMLRF_CITYSCAPES_ROOT, or `--cfg-options data_root=PATH`.
# Image loading and sample checks: see ade20k.py.
_base_ = ['mmseg::_base_/datasets/cityscapes.py']
data_root = '{{$MMLRF_CITYSCAPES_ROOT:data/cityscapes}}'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample', num_classes=19),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegSample', num_classes=19),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=2, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
