"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .channels_last_hook import ChannelsLastHook
from .compile_hook import CompileHook
from .fuse_conv_bn_hook import FuseConvBNHook
from .neuron_reset import NeuronResetHook, reset_neurons
from .torch_threads import TorchThreadsHook

__all__ = ['ChannelsLastHook', 'CompileHook', 'FuseConvBNHook', 'NeuronResetHook',
           'reset_neurons', 'TorchThreadsHook']
