"""Stochastic depth on the multi-step layout."""
from __future__ import annotations

from torch import Tensor


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth on ``[T, B, ...]``: drops whole samples (dim 1), the same for every T.

    Kept samples are scaled by ``1 / (1 - rate)``; identity when not training or ``rate == 0``.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((1, x.shape[1]) + (1,) * (x.dim() - 2)).bernoulli_(keep)
    return x * mask / keep
