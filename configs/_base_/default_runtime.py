# Runtime shared by every mmlrf config (mmseg's default runtime + the neuron-state reset hook).
default_scope = 'mmseg'
# mmseg's own tools (tools/train.py and tools/test.py inside the mmseg package, `mim train
# mmseg`) import mmlrf from here: its models, transforms, hooks and the mmcv-lite fixes.
custom_imports = dict(imports=['mmlrf'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
# Stateful (LIF) neurons must not carry membrane state across batches or test images. The
# three checks fail a run loudly instead of silently: a head or neck that does not fit the data
# set or backbone (before anything runs), a checkpoint that does not fit the model or holds
# NaN weights (strict load; opt out with StrictLoadHook's strict=False), a non-finite loss.
custom_hooks = [dict(type='NeuronResetHook'), dict(type='ModelDataCheckHook'),
                dict(type='StrictLoadHook'), dict(type='FiniteCheckHook')]
tta_model = dict(type='SegTTAModel')
