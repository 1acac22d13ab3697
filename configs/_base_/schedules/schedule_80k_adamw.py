# The SDT-V3 protocol shortened to 80k iterations (Cityscapes, as in Spike2Former's configs).
_base_ = ['./schedule_160k_adamw.py']
max_iters = 80000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=8000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000,
                    backend_args=dict(backend='atomic_local')))
