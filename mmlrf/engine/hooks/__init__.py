"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .channels_last_hook import ChannelsLastHook
from .compile_hook import CompileHook
from .finite_check_hook import FiniteCheckHook, NonFiniteError
from .fuse_conv_bn_hook import FuseConvBNHook
from .model_data_check_hook import ModelDataCheckHook, ModelDataMismatchError
from .neuron_reset import NeuronResetHook, reset_neurons
from .strict_load_hook import StrictLoadHook
from .torch_threads import TorchThreadsHook

__all__ = ['ChannelsLastHook', 'CompileHook', 'FiniteCheckHook', 'FuseConvBNHook',
           'ModelDataCheckHook', 'ModelDataMismatchError', 'NeuronResetHook', 'NonFiniteError',
           'reset_neurons', 'StrictLoadHook', 'TorchThreadsHook']
