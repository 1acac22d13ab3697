"""Spiking self-attention mixers without softmax (Spikformer SSA, SDT-V3 SDSA)."""
from __future__ import annotations

import math

from mmseg.registry import MODELS
from torch import Tensor

from ..layers import merge_heads, split_heads
from .base import TokenMixer

SSA_ORDERS = ('kv', 'qk')


def ssa_product(q: Tensor, k: Tensor, v: Tensor, scale: float, order: str) -> Tensor:
    """``scale · Q Kᵀ V`` per head without softmax.

    Args:
        q, k (Tensor): ``[..., N, d]``.
        v (Tensor): ``[..., N, dv]``.
        scale (float): multiplies the product.
        order (str): 'kv' computes ``Q (Kᵀ V)`` (d×dv state, O(N·d·dv)); 'qk' computes
            ``(Q Kᵀ) V`` (N×N map, O(N²·(d+dv))), as the official SDT-V3.

    Returns:
        Tensor: ``[..., N, dv]``.
    """
    if order == 'kv':
        return (q @ (k.transpose(-1, -2) @ v)) * scale
    if order == 'qk':
        return ((q @ k.transpose(-1, -2)) @ v) * scale
    raise ValueError(f'order must be one of {SSA_ORDERS}, got {order!r}')


@MODELS.register_module()
class SSA(TokenMixer):
    """Spiking self-attention ``scale · Q Kᵀ V`` (no softmax), KV-first or QK-first.

    Spikformer uses ``order='kv'``-equivalent maths with ``scale=0.125``; SDT-V3's segmentation
    attention (SDSA) is ``order='qk'`` with ``scale = 2 / sqrt(d)``, d = qk_channels / num_heads.

    Args:
        order (str): 'kv' or 'qk' (same result, different memory: d×dv vs N×N per head).
        scale (float | None): product scale; None means ``2 / sqrt(d)`` (SDT-V3's formula).
        **kwargs: see :class:`TokenMixer`.
    """

    def __init__(self, order: str = 'kv', scale: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if order not in SSA_ORDERS:
            raise ValueError(f'order must be one of {SSA_ORDERS}, got {order!r}')
        head_dim = self.qk_channels // self.num_heads
        self.order = order
        self.scale = float(scale) if scale is not None else 2.0 / math.sqrt(head_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor | None = None) -> Tensor:
        hw = v.shape[-2:]
        out = ssa_product(split_heads(q, self.num_heads), split_heads(k, self.num_heads),
                          split_heads(v, self.num_heads), self.scale, self.order)
        return merge_heads(out, hw)

    def extra_repr(self) -> str:
        return f'order={self.order!r}, scale={self.scale:.6g}, num_heads={self.num_heads}'
