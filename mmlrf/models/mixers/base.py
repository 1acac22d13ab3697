"""Base class of token mixers: the part of a spiking attention block between Q/K/V and output."""
from __future__ import annotations

from mmengine.model import BaseModule
from torch import Tensor

from ...utils import check_positive_int


class TokenMixer(BaseModule):
    """Mixes tokens of the spike tensors Q, K, V (and the block input spikes X).

    Subclasses set :attr:`requires` (a subset of ``('q', 'k', 'v', 'x')``): the attention
    block only builds the projections a mixer needs, and passes None for the others. A mixer
    that extends an attention names the submodules it adds in :attr:`pretrained_additions`:
    loading a checkpoint of the host attention reports their tensors as new instead of
    missing (:mod:`mmlrf.interop.pretrained`).

    Args:
        num_heads (int): number of heads; must divide ``qk_channels`` and ``v_channels``.
        qk_channels (int): channels C of Q, K and of the block input X.
        v_channels (int): channels of V (C times the block's ``v_ratio``).
        conv_cfg (dict | None): conv layer of any convolution the mixer builds (mmcv
            ``build_conv_layer``; None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer of any it builds (None: ``BN``).
        init_cfg (dict | None): mmengine init config.

    Shapes: ``q, k, x``: ``[T, B, C, H, W]``; ``v``: ``[T, B, Cv, H, W]``;
    output ``[T, B, out_channels, H, W]`` (real-valued, before the block's attention neuron).
    """

    requires: tuple[str, ...] = ('q', 'k', 'v')
    pretrained_additions: tuple[str, ...] = ()

    def __init__(self, num_heads: int, qk_channels: int, v_channels: int,
                 conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        num_heads = check_positive_int(num_heads, 'num_heads')
        qk_channels = check_positive_int(qk_channels, 'qk_channels')
        v_channels = check_positive_int(v_channels, 'v_channels')
        for name, value in (('qk_channels', qk_channels), ('v_channels', v_channels)):
            if value % num_heads:
                raise ValueError(f'{name}={value} must be divisible by num_heads={num_heads}')
        self.num_heads = num_heads
        self.qk_channels = qk_channels
        self.v_channels = v_channels
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg

    @property
    def out_channels(self) -> int:
        """Channels of the mixer output (V's by default)."""
        return self.v_channels

    def forward(self, q: Tensor | None, k: Tensor | None, v: Tensor | None,
                x: Tensor | None) -> Tensor:
        raise NotImplementedError
