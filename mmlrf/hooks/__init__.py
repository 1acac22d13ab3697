"""mmengine hooks (registered in ``mmseg.registry.HOOKS``)."""
from .neuron_reset import NeuronResetHook, reset_neurons

__all__ = ['NeuronResetHook', 'reset_neurons']
