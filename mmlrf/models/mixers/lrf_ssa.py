"""The local receptive field (LRF) branch (a sum of dilated 3×3 depth-wise convolutions) and the
LRF-SSA token mixer built on it."""
from __future__ import annotations

from collections.abc import Sequence

from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..layers import build_norm, seq_apply
from .ssa import SSA


def check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    """Validate a dilation set: a non-empty tuple or list of positive integers.

    Raises:
        ValueError: naming ``dilations`` if the set is empty or holds a non-positive or
            non-integer value.
    """
    if (not isinstance(dilations, (tuple, list)) or not dilations or
            not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1
                    for r in dilations)):
        raise ValueError('dilations must be a non-empty tuple of positive integers, '
                         f'got {dilations!r}')
    return tuple(dilations)


@MODELS.register_module()
class LRFBranch(BaseModule):
    """``l = Σ_{r ∈ dilations} BN_r(DWConv3x3_r(x))`` with 'same' padding (method.md §3).

    Each term is a bias-free 3×3 depth-wise convolution with dilation r and padding r (so H, W
    are kept), optionally followed by its own norm layer. Parameters: ``|dilations| · 9 · C``
    weights (+ ``2 · C`` per BN).

    Args:
        channels (int): channels C.
        dilations (Sequence[int]): dilation set, default (3, 5).
        bn (bool): a norm layer after each depth-wise conv.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
        init_cfg (dict | None): mmengine init config.

    Shapes: ``[T, B, C, H, W]`` → ``[T, B, C, H, W]``.
    """

    def __init__(self, channels: int, dilations: Sequence[int] = (3, 5), bn: bool = True,
                 conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.dilations = check_dilations(dilations)
        self.branches = nn.ModuleList(
            nn.Sequential(
                build_conv_layer(conv_cfg, channels, channels, 3, padding=r, dilation=r,
                                 groups=channels, bias=False),
                *([build_norm(norm_cfg, channels)] if bn else []))
            for r in self.dilations)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        if x.dim() != 5:
            raise ValueError(f'LRFBranch expects [T, B, C, H, W], got {tuple(x.shape)}')
        out = seq_apply(self.branches[0], x)
        for branch in self.branches[1:]:
            # in place: `out` is a conv/BN output nothing saved for backward
            out += seq_apply(branch, x)
        return out

    def extra_repr(self) -> str:
        return f'dilations={self.dilations}'


@MODELS.register_module()
class LRFSSA(SSA):
    """LRF-SSA (paper Eq. 8): spiking self-attention plus a local receptive field on V.

    ``g = s · Q Kᵀ V`` per head (see :class:`SSA`), ``l = LRFBranch(V)`` on ``[T, B, Cv, H, W]``:

    - ``local_inside_scale=False`` (default, Eq. 8): ``out = g + l``.
    - ``local_inside_scale=True`` (Eq. 14's form, the local term inside the scaled product):
      ``out = s · (Q Kᵀ V + l) = g + s · l``.

    Overhead over :class:`SSA`: ``|dilations| · 11 · Cv`` parameters (with BN).

    Args:
        order (str): 'kv' or 'qk' for the global term.
        scale (float | None): product scale s; None means ``2 / sqrt(d)``.
        dilations (Sequence[int]): dilation set of the LRF branch, default (3, 5).
        bn (bool): BatchNorm after each depth-wise conv.
        local_inside_scale (bool): scale the local term by s too (see above).
        **kwargs: see :class:`TokenMixer`.

    Shapes: ``q, k``: ``[T, B, C, H, W]``, ``v``: ``[T, B, Cv, H, W]`` → ``[T, B, Cv, H, W]``.
    """

    pretrained_additions = ('lrf',)

    def __init__(self, order: str = 'kv', scale: float | None = None,
                 dilations: Sequence[int] = (3, 5), bn: bool = True,
                 local_inside_scale: bool = False, **kwargs) -> None:
        super().__init__(order=order, scale=scale, **kwargs)
        self.lrf = LRFBranch(self.v_channels, dilations, bn, self.conv_cfg, self.norm_cfg)
        self.local_inside_scale = local_inside_scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor | None = None) -> Tensor:
        local = self.lrf(v)
        if self.local_inside_scale:
            local = local * self.scale
        return super().forward(q, k, v) + local

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, local_inside_scale={self.local_inside_scale}'
