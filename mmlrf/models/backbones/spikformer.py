"""Spikformer backbone (Zhou et al., "Spikformer: When Spiking Neural Network Meets
Transformer", ICLR 2023) with a spiking multi-scale adapter for dense prediction."""
from __future__ import annotations

import math
from collections.abc import Sequence

from mmengine.model import BaseModule
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...interop import StrictPretrainedMixin
from ...utils import check_positive_int
from ..layers import build_norm, seq_apply
from ..neurons import build_neuron
from .lif_blocks import (ConvBNSpike, LIFTransformerBlock, check_lif_neuron, check_mixer,
                             check_out_indices, lookup_arch, repeat_image)

#: Published sizes ``'depth-embed_dims'``. Heads: 8 for 8-512 (official ImageNet model), 12
#: for 8-768 (head size 64); 8-384 has no official ImageNet definition, 12 heads follows the
#: official 4-384 CIFAR recipe. Heads do not change the parameter count.
SPIKFORMER_ARCHS: dict[str, dict[str, int]] = {
    '8-384': dict(embed_dims=384, depth=8, num_heads=12),
    '8-512': dict(embed_dims=512, depth=8, num_heads=8),
    '8-768': dict(embed_dims=768, depth=8, num_heads=12),
}
#: Patch sizes the spiking patch splitting supports (one max-pool per factor 2, at most 4).
PATCH_SIZES = (2, 4, 8, 16)
#: Resampling factors of the four multi-scale levels relative to the token grid.
LEVEL_SCALES = (4, 2, 1, 0.5)


class SpikingPatchSplitting(nn.Module):
    """Spikformer's SPS: four ``Conv3×3 → BN → LIF (→ max-pool)`` units, then a conv
    "relative position embedding" added to its input.

    Widths ``in → C/8 → C/4 → C/2 → C``; the last ``log2(patch_size)`` units max-pool (3×3,
    stride 2, padding 1, after the neuron), so every side becomes ``ceil(side / patch_size)``
    for any input size, without padding. Output: ``x + LIF(BN(Conv3×3(x)))`` with ``x`` the
    last unit's spikes, so values are in {0, 1, 2}.

    Args:
        in_channels (int): image channels.
        embed_dims (int): output channels C (divisible by 8).
        patch_size (int): total stride, one of :data:`PATCH_SIZES`.
        neuron (dict): LIF config.
        layers (dict): ``conv_cfg`` and ``norm_cfg`` of the units.

    Shapes: ``[T, B, in, H, W]`` → ``[T, B, C, ceil(H/p), ceil(W/p)]``.
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int,
                 neuron: dict, **layers) -> None:
        super().__init__()
        widths = (in_channels, embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims)
        first_pool = 4 - int(math.log2(patch_size))
        self.proj = nn.Sequential(*(
            ConvBNSpike(widths[i], widths[i + 1], 3, neuron,
                        pool='post' if i >= first_pool else 'none', **layers)
            for i in range(4)))
        self.rpe = ConvBNSpike(embed_dims, embed_dims, 3, neuron, **layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in, H, W]`` → ``[T, B, C, ceil(H/p), ceil(W/p)]``."""
        x = self.proj(x)
        return x + self.rpe(x)


