"""Small building blocks shared by attention operators, backbones and heads.

Layout convention: every spiking module works on ``[T, B, C, H, W]`` (T = 1 for the stateless
integer neuron of SDT-V3). Frame-wise layers (conv, BN) run on the ``[T*B, C, H, W]`` view.
"""
from __future__ import annotations

from torch import Tensor, nn

from .conv import RoutedConv2d


def check_positive_int(value: int, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            int(value) != value or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


def seq_apply(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a frame-wise module to ``[T, B, ...]`` by folding T into the batch."""
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))`` on ``[T, B, C, H, W]`` (frame-wise; a
    :class:`~mmlrf.conv.RoutedConv2d` saves a multi-spike ``x`` as its 1-byte code)."""
    return seq_apply(lambda z: bn(conv(z)), x)


class ConvBN(nn.Sequential):
    """``Conv2d`` (index 0) → ``BatchNorm2d`` (index 1) on ``[T, B, C, H, W]``.

    The conv is a :class:`~mmlrf.conv.RoutedConv2d` (faster CPU routes for 1×1 and depth-wise
    convs) that saves a multi-spike input for backward as its 1-byte code.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): square kernel size.
        stride (int): stride.
        padding (int | None): padding; None means ``kernel_size // 2``.
        groups (int): conv groups.
        bias (bool): conv bias.
        dilation (int): conv dilation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, padding: int | None = None, groups: int = 1,
                 bias: bool = False, dilation: int = 1) -> None:
        if padding is None:
            padding = dilation * (kernel_size // 2)
        super().__init__(RoutedConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                      dilation=dilation, groups=groups, bias=bias),
                         nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C_in, H, W]`` → ``[T, B, C_out, H', W']``."""
        return conv_bn(self[0], self[1], x)


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
