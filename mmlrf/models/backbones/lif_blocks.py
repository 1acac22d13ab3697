"""Building blocks of the multi-step-LIF spiking transformers (Spikformer, QKFormer).

Both families share one block layout (Spikformer's): ``x = x + Attn(x)``, ``x = x + MLP(x)``
where every branch ends in a LIF neuron, so the residual stream is a sum of spike maps
(non-negative integers, never real-valued membrane potentials), and the Q/K/V projections
read that stream directly (no neuron in front of the attention block). All modules work on
``[T, B, C, H, W]``.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

from mmengine.model import BaseModule
from torch import Tensor, nn

from ..layers import ConvBN, seq_apply
from ..neurons import build_neuron
from .spiking_attention import SpikingAttention

#: Neuron types the LIF backbones accept (the attention neuron needs a threshold).
LIF_NEURONS = ('MultiStepLIF',)
#: Threshold of the neuron after the attention product (Spikformer, QKFormer: 0.5).
ATTN_THRESHOLD = 0.5
#: Where :class:`ConvBNSpike` max-pools: nowhere, on the BN output, or on the spikes.
POOL_POSITIONS = ('none', 'pre', 'post')


def check_lif_neuron(neuron: dict) -> dict:
    """Validate the neuron config of a LIF backbone and return a private copy.

    Raises:
        ValueError: naming ``neuron`` if it is not a dict whose type is in :data:`LIF_NEURONS`.
    """
    if not isinstance(neuron, dict) or neuron.get('type') not in LIF_NEURONS:
        raise ValueError(f'neuron must be a config dict with type in {LIF_NEURONS}, '
                         f'got {neuron!r}')
    return copy.deepcopy(neuron)


def attention_neuron(neuron: dict) -> dict:
    """The neuron after the attention product: ``neuron`` with ``v_threshold=0.5``."""
    return {**neuron, 'v_threshold': ATTN_THRESHOLD}


def check_mixer(attn: dict, name: str = 'attn') -> dict:
    """Validate a token-mixer config (a dict with a ``type``) and return a private copy.

    Raises:
        ValueError: naming ``name`` if ``attn`` is not such a dict.
    """
    if not isinstance(attn, dict) or 'type' not in attn:
        raise ValueError(f"{name} must be a token mixer config dict with a 'type' "
                         f"(e.g. SSA, LRFSSA, LRFDyn), got {attn!r}")
    return copy.deepcopy(attn)


def repeat_image(x: Tensor, T: int, in_channels: int, owner: str) -> Tensor:
    """Check images ``[B, in_channels, H, W]`` and repeat them T times: ``[T, B, C, H, W]``
    (an expanded view, no copy). ``owner`` names the backbone in the ValueError."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f'{owner} expects images [B, {in_channels}, H, W] '
                         f'(in_channels={in_channels}), got {tuple(x.shape)}')
    return x.unsqueeze(0).expand(T, *x.shape)


def lookup_arch(arch: str | dict, presets: dict, keys: Sequence[str]) -> dict:
    """A preset name from ``presets`` or a dict with exactly ``keys``; else ValueError naming
    'arch' and the allowed values."""
    if isinstance(arch, str):
        if arch not in presets:
            raise ValueError(f'arch must be one of {sorted(presets)} or a dict with keys '
                             f'{", ".join(keys)}, got {arch!r}')
        arch = presets[arch]
    if not isinstance(arch, dict) or set(arch) != set(keys):
        raise ValueError(f'arch must be one of {sorted(presets)} or a dict with exactly the '
                         f'keys {sorted(keys)}, got {arch!r}')
    return arch


def check_out_indices(out_indices: Sequence[int], num: int, name: str = 'out_indices'
                      ) -> tuple[int, ...]:
    """Normalise indices into ``range(num)`` (negative ones count from the end).

    Raises:
        ValueError: naming ``name`` if it is empty or holds a non-integer or out-of-range index.
    """
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    if not isinstance(out_indices, (tuple, list)) or not out_indices or not all(
            isinstance(i, int) and not isinstance(i, bool) and -num <= i < num
            for i in out_indices):
        raise ValueError(f'{name} must be a non-empty sequence of integers in '
                         f'[{-num}, {num - 1}], got {out_indices!r}')
    return tuple(i % num for i in out_indices)


