# ADE20K (ADEChallengeData2016), mmseg's pipeline: 512x512 crops, reduce_zero_label.
# Root: env MMLRF_ADE20K_ROOT, or `--cfg-options data_root=PATH` (tools/train.py and
# tools/test.py apply a top-level data_root to every dataloader).
_base_ = ['mmseg::_base_/datasets/ade20k.py']
data_root = '{{$MMLRF_ADE20K_ROOT:data/ade/ADEChallengeData2016}}'
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=1, num_workers=2, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
