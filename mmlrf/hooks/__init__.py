"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .neuron_reset import NeuronResetHook, reset_neurons
from .torch_threads import TorchThreadsHook

__all__ = ['NeuronResetHook', 'TorchThreadsHook', 'reset_neurons']
