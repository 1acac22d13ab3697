"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .channels_last import ChannelsLastHook, to_channels_last
from .compile import CompileHook, compile_segmentor, recompute_for_backward
from .fuse_conv_bn import FuseConvBNHook, count_batchnorms, fold_batchnorms
from .inference_options import (INFERENCE_OPTIONS, InferenceOption, add_inference_options,
                                chosen_inference_options)
from .lean_inference import set_lean_inference
from .neuron_reset import NeuronResetHook, reset_neurons
from .torch_threads import TorchThreadsHook

__all__ = ['ChannelsLastHook', 'CompileHook', 'FuseConvBNHook', 'INFERENCE_OPTIONS',
           'InferenceOption', 'NeuronResetHook', 'TorchThreadsHook', 'add_inference_options',
           'chosen_inference_options', 'compile_segmentor', 'count_batchnorms',
           'fold_batchnorms', 'recompute_for_backward', 'reset_neurons', 'set_lean_inference',
           'to_channels_last']
