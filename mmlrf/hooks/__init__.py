"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .channels_last import ChannelsLastHook, to_channels_last
from .compile import CompileHook, compile_segmentor, recompute_for_backward
from .fuse_conv_bn import FuseConvBNHook, count_batchnorms, fold_batchnorms
from .neuron_reset import NeuronResetHook, reset_neurons
from .torch_threads import TorchThreadsHook

__all__ = ['ChannelsLastHook', 'CompileHook', 'FuseConvBNHook', 'NeuronResetHook',
           'TorchThreadsHook', 'compile_segmentor', 'count_batchnorms', 'fold_batchnorms',
           'recompute_for_backward', 'reset_neurons', 'to_channels_last']
