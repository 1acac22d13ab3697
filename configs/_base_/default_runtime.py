# Runtime shared by every mmlrf config (mmseg's default runtime + the neuron-state reset hook).
default_scope = 'mmseg'
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
# Stateful (LIF) neurons must not carry membrane state across batches or test images.
custom_hooks = [dict(type='NeuronResetHook')]
tta_model = dict(type='SegTTAModel')
