"""Attention heads on the multi-step layout: channel blocks ↔ token sequences."""
from __future__ import annotations

from torch import Tensor


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[T, B, C, H, W]`` → ``[T, B, heads, N, C/heads]``, contiguous channel blocks per head,
    tokens in row-major (h, w) order."""
    t, b, c, h, w = x.shape
    if c % num_heads:
        raise ValueError(f'channels {c} not divisible by num_heads {num_heads}')
    return x.reshape(t, b, num_heads, c // num_heads, h * w).transpose(-1, -2)


def merge_heads(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`split_heads`: ``[T, B, heads, N, d]`` → ``[T, B, heads*d, H, W]``."""
    t, b, heads, n, d = x.shape
    return x.transpose(-1, -2).reshape(t, b, heads * d, *hw)
