"""Heaviside spike functions with surrogate gradients (spikingjelly's conventions)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

SURROGATES = ('sigmoid', 'atan')


class _HeavisideSpike(torch.autograd.Function):
    """Forward Θ(x), saving ``x`` and the sharpness α for a subclass' surrogate backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)


class _SigmoidSpike(_HeavisideSpike):
    """Forward Θ(x); backward α·σ(αx)·(1 − σ(αx))."""

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return grad * ctx.alpha * sg * (1 - sg), None


class _AtanSpike(_HeavisideSpike):
    """Forward Θ(x); backward (α/2) / (1 + (πα x / 2)²)."""

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2), None


_FUNCTIONS = {'sigmoid': _SigmoidSpike, 'atan': _AtanSpike}


def spike(x: Tensor, surrogate: str = 'sigmoid', alpha: float = 4.0) -> Tensor:
    """Heaviside step ``x >= 0`` with the named surrogate gradient.

    Args:
        x (Tensor): membrane potential minus threshold, any shape.
        surrogate (str): 'sigmoid' or 'atan'.
        alpha (float): sharpness of the surrogate.
    """
    if surrogate not in _FUNCTIONS:
        raise ValueError(f'surrogate must be one of {SURROGATES}, got {surrogate!r}')
    return _FUNCTIONS[surrogate].apply(x, alpha)
