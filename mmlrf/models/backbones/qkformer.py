"""QKFormer backbone (Zhou et al., "QKFormer: Hierarchical Spiking Transformer using Q-K
Attention", NeurIPS 2024): three stages, Q-K token attention in the first two, SSA in the last."""
from __future__ import annotations

from collections.abc import Sequence

from mmengine.model import BaseModule
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...interop import StrictPretrainedMixin
from ...utils import check_positive_int
from .lif_blocks import (ConvBNSpike, LIFTransformerBlock, attention_neuron,
                             check_lif_neuron, check_mixer, check_out_indices, lookup_arch,
                             repeat_image)

#: Published sizes ``'depth-embed_dims'`` (HST-10-D): stage widths D/4, D/2, D with 1, 2 and 7
#: blocks; the official models use the same head count in every stage.
QKFORMER_ARCHS: dict[str, dict] = {
    '10-384': dict(embed_dims=384, depths=(1, 2, 7), num_heads=6),
    '10-512': dict(embed_dims=512, depths=(1, 2, 7), num_heads=8),
    '10-768': dict(embed_dims=768, depths=(1, 2, 7), num_heads=12),
}
#: True stride of each stage's output.
QKFORMER_STRIDES = (4, 8, 16)


class DeformedShortcutEmbed(nn.Module):
    """Spiking patch embedding with deformed shortcut (QKFormer's SPEDS), halving each side.

    Main path: ``Conv3×3 → BN → max-pool → LIF`` (stride 2, ``in → C``) then
    ``Conv3×3 → BN → LIF`` (``C → C``); shortcut: ``Conv1×1 stride 2 → BN → LIF``
    (``in → C``); output their sum (values in {0, 1, 2}). The stem (``stem=True``, the first
    embedding, stride 4) first applies ``Conv3×3 → BN → max-pool → LIF`` (``in → C/2``) and
    feeds both paths with those spikes. Every side becomes ``ceil(side / 2)`` (``/ 4`` for the
    stem), for any input size.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels C (even for the stem).
        neuron (dict): LIF config.
        stem (bool): the first (image) embedding.
        layers (dict): ``conv_cfg`` and ``norm_cfg`` of the units.

    Shapes: ``[T, B, in, H, W]`` → ``[T, B, C, ceil(H/s), ceil(W/s)]``, s = 4 (stem) or 2.
    """

    def __init__(self, in_channels: int, out_channels: int, neuron: dict,
                 stem: bool = False, **layers) -> None:
        super().__init__()
        if stem:
            self.stem = ConvBNSpike(in_channels, out_channels // 2, 3, neuron, pool='pre',
                                    **layers)
            in_channels = out_channels // 2
        else:
            self.stem = None
        self.down = ConvBNSpike(in_channels, out_channels, 3, neuron, pool='pre', **layers)
        self.conv = ConvBNSpike(out_channels, out_channels, 3, neuron, **layers)
        self.shortcut = ConvBNSpike(in_channels, out_channels, 1, neuron, stride=2, **layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, in, H, W]`` → ``[T, B, C, H', W']``."""
        if self.stem is not None:
            x = self.stem(x)
        return self.conv(self.down(x)) + self.shortcut(x)


@MODELS.register_module()
class QKFormer(StrictPretrainedMixin, BaseModule):
    """QKFormer (hierarchical spiking transformer, HST) backbone.

    The image is repeated T times and runs on ``[T, B, C, H, W]`` with multi-step LIF neurons:

    =====  ==========================================  =======  ======  ==================
    stage  embedding                                   width    stride  blocks (attention)
    =====  ==========================================  =======  ======  ==================
    0      :class:`DeformedShortcutEmbed` (stem)       D/4      4       1 (Q-K token)
    1      :class:`DeformedShortcutEmbed`              D/2      8       2 (Q-K token)
    2      :class:`DeformedShortcutEmbed`              D        16      7 (``attn``)
    =====  ==========================================  =======  ======  ==================

    Blocks are :class:`LIFTransformerBlock` (``x += Attn(x); x += MLP(x)``). Stages 0–1 use
    ``QKTokenAttention`` (its token mask neuron: the LIF with threshold 0.5). The block's own
    neuron after the mixer (threshold 0.5) reads QKTA's binary output; with the default τ = 2 a
    binary input of 1 charges the membrane to exactly 0.5 and fires, so that neuron is the
    identity there and the block equals QKFormer's, which has none. Stage 2 uses ``attn``
    (official: SSA ``Q(KᵀV)·0.125``); the paper's LRF-SSA / LRF-Dyn variants replace exactly
    this stage's attention. Returned maps are averaged over T; the side of stage i is
    ``ceil(H / s_i)`` for any input size (no padding).

    Args:
        arch (str | dict): one of :data:`QKFORMER_ARCHS`, or a dict with keys ``embed_dims``
            (D, divisible by 8, D/4 divisible by ``num_heads``), ``depths`` (3 block counts)
            and ``num_heads``.
        T (int): time steps.
        in_channels (int): image channels.
        attn (dict): token mixer of stage 2 (``SSA`` | ``LRFSSA`` | ``LRFDyn`` ...).
        neuron (dict): ``MultiStepLIF`` config of every neuron.
        mlp_ratio (float): MLP hidden width factor.
        out_indices (Sequence[int]): stages (0..2, negative from the end) to return. Stages
            after the largest index are not run.
        conv_cfg (dict | None): conv layer of every block (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer of every block (None: ``BN``).
        init_cfg (dict | list[dict] | None): mmengine init config, e.g. ``Pretrained``.

    Attributes:
        strides (tuple[int, ...]): true stride of each returned map.
        out_channels (list[int]): channels of each returned map.

    Shapes: input ``[B, in_channels, H, W]``; output a tuple of
    ``[B, C_i, ceil(H/s_i), ceil(W/s_i)]`` with ``C = (D/4, D/2, D)``, ``s = (4, 8, 16)``.
    """

    def __init__(self,
                 arch: str | dict = '10-384',
                 T: int = 4,
                 in_channels: int = 3,
                 attn: dict = dict(type='SSA', order='kv', scale=0.125),
                 neuron: dict = dict(type='MultiStepLIF', tau=2.0),
                 mlp_ratio: float = 4.0,
                 out_indices: Sequence[int] = (0, 1, 2),
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg)
        embed_dims, depths, num_heads = self._resolve_arch(arch)
        self.T = check_positive_int(T, 'T')
        self.in_channels = in_channels = check_positive_int(in_channels, 'in_channels')
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or \
                int(embed_dims // 4 * mlp_ratio) < 1:
            raise ValueError(f'mlp_ratio must be a positive number, got {mlp_ratio!r}')
        attn = check_mixer(attn)
        neuron = check_lif_neuron(neuron)
        self.out_indices = check_out_indices(out_indices, len(QKFORMER_STRIDES))
        self.embed_dims, self.depths, self.num_heads = embed_dims, depths, num_heads
        widths = (embed_dims // 4, embed_dims // 2, embed_dims)
        token_attn = dict(type='QKTokenAttention', neuron=attention_neuron(neuron))
        mixers = (token_attn, token_attn, attn)
        in_widths = (in_channels,) + widths[:2]
        layers = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        for i in range(3):
            self.add_module(f'patch_embed{i + 1}', DeformedShortcutEmbed(
                in_widths[i], widths[i], neuron, stem=i == 0, **layers))
            self.add_module(f'stage{i + 1}', nn.ModuleList(
                LIFTransformerBlock(widths[i], num_heads, mixers[i], neuron, mlp_ratio,
                                    **layers)
                for _ in range(depths[i])))
        self.strides = tuple(QKFORMER_STRIDES[i] for i in self.out_indices)
        self.out_channels = [widths[i] for i in self.out_indices]

    @staticmethod
    def _resolve_arch(arch: str | dict) -> tuple[int, tuple[int, int, int], int]:
        arch = lookup_arch(arch, QKFORMER_ARCHS, ('embed_dims', 'depths', 'num_heads'))
        embed_dims = check_positive_int(arch['embed_dims'], "arch['embed_dims']")
        num_heads = check_positive_int(arch['num_heads'], "arch['num_heads']")
        depths = arch['depths']
        if not isinstance(depths, (tuple, list)) or len(depths) != 3:
            raise ValueError(f"arch['depths'] must be 3 positive block counts, got {depths!r}")
        depths = tuple(check_positive_int(d, "arch['depths']") for d in depths)
        if embed_dims % 8 or (embed_dims // 4) % num_heads:
            raise ValueError(f"arch['embed_dims'] must be divisible by 8 and embed_dims / 4 by "
                             f"arch['num_heads']={num_heads}, got {embed_dims}")
        return embed_dims, depths, num_heads

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Images ``[B, C, H, W]`` → tuple of T-averaged ``[B, C_i, H_i, W_i]``."""
        x = repeat_image(x, self.T, self.in_channels, 'QKFormer')
        feats = []
        for i in range(max(self.out_indices) + 1):
            x = getattr(self, f'patch_embed{i + 1}')(x)
            for blk in getattr(self, f'stage{i + 1}'):
                x = blk(x)
            feats.append(x)
        return tuple(feats[i].mean(0) for i in self.out_indices)


# Also usable as an mmpretrain backbone (``mmpretrain.models`` itself is never imported).
PRETRAIN_MODELS.register_module(module=QKFormer)
