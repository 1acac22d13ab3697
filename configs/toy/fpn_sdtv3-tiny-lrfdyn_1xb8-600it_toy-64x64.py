# CPU-sized end-to-end run: a tiny SDT-V3 (widths [8, 16, 32, 32], 0.4M parameters) with LRF-Dyn
# attention + spiking FPN (32 channels) on the generated toy texture data set (64x64 images,
# 5 classes, generated under data/toy on first use), 1 process x batch 8, 600 iterations, from
# scratch:  python tools/train.py configs/toy/fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py
_base_ = [
    '../_base_/models/fpn_sdtv3.py', '../_base_/datasets/toy.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
max_iters = 600
norm_cfg = dict(type='BN')  # one process
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    # Layer scales start at 1 (official 1e-6 assumes ImageNet pre-training) so the attention
    # branches learn from scratch within the short schedule.
    backbone=dict(arch=None, embed_dims=[8, 16, 32, 32], num_heads=4,
                  attn=dict(_delete_=True, type='LRFDyn'), layer_scale_init=1.0,
                  norm_cfg=norm_cfg),
    neck=dict(in_channels=[4, 8, 16, 32], out_channels=32, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32, num_classes=5,
                     norm_cfg=norm_cfg))
env_cfg = dict(cudnn_benchmark=False)
# One intra-op thread: faster for this tiny model, and robust on a shared CPU.
custom_hooks = [dict(type='NeuronResetHook'), dict(type='TorchThreadsHook', num_threads=1),
                dict(type='ModelDataCheckHook'), dict(type='StrictLoadHook'),
                dict(type='FiniteCheckHook')]
optim_wrapper = dict(optimizer=dict(lr=8e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
        # atomic saves: a crash while saving never clobbers the last good file
        backend_args=dict(backend='atomic_local')))
randomness = dict(seed=0)
