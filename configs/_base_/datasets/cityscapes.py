# Cityscapes (gtFine, 19 classes), mmseg's pipeline: 512x1024 crops of the 2048x1024 images.
# Root: env MMLRF_CITYSCAPES_ROOT, or `--cfg-options data_root=PATH`.
_base_ = ['mmseg::_base_/datasets/cityscapes.py']
data_root = '{{$MMLRF_CITYSCAPES_ROOT:data/cityscapes}}'
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=1, num_workers=2, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
