"""SDT-V3's stateless integer multi-spike neuron ("QTrick", T=1 × D)."""
from __future__ import annotations

import torch
from mmseg.registry import MODELS
from torch import Tensor, nn


class _RoundClampSTE(torch.autograd.Function):
    """``round(clamp(x, 0, D))`` (half to even) with a straight-through gradient inside [0, D]."""

    @staticmethod
    def forward(ctx, x: Tensor, max_value: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.max_value = max_value
        return torch.round(torch.clamp(x, 0, max_value))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        inside = (x >= 0) & (x <= ctx.max_value)
        return grad * inside.to(grad.dtype), None


@MODELS.register_module()
class MultiSpike(nn.Module):
    """Integer multi-spike neuron ``s(x) = round(clamp(x, 0, D)) / norm``.

    Stateless and elementwise: accepts any layout (``[T, B, ...]`` with T = 1 in SDT-V3).
    ``torch.round`` rounds half to even (0.5 → 0, 2.5 → 2), exactly as the official model.
    Outputs are multiples of ``1 / norm``; at inference each integer stands for up to D binary
    spikes.

    Args:
        max_value (int): D, the largest integer spike count (official: 4).
        norm (float | None): divisor of the integer output; None means ``max_value``
            (official: 4 in the backbone, the neck/head ``T`` argument elsewhere).
    """

    def __init__(self, max_value: int = 4, norm: float | None = None) -> None:
        super().__init__()
        if int(max_value) != max_value or max_value < 1:
            raise ValueError(f'max_value must be a positive integer, got {max_value}')
        if norm is not None and not norm > 0:
            raise ValueError(f'norm must be > 0, got {norm}')
        self.max_value = int(max_value)
        self.norm = float(norm if norm is not None else max_value)

    def reset(self) -> None:
        """Stateless: nothing to reset (present for the common neuron interface)."""

    def forward(self, x: Tensor) -> Tensor:
        return _RoundClampSTE.apply(x, float(self.max_value)) / self.norm

    def extra_repr(self) -> str:
        return f'max_value={self.max_value}, norm={self.norm}'
