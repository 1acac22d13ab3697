# The generated toy texture data set (mmlrf.datasets.toy), ADE20K layout, 5 classes.
# Generated under data_root on first use if absent. Root: env MMLRF_TOY_ROOT (default data/toy
# relative to the working directory) or `--cfg-options data_root=PATH`.
dataset_type = 'ToyTextureDataset'
data_root = '{{$MMLRF_TOY_ROOT:data/toy}}'
toy_generate = dict(num_train=240, num_val=40, size=64, seed=0)
crop_size = (64, 64)
# No flips/rotations: they would turn one texture class into patterns not in the data.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegSample', num_classes=5),
    dict(type='PackSegInputs')
]
test_pipeline = train_pipeline
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        generate=toy_generate,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        generate=toy_generate,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
