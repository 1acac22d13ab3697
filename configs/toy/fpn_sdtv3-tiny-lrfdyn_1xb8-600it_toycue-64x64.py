# CPU-sized run on the generated cue task (mmlrf.datasets.toy_cue: a striped target whose class
# a coloured cue elsewhere in the image announces; 64x64 images, 5 classes, generated under
# data/toy_cue on first use): the model, schedule and pipelines of the toy texture config.
#   python tools/train.py configs/toy/fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toycue-64x64.py
# Root: env MMLRF_TOY_CUE_ROOT (default data/toy_cue relative to the working directory) or
# `--cfg-options data_root=PATH`.
_base_ = ['./fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py']
dataset_type = 'ToyCueDataset'
data_root = '{{$MMLRF_TOY_CUE_ROOT:data/toy_cue}}'
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader
