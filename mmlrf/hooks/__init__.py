"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .channels_last import ChannelsLastHook, to_channels_last
from .fuse_conv_bn import FuseConvBNHook, count_batchnorms, fold_batchnorms
from .neuron_reset import NeuronResetHook, reset_neurons
from .torch_threads import TorchThreadsHook

__all__ = ['ChannelsLastHook', 'FuseConvBNHook', 'NeuronResetHook', 'TorchThreadsHook',
           'count_batchnorms', 'fold_batchnorms', 'reset_neurons', 'to_channels_last']
