"""Spiking neurons. Every neuron maps a tensor to spikes of the same shape
(``neuron(x, inplace=False)``; ``inplace``: ``x`` is a temporary the neuron may overwrite at
inference) and has ``reset()``."""
from __future__ import annotations

from torch import nn

from ...registry import build_component
from .layout import check_multistep
from .lif import MultiStepLIF
from .multispike import MultiSpike
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


__all__ = ['MultiStepLIF', 'MultiSpike', 'spike', 'check_multistep', 'build_neuron',
           'NEURON_TYPES']
