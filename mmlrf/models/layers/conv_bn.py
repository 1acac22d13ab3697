"""Frame-wise convolution blocks on the multi-step layout ``[T, B, C, H, W]``.

Every spiking module works on ``[T, B, C, H, W]`` (T = 1 for the stateless integer neuron of
SDT-V3); frame-wise layers (conv, norm) run on the ``[T*B, C, H, W]`` view.
"""
from __future__ import annotations

from typing import Callable

from mmcv.cnn import build_conv_layer, build_norm_layer
from torch import Tensor, nn

#: The norm layer of every block unless a config says otherwise.
DEFAULT_NORM_CFG = dict(type='BN')


def seq_apply(module: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a frame-wise module to ``[T, B, ...]`` by folding T into the batch."""
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def conv_norm(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))`` frame-wise on ``[T, B, C, H, W]``."""
    return seq_apply(lambda z: norm(conv(z)), x)


def build_norm(norm_cfg: dict | None, channels: int) -> nn.Module:
    """The norm layer ``norm_cfg`` names (mmcv's ``build_norm_layer``; None: BatchNorm2d)."""
    return build_norm_layer(norm_cfg or DEFAULT_NORM_CFG, channels)[1]


class ConvBN(nn.Sequential):
    """Conv (index 0) → norm (index 1) on ``[T, B, C, H, W]``; the official SDT-V3 keys
    (``<name>.0.weight``, ``<name>.1.running_mean``).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): square kernel size.
        stride (int): stride.
        padding (int | None): padding; None means ``dilation * (kernel_size // 2)``.
        groups (int): conv groups.
        bias (bool): conv bias.
        dilation (int): conv dilation.
        conv_cfg (dict | None): conv layer (mmcv ``build_conv_layer``; None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, padding: int | None = None, groups: int = 1,
                 bias: bool = False, dilation: int = 1, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        if padding is None:
            padding = dilation * (kernel_size // 2)
        super().__init__(build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size,
                                          stride, padding, dilation=dilation, groups=groups,
                                          bias=bias),
                         build_norm(norm_cfg, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C_in, H, W]`` → ``[T, B, C_out, H', W']``."""
        return conv_norm(self[0], self[1], x)
