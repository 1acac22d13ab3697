"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .fuse_conv_bn import FuseConvBNHook, count_batchnorms, fold_batchnorms
from .neuron_reset import NeuronResetHook, reset_neurons
from .torch_threads import TorchThreadsHook

__all__ = ['FuseConvBNHook', 'NeuronResetHook', 'TorchThreadsHook', 'count_batchnorms',
           'fold_batchnorms', 'reset_neurons']