class ConvBNSpike(nn.Module):
    """``Conv k×k → BN → (max-pool) → LIF → (max-pool)`` on ``[T, B, C, H, W]``.

    The max-pool (3×3, stride 2, padding 1: side ``n → ceil(n / 2)``) sits either on the BN
    output before the neuron (``pool='pre'``, QKFormer) or on the spikes (``pool='post'``,
    Spikformer, which keeps its output binary).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): conv kernel (padding ``kernel_size // 2``), bias-free.
        neuron (dict): neuron config.
        stride (int): conv stride.
        pool (str): one of :data:`POOL_POSITIONS`.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, neuron: dict,
                 stride: int = 1, pool: str = 'none', conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        if pool not in POOL_POSITIONS:
            raise ValueError(f'pool must be one of {POOL_POSITIONS}, got {pool!r}')
        self.conv = ConvBN(in_channels, out_channels, kernel_size, stride, conv_cfg=conv_cfg,
                           norm_cfg=norm_cfg)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool != 'none' else None
        self.pool_first = pool == 'pre'
        self.spike = build_neuron(neuron)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C_in, H, W]`` → spikes ``[T, B, C_out, H', W']``."""
        x = self.conv(x)
        if self.pool is not None and self.pool_first:
            x = seq_apply(self.pool, x)
        x = self.spike(x)
        if self.pool is not None and not self.pool_first:
            x = seq_apply(self.pool, x)
        return x


class LIFMLP(BaseModule):
    """Spikformer's MLP: ``LIF(BN(Conv1×1)) → LIF(BN(Conv1×1))``, convs with bias.

    The input is not spiked first (it is the residual stream, a sum of spike maps); the output
    is binary spikes.

    Args:
        embed_dims (int): input and output channels C.
        hidden_dims (int): hidden channels.
        neuron (dict): neuron config.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
        init_cfg (dict | None): mmengine init config.

    Shapes: ``[T, B, C, H, W]`` → ``[T, B, C, H, W]``.
    """

    def __init__(self, embed_dims: int, hidden_dims: int, neuron: dict,
                 conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        layers = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.fc1_conv = ConvBN(embed_dims, hidden_dims, bias=True, **layers)
        self.fc1_spike = build_neuron(neuron)
        self.fc2_conv = ConvBN(hidden_dims, embed_dims, bias=True, **layers)
        self.fc2_spike = build_neuron(neuron)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → spikes ``[T, B, C, H, W]``."""
        return self.fc2_spike(self.fc2_conv(self.fc1_spike(self.fc1_conv(x))))


class LIFTransformerBlock(BaseModule):
    """Spikformer / QKFormer encoder block: ``x += Attn(x)``; ``x += MLP(x)``.

    The attention is :class:`SpikingAttention` configured as Spikformer's:
    no neuron before Q/K/V (``pre_neuron=False``: Spikformer's SSA projects the block input,
    already a sum of spikes, directly), V as wide as the input (``v_ratio=1``), a LIF with
    threshold 0.5 after the mixer, and a LIF after the output projection (``proj_neuron``).

    Args:
        embed_dims (int): channels C.
        num_heads (int): attention heads.
        mixer (dict): token mixer config (``SSA``, ``QKTokenAttention``, ``LRFSSA``, ...).
        neuron (dict): LIF config of every neuron; the attention neuron uses it with
            ``v_threshold=0.5``.
        mlp_ratio (float): MLP hidden width ``int(C * mlp_ratio)``.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
        init_cfg (dict | None): mmengine init config.

    Shapes: ``[T, B, C, H, W]`` → ``[T, B, C, H, W]``.
    """

    def __init__(self, embed_dims: int, num_heads: int, mixer: dict, neuron: dict,
                 mlp_ratio: float = 4.0, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        layers = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.attn = SpikingAttention(embed_dims, num_heads, mixer=mixer, neuron=neuron,
                                     attn_neuron=attention_neuron(neuron), v_ratio=1,
                                     pre_neuron=False, proj_neuron=True, proj_bias=True,
                                     **layers)
        self.mlp = LIFMLP(embed_dims, int(embed_dims * mlp_ratio), neuron, **layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        x = x + self.attn(x)
        return x + self.mlp(x)
