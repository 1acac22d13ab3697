"""SDT-V3 / E-SpikeFormer backbone (official ``Spiking_vit_MetaFormerv2``), on ``[T, B, C, H, W]``.

Module and parameter names follow the official code (``downsample1_1``, ``ConvBlock1_1.0``,
``block3.0.attn.q_conv`` …) so an official checkpoint maps onto this model key for key; the only
difference is the MLP, whose official ``Conv1d`` weights ``[out, in, 1]`` become 1×1 ``Conv2d``
weights ``[out, in, 1, 1]`` here (see :mod:`mmlrf.convert.sdtv3`). ``norm_cfg`` picks the norm
layers (``SyncBN`` in the multi-GPU configs) under the official names.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...inference.strips import add_over_strips, strips_allowed
from ...interop import StrictPretrainedMixin
from ...ops.dendritic import DYNAMICS_MODES
from ...utils import check_positive_int
from ..layers import ConvBN, build_norm, conv_norm, drop_path
from ..mixers import set_dynamics_mode
from ..neurons import MultiSpike, build_neuron
from .spiking_attention import SpikingAttention

#: Widths ``[C0, C1, C2, C3]`` of the official sizes (see :class:`SDTV3` for the sources).
SDTV3_ARCHS: dict[str, list[int]] = {
    '5M': [32, 64, 128, 192],
    '10M': [48, 96, 192, 240],
    '19M': [64, 128, 256, 360],
}
#: Aliases: the official classification names ``_s`` / ``_m`` / ``_l``.
SDTV3_ARCH_ALIASES: dict[str, str] = {'S': '5M', 'M': '10M', 'L': '19M'}


class SepConv(nn.Module):
    """Inverted separable conv (official ``SepConv_Spike``, expansion 2) on ``[T, B, C, H, W]``.

    ``spike1 → pwconv1 (1×1, C→2C) → spike2 → dwconv (k×k depth-wise) → spike3 →
    pwconv2 (1×1, 2C→C)``; every conv is bias-free and followed by a norm layer.

    Args:
        dim (int): channels C.
        kernel_size (int): depth-wise kernel size (7 in conv blocks, 3 in transformer blocks).
        neuron (dict): neuron config.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, dim: int, kernel_size: int, neuron: dict, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        hidden = 2 * dim
        layers = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.spike1 = build_neuron(neuron)
        self.pwconv1 = ConvBN(dim, hidden, 1, **layers)
        self.spike2 = build_neuron(neuron)
        self.dwconv = ConvBN(hidden, hidden, kernel_size, groups=hidden, **layers)
        self.spike3 = build_neuron(neuron)
        self.pwconv2 = ConvBN(hidden, dim, 1, **layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        x = self.pwconv1(self.spike1(x))  # the temporaries are spiked in place at inference
        x = self.dwconv(self.spike2(x, inplace=True))
        return self.pwconv2(self.spike3(x, inplace=True))


class ConvBlock(nn.Module):
    """Official ``MS_ConvBlock_spike_SepConv`` (no layer scale) on ``[T, B, C, H, W]``.

    ``x = x + SepConv_7(x)``; ``x = x + BN(conv3x3(spike(BN(conv3x3(spike(x))))))`` with the
    3×3 convs C → ``mlp_ratio``·C → C, bias-free.

    Args:
        dim (int): channels C.
        mlp_ratio (int): hidden width factor of the two 3×3 convs.
        neuron (dict): neuron config.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).

    Attributes:
        lean_inference (bool): at inference run the two 3×3 convs over row strips
            (:func:`~mmlrf.inference.strips.add_over_strips`), adding each strip into the
            residual in place, so their hidden map never exists whole; same values.
    """

    def __init__(self, dim: int, mlp_ratio: int, neuron: dict, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.lean_inference = False
        self.Conv = SepConv(dim, 7, neuron, conv_cfg, norm_cfg)
        self.spike1 = build_neuron(neuron)
        self.conv1 = build_conv_layer(conv_cfg, dim, hidden, 3, padding=1, bias=False)
        self.bn1 = build_norm(norm_cfg, hidden)
        self.spike2 = build_neuron(neuron)
        self.conv2 = build_conv_layer(conv_cfg, hidden, dim, 3, padding=1, bias=False)
        self.bn2 = build_norm(norm_cfg, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        x = x + self.Conv(x)
        spikes = self.spike1(x)
        if self.lean_inference and strips_allowed(x, (self.conv1, self.conv2),
                                                  (self.bn1, self.bn2)):
            # `x` is this block's own sum: add in place
            return add_over_strips(x, self._convs, spikes,
                                   self.conv1.padding[0] + self.conv2.padding[0])
        return x + self._convs(spikes)

    def _convs(self, spikes: Tensor) -> Tensor:
        """``BN(conv3x3(spike(BN(conv3x3(spikes)))))``, ``[T, B, C, H, W]`` → same shape."""
        y = conv_norm(self.conv1, self.bn1, spikes)
        return conv_norm(self.conv2, self.bn2, self.spike2(y, inplace=True))


class SpikingMLP(nn.Module):
    """Official ``MS_MLP``: ``fc1_spike → 1×1 conv (C→hC, bias) → BN → fc2_spike → 1×1 conv
    (hC→C, bias) → BN`` on ``[T, B, C, H, W]`` (official: ``Conv1d`` on flattened tokens).

    Args:
        dim (int): channels C.
        mlp_ratio (int): hidden width factor h.
        neuron (dict): neuron config.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, dim: int, mlp_ratio: int, neuron: dict, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.fc1_spike = build_neuron(neuron)
        self.fc1_conv = build_conv_layer(conv_cfg, dim, hidden, 1)
        self.fc1_bn = build_norm(norm_cfg, hidden)
        self.fc2_spike = build_neuron(neuron)
        self.fc2_conv = build_conv_layer(conv_cfg, hidden, dim, 1)
        self.fc2_bn = build_norm(norm_cfg, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        x = conv_norm(self.fc1_conv, self.fc1_bn, self.fc1_spike(x))
        return conv_norm(self.fc2_conv, self.fc2_bn, self.fc2_spike(x, inplace=True))


class TransformerBlock(nn.Module):
    """Official ``MS_Block_Spike_SepConv`` with three per-channel layer scales.

    ``x += ls1·SepConv_3(x)``; ``x += ls2·Attention(x)``; ``x += ls3·MLP(x)`` (each branch
    optionally dropped by stochastic depth while training).

    Args:
        dim (int): channels C.
        num_heads (int): attention heads.
        mlp_ratio (int): MLP hidden width factor.
        attn (dict): token mixer config passed to :class:`SpikingAttention`.
        neuron (dict): neuron config.
        layer_scale_init (float): initial value of the layer-scale vectors.
        drop_path_rate (float): stochastic depth rate of the three branches.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, attn: dict, neuron: dict,
                 layer_scale_init: float, drop_path_rate: float, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        self.conv = SepConv(dim, 3, neuron, conv_cfg, norm_cfg)
        self.attn = SpikingAttention(dim, num_heads, mixer=attn, neuron=neuron, v_ratio=4,
                                     pre_neuron=True, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.mlp = SpikingMLP(dim, mlp_ratio, neuron, conv_cfg, norm_cfg)
        for i in (1, 2, 3):
            setattr(self, f'layer_scale{i}',
                    nn.Parameter(torch.full((dim,), float(layer_scale_init))))
        self.drop_path_rate = drop_path_rate

    def _residual(self, x: Tensor, branch: nn.Module, scale: Tensor) -> Tensor:
        y = branch(x) * scale.view(-1, 1, 1)
        return x + drop_path(y, self.drop_path_rate, self.training)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        x = self._residual(x, self.conv, self.layer_scale1)
        x = self._residual(x, self.attn, self.layer_scale2)
        return self._residual(x, self.mlp, self.layer_scale3)


class Downsample(nn.Module):
    """Official ``MS_DownSampling``: (``encode_spike`` →) conv (with bias) → BN.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): conv kernel size (padding ``kernel_size // 2``).
        stride (int): conv stride (output side ``ceil(side / stride)``).
        neuron (dict | None): neuron before the conv; None for the first layer (image input).
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 neuron: dict | None, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        self.encode_spike = build_neuron(neuron) if neuron is not None else None
        self.encode_conv = build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size,
                                            stride, kernel_size // 2)
        self.encode_bn = build_norm(norm_cfg, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C_in, H, W]`` → ``[T, B, C_out, ceil(H/s), ceil(W/s)]``."""
        if self.encode_spike is not None:
            x = self.encode_spike(x)
        return conv_norm(self.encode_conv, self.encode_bn, x)


@MODELS.register_module()
class SDTV3(StrictPretrainedMixin, BaseModule):
    """SDT-V3 / E-SpikeFormer backbone (official ``Spiking_vit_MetaFormerv2``) for segmentation.

    Runs on ``[T, B, C, H, W]`` with T = 1 (the integer multi-spike neuron carries the "T=1×D=4"
    spike count in one step). Stages, with widths ``embed_dims = [C0, C1, C2, C3]``:

    ====================  ==============================================  =====  ======  =====
    step                  module                                          width  stride  out
    ====================  ==============================================  =====  ======  =====
    down 7×7 s2           ``downsample1_1`` (no neuron: image input)      C0/2   2
    conv block            ``ConvBlock1_1.0``                              C0/2   2       0
    down 3×3 s2           ``downsample1_2``                               C0     4
    conv block            ``ConvBlock1_2.0``                              C0     4       1
    down 3×3 s2           ``downsample2``                                 C1     8
    2 conv blocks         ``ConvBlock2_1.0``, ``ConvBlock2_2.0``          C1     8       2
    down 3×3 s2           ``downsample3``                                 C2     16
    6 transformer blocks  ``block3.0-5``                                  C2     16
    down 3×3 **s1**       ``downsample4``                                 C3     16
    2 transformer blocks  ``block4.0-1``                                  C3     16      3
    ====================  ==============================================  =====  ======  =====

    (Block counts of the default ``depths=(6, 2)``.) True output strides are therefore
    (2, 4, 8, 16) (:attr:`strides`), each side rounded up (``ceil(H / s)``); the official
    configs call them 4/8/16/32, which is wrong but harmless because only their ratios are
    used. Output channels are ``[C0/2, C0, C1, C3]``
    (:attr:`out_channels`): C2 never leaves the backbone.

    Sizes (``arch``), all with ``num_heads=8``, ``mlp_ratio=4``:

    * ``'5M'`` (alias ``'S'``): ``[32, 64, 128, 192]``. The paper's SDT-V3-S has 5.11 M
      parameters on ImageNet. The official classification model file defines
      ``Efficient_Spiking_Transformer_s`` with these widths and the comment "5.1M" (its ``_t``
      variant, ``[24, 48, 96, 128]``, is smaller; ``_m``/``_l`` are the 10M/19M widths below).
      This backbone with them has 4.92 M parameters (4.91 M without layer scales) plus the
      classifier's 0.19 M = 5.11 M, matching the paper. Head size d = 16 / 24 in stages 3 / 4.
    * ``'10M'`` (alias ``'M'``): ``[48, 96, 192, 240]``, official ``fpn_sdtv3_512x512_10M``.
    * ``'19M'`` (alias ``'L'``): ``[64, 128, 256, 360]``, official 19M config.

    Args:
        arch (str | None): size preset, one of :data:`SDTV3_ARCHS` or its aliases; ignored
            when ``embed_dims`` is given.
        embed_dims (Sequence[int] | None): explicit widths ``[C0, C1, C2, C3]`` (C0 even).
        num_heads (int): attention heads of every transformer block (must divide C2 and C3).
        mlp_ratio (int): hidden factor of the MLPs and of the conv blocks' 3×3 convs.
        in_channels (int): image channels.
        attn (dict): token mixer of the attention blocks; official SDT-V3 attention (SDSA) is
            ``dict(type='SSA', order='qk')``; ``LRFSSA`` / ``LRFDyn`` configs are passed through.
        neuron (dict): neuron config of every neuron (official: ``MultiSpike``, D = 4).
        out_indices (Sequence[int]): which of the 4 maps to return (0..3).
        depths (Sequence[int]): transformer blocks of stages 3 and 4 (official and every
            ``arch``: ``(6, 2)``; fewer make a shallower model, e.g. for quick experiments).
        layer_scale_init (float): initial layer-scale value (official: 1e-6).
        drop_path_rate (float): largest stochastic-depth rate, increasing linearly over the
            transformer blocks (the official code builds but never applies drop path: 0).
        with_cp (bool): activation checkpointing (``torch.utils.checkpoint``, non-reentrant)
            of every conv and transformer block while training: only block inputs are kept for
            backward and each block's forward runs again during backward (more time for much
            less memory). Gradients are unchanged; BN running statistics are updated twice per
            step (as with mmseg's ``with_cp``); the blocks' neurons do not share their spike
            codes with the convs (``MultiSpike(share_code=False)``). Default off.
        dynamics_mode (str | None): evaluation path of every ``DendriticDynamics`` of the
            attention (LRF-Dyn), one of ``DYNAMICS_MODES``; e.g. ``'stream'`` for streaming
            inference with O(C·k) dynamics state, equal outputs. None keeps the mixer's own
            ``mode`` (also settable as ``attn=dict(type='LRFDyn', mode=...)`` or later with
            :func:`mmlrf.models.mixers.set_dynamics_mode`).
        conv_cfg (dict | None): conv layer of every block (None: ``nn.Conv2d``;
            ``dict(type='RoutedConv2d')``: :class:`~mmlrf.models.layers.RoutedConv2d`).
        norm_cfg (dict | None): norm layer of every block (None: ``BN``).
        init_cfg (dict | list[dict] | None): mmengine init config, e.g. ``Pretrained``.

    Shapes: input ``[B, in_channels, H, W]``; output a tuple of ``[B, C_i, ceil(H/s_i),
    ceil(W/s_i)]`` for ``i`` in ``out_indices``.
    """

    strides = (2, 4, 8, 16)

    def __init__(self,
                 arch: str | None = '10M',
                 embed_dims: Sequence[int] | None = None,
                 num_heads: int = 8,
                 mlp_ratio: int = 4,
                 in_channels: int = 3,
                 attn: dict = dict(type='SSA', order='qk'),
                 neuron: dict = dict(type='MultiSpike'),
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 depths: Sequence[int] = (6, 2),
                 layer_scale_init: float = 1e-6,
                 drop_path_rate: float = 0.0,
                 with_cp: bool = False,
                 dynamics_mode: str | None = None,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg)
        dims = self._resolve_dims(arch, embed_dims)
        if int(num_heads) != num_heads or num_heads < 1 or dims[2] % num_heads or \
                dims[3] % num_heads:
            raise ValueError(f'num_heads must be a positive integer dividing embed_dims[2] and '
                             f'embed_dims[3] ({dims[2]}, {dims[3]}), got {num_heads}')
        mlp_ratio = check_positive_int(mlp_ratio, 'mlp_ratio')
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f'out_indices must be a non-empty subset of (0, 1, 2, 3), '
                             f'got {out_indices}')
        if not isinstance(depths, (tuple, list)) or len(depths) != 2 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in depths):
            raise ValueError('depths must be 2 positive block counts (stages 3 and 4), '
                             f'got {depths!r}')
        n3, n4 = depths
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        if not isinstance(attn, dict) or 'type' not in attn:
            raise ValueError(f"attn must be a token mixer config dict with a 'type', got {attn!r}")
        if dynamics_mode is not None and dynamics_mode not in DYNAMICS_MODES:
            raise ValueError(f'dynamics_mode must be None or one of {DYNAMICS_MODES}, '
                             f'got {dynamics_mode!r}')
        self.with_cp = bool(with_cp)
        neuron = copy.deepcopy(neuron)
        self.embed_dims = dims
        self.depths = (n3, n4)
        self.out_indices = out_indices
        self.out_channels = [[dims[0] // 2, dims[0], dims[1], dims[3]][i] for i in out_indices]
        c0, c1, c2, c3 = dims
        layers = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)

        def conv_block(dim: int) -> nn.ModuleList:
            return nn.ModuleList([ConvBlock(dim, mlp_ratio, neuron, **layers)])

        def transformer_blocks(dim: int, rates: list[float]) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(dim, num_heads, mlp_ratio, attn, neuron, layer_scale_init,
                                 rate, **layers) for rate in rates)

        self.downsample1_1 = Downsample(in_channels, c0 // 2, 7, 2, None, **layers)
        self.ConvBlock1_1 = conv_block(c0 // 2)
        self.downsample1_2 = Downsample(c0 // 2, c0, 3, 2, neuron, **layers)
        self.ConvBlock1_2 = conv_block(c0)
        self.downsample2 = Downsample(c0, c1, 3, 2, neuron, **layers)
        self.ConvBlock2_1 = conv_block(c1)
        self.ConvBlock2_2 = conv_block(c1)
        self.downsample3 = Downsample(c1, c2, 3, 2, neuron, **layers)
        rates = [drop_path_rate * j / (n3 + n4 - 1) for j in range(n3 + n4)]
        self.block3 = transformer_blocks(c2, rates[:n3])
        self.downsample4 = Downsample(c2, c3, 3, 1, neuron, **layers)
        self.block4 = transformer_blocks(c3, rates[n3:])
        if self.with_cp:
            # checkpointed blocks recompute their spikes: no code kept for their convs
            for name in ('ConvBlock1_1', 'ConvBlock1_2', 'ConvBlock2_1', 'ConvBlock2_2',
                         'block3', 'block4'):
                for module in getattr(self, name).modules():
                    if isinstance(module, MultiSpike):
                        module.share_code = False
        if dynamics_mode is not None and not set_dynamics_mode(self, dynamics_mode):
            raise ValueError(f'dynamics_mode={dynamics_mode!r} needs an attention with '
                             f'dendritic dynamics (e.g. LRFDyn), got attn={attn!r}')

    @staticmethod
    def _resolve_dims(arch: str | None, embed_dims: Sequence[int] | None) -> list[int]:
        if embed_dims is None:
            key = SDTV3_ARCH_ALIASES.get(arch, arch)
            if key not in SDTV3_ARCHS:
                raise ValueError(f'arch must be one of {sorted(SDTV3_ARCHS)} or aliases '
                                 f'{sorted(SDTV3_ARCH_ALIASES)} (or give embed_dims), got {arch!r}')
            return list(SDTV3_ARCHS[key])
        dims = list(embed_dims)
        if len(dims) != 4 or any(int(d) != d or d < 1 for d in dims) or dims[0] % 2:
            raise ValueError(f'embed_dims must be 4 positive integers with an even first one, '
                             f'got {embed_dims!r}')
        return [int(d) for d in dims]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Images ``[B, C, H, W]`` → tuple of ``[B, C_i, H_i, W_i]`` (see class docstring)."""
        if x.dim() != 4:
            raise ValueError(f'SDTV3 expects images [B, C, H, W], got {tuple(x.shape)}')
        x = x.unsqueeze(0)  # [T=1, B, C, H, W]
        feats = []
        x = self._block(self.ConvBlock1_1[0], self.downsample1_1(x))
        feats.append(x)
        x = self._block(self.ConvBlock1_2[0], self.downsample1_2(x))
        feats.append(x)
        x = self._block(self.ConvBlock2_1[0], self.downsample2(x))
        x = self._block(self.ConvBlock2_2[0], x)
        feats.append(x)
        x = self.downsample3(x)
        for blk in self.block3:
            x = self._block(blk, x)
        x = self.downsample4(x)
        for blk in self.block4:
            x = self._block(blk, x)
        feats.append(x)
        return tuple(feats[i].mean(0) for i in self.out_indices)

    def _block(self, block: nn.Module, x: Tensor) -> Tensor:
        """``block(x)``, checkpointed when ``with_cp`` and autograd records the call."""
        if not (self.with_cp and torch.is_grad_enabled() and x.requires_grad):
            return block(x)
        return cp.checkpoint(block, x, use_reentrant=False)


# Also usable as an mmpretrain backbone (``mmpretrain.models`` itself is never imported).
PRETRAIN_MODELS.register_module(module=SDTV3)
