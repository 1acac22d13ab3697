# The generated cue task (mmlrf.datasets.toy_cue), ADE20K layout, 5 classes: a target's class
# is announced by a coloured cue elsewhere in the image (labels need context across it).
# Generated under data_root on first use if absent. Root: env MMLRF_TOY_CUE_ROOT (default
# data/toy_cue relative to the working directory) or `--cfg-options data_root=PATH`.
dataset_type = 'ToyCueDataset'
data_root = '{{$MMLRF_TOY_CUE_ROOT:data/toy_cue}}'
cue_generate = dict(num_train=240, num_val=40, size=64, seed=0)
crop_size = (64, 64)
# No augmentation, as the toy texture set.
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
        generate=cue_generate,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        generate=cue_generate,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
