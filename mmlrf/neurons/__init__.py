"""Spiking neurons. Every neuron maps a tensor to spikes of the same shape and has ``reset()``."""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import build_component
from .layout import check_multistep
from .lif import MultiStepLIF
from .multispike import MultiSpike, writable
from .surrogate import spike

NEURON_TYPES = ('MultiStepLIF', 'MultiSpike')


def build_neuron(cfg: dict, **overrides) -> nn.Module:
    """Build a neuron from a config dict such as ``dict(type='MultiStepLIF', tau=2.0)``.

    Args:
        cfg (dict): neuron config; ``type`` must be one of :data:`NEURON_TYPES`.
        **overrides: keys replacing those of ``cfg`` (e.g. ``v_threshold=0.5``).
    """
    if not isinstance(cfg, dict) or cfg.get('type') not in NEURON_TYPES:
        raise ValueError(f'neuron type must be one of {NEURON_TYPES}, got {cfg!r}')
    return build_component({**cfg, **overrides})


def spike_temporary(neuron: nn.Module, x: Tensor) -> Tensor:
    """``neuron(x)`` for an ``x`` that nothing reads afterwards: a :class:`MultiSpike`
    overwrites ``x`` with its spikes where it can (``inplace=True``); other neurons allocate
    their output as usual."""
    return neuron(x, inplace=True) if isinstance(neuron, MultiSpike) else neuron(x)


__all__ = ['MultiStepLIF', 'MultiSpike', 'spike', 'spike_temporary', 'writable',
           'check_multistep', 'build_neuron', 'NEURON_TYPES']