class SpikingDeconv(nn.Module):
    """``LIF → ConvTranspose2×2 (stride 2, bias-free) → BN``: a spike-driven ×2 up-sampling.

    The neuron turns the integer residual stream into binary spikes, so the transposed conv only
    accumulates weights (no multiplications), as every conv in the backbone.

    Args:
        channels (int): input and output channels.
        neuron (dict): LIF config.
        norm_cfg (dict | None): norm layer (None: ``BN``).

    Shapes: ``[T, B, C, H, W]`` → ``[T, B, C, 2H, 2W]``.
    """

    def __init__(self, channels: int, neuron: dict, norm_cfg: dict | None = None) -> None:
        super().__init__()
        self.spike = build_neuron(neuron)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, 2, bias=False)
        self.bn = build_norm(norm_cfg, channels)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, 2H, 2W]``."""
        return seq_apply(lambda z: self.bn(self.deconv(z)), self.spike(x))


class _SeqMaxPool(nn.MaxPool2d):
    """2×2 max-pool with ``ceil_mode`` on ``[T, B, C, H, W]``."""

    def __init__(self) -> None:
        super().__init__(2, 2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return seq_apply(super().forward, x)


def build_level(scale: float, channels: int, neuron: dict,
                norm_cfg: dict | None = None) -> nn.Module:
    """Resampler of one multi-scale level: ×4 / ×2 spiking deconvs, identity, or a 2×2
    max-pool (``ceil_mode``: side ``n → ceil(n / 2)``)."""
    if scale == 1:
        return nn.Identity()
    if scale < 1:
        return _SeqMaxPool()
    return nn.Sequential(*(SpikingDeconv(channels, neuron, norm_cfg)
                           for _ in range(int(math.log2(scale)))))


@MODELS.register_module()
class Spikformer(StrictPretrainedMixin, BaseModule):
    """Spikformer backbone: SPS patch splitting, then ``depth`` blocks of spiking self-attention
    (SSA) and LIF MLP, all on a single token grid of stride ``patch_size``.

    The image ``[B, C, H, W]`` is repeated T times (direct encoding) and the network runs on
    ``[T, B, C, H, W]`` with multi-step LIF neurons (τ = 2, threshold 1, 0.5 after attention).
    Each block is ``x += Attn(x); x += MLP(x)`` (:class:`LIFTransformerBlock`); the attention
    reads the block input without spiking it first, as the official Spikformer (the input is
    already a sum of spike maps). Returned maps are averaged over T.

    **Multi-scale adaptation** (``multi_scale=True``, the default, for mmseg decode heads): as
    mmseg's BEiT / MAE backbones do for a plain ViT, the maps after the four blocks in
    ``out_indices`` are resampled to strides ``p/4, p/2, p, 2p`` (4/8/16/32 for p = 16): two
    :class:`SpikingDeconv` (×4), one (×2), identity, and a 2×2 max-pool. Every deconv reads
    binary spikes and max-pooling a spike count is comparison-only, so the adapter stays
    spike-driven. With ``multi_scale=False`` every requested block's map is returned at stride
    p (use mmseg's ``MultiLevelNeck`` to rescale them instead).

    Any input size works without padding: the token grid is ``ceil(H/p) × ceil(W/p)``; level
    ``i`` has side ``ceil(H/p) · p / s_i`` (the 2p level: ``ceil(ceil(H/p) / 2)``), so the
    up-sampled levels may exceed ``ceil(H / s_i)`` by up to ``p / s_i - 1`` pixels (decode heads
    resize between levels anyway).

    Args:
        arch (str | dict): one of :data:`SPIKFORMER_ARCHS`, or a dict with keys
            ``embed_dims`` (divisible by 8 and by ``num_heads``), ``depth``, ``num_heads``.
        T (int): time steps.
        patch_size (int): token-grid stride, one of :data:`PATCH_SIZES` (16 on ImageNet).
        in_channels (int): image channels.
        attn (dict): token mixer of every block: the official SSA is
            ``dict(type='SSA', order='kv', scale=0.125)``; ``LRFSSA`` / ``LRFDyn`` configs are
            passed through to :class:`SpikingAttention`.
        neuron (dict): ``MultiStepLIF`` config of every neuron.
        mlp_ratio (float): MLP hidden width factor.
        out_indices (Sequence[int] | None): block indices (negative from the end) whose outputs
            are returned; with ``multi_scale`` exactly 4, mapped in order to the 4 strides.
            None: ``(1, 3, 5, 7)`` for depth 8 (``(i+1)·depth//4 - 1``) with ``multi_scale``,
            else the last block. Blocks after the largest index are not run (their
            parameters get no gradient).
        multi_scale (bool): apply the multi-scale adapter.
        conv_cfg (dict | None): conv layer of every block (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer of every block (None: ``BN``).
        init_cfg (dict | list[dict] | None): mmengine init config, e.g. ``Pretrained``.

    Attributes:
        strides (tuple[int, ...]): true stride of each returned map.
        out_channels (list[int]): channels of each returned map (all ``embed_dims``).

    Shapes: input ``[B, in_channels, H, W]``; output a tuple of ``[B, embed_dims, H_i, W_i]``.
    """

    def __init__(self,
                 arch: str | dict = '8-512',
                 T: int = 4,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 attn: dict = dict(type='SSA', order='kv', scale=0.125),
                 neuron: dict = dict(type='MultiStepLIF', tau=2.0),
                 mlp_ratio: float = 4.0,
                 out_indices: Sequence[int] | None = None,
                 multi_scale: bool = True,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg)
        embed_dims, depth, num_heads = self._resolve_arch(arch)
        self.T = check_positive_int(T, 'T')
        self.in_channels = in_channels = check_positive_int(in_channels, 'in_channels')
        if patch_size not in PATCH_SIZES:
            raise ValueError(f'patch_size must be one of {PATCH_SIZES}, got {patch_size!r}')
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or \
                int(embed_dims * mlp_ratio) < 1:
            raise ValueError(f'mlp_ratio must be a positive number, got {mlp_ratio!r}')
        if not isinstance(multi_scale, bool):
            raise ValueError(f'multi_scale must be True or False, got {multi_scale!r}')
        attn = check_mixer(attn)
        neuron = check_lif_neuron(neuron)
        if out_indices is None:
            out_indices = tuple(max(0, (i + 1) * depth // 4 - 1) for i in range(4)) \
                if multi_scale else (depth - 1,)
        self.out_indices = check_out_indices(out_indices, depth)
        if multi_scale and patch_size < 4:
            raise ValueError(f'multi_scale=True needs patch_size >= 4 (level strides p/4 .. 2p), '
                             f'got patch_size={patch_size}')
        if multi_scale and len(self.out_indices) != len(LEVEL_SCALES):
            raise ValueError(f'out_indices must hold exactly {len(LEVEL_SCALES)} block indices '
                             f'with multi_scale=True, got {out_indices!r}')
        self.embed_dims, self.depth, self.num_heads = embed_dims, depth, num_heads
        self.patch_size, self.multi_scale = patch_size, multi_scale

        layers = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.patch_embed = SpikingPatchSplitting(in_channels, embed_dims, patch_size, neuron,
                                                 **layers)
        self.block = nn.ModuleList(
            LIFTransformerBlock(embed_dims, num_heads, attn, neuron, mlp_ratio, **layers)
            for _ in range(depth))
        if multi_scale:
            self.levels = nn.ModuleList(build_level(s, embed_dims, neuron, norm_cfg)
                                        for s in LEVEL_SCALES)
            self.strides = tuple(int(patch_size / s) for s in LEVEL_SCALES)
        else:
            self.levels = None
            self.strides = (patch_size,) * len(self.out_indices)
        self.out_channels = [embed_dims] * len(self.out_indices)

    @staticmethod
    def _resolve_arch(arch: str | dict) -> tuple[int, int, int]:
        arch = lookup_arch(arch, SPIKFORMER_ARCHS, ('embed_dims', 'depth', 'num_heads'))
        embed_dims, depth, num_heads = (check_positive_int(arch[k], f'arch[{k!r}]')
                                        for k in ('embed_dims', 'depth', 'num_heads'))
        if embed_dims % 8 or embed_dims % num_heads:
            raise ValueError(f"arch['embed_dims'] must be divisible by 8 and by "
                             f"arch['num_heads']={num_heads}, got {embed_dims}")
        return embed_dims, depth, num_heads

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Images ``[B, C, H, W]`` → tuple of T-averaged ``[B, embed_dims, H_i, W_i]``."""
        x = self.patch_embed(repeat_image(x, self.T, self.in_channels, 'Spikformer'))
        wanted = set(self.out_indices)
        feats = {}
        for i, blk in enumerate(self.block[:max(wanted) + 1]):
            x = blk(x)
            if i in wanted:
                feats[i] = x
        outs = [feats[i] for i in self.out_indices]
        if self.levels is not None:
            outs = [level(out) for level, out in zip(self.levels, outs)]
        return tuple(out.mean(0) for out in outs)


# Also usable as an mmpretrain backbone (``mmpretrain.models`` itself is never imported).
PRETRAIN_MODELS.register_module(module=Spikformer)
