"""The spiking attention block shared by every backbone: projections, mixer, output projection."""
from __future__ import annotations

import copy

from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor

from ...registry import build_component
from ...utils import check_positive_int
from ..layers import ConvBN
from ..mixers import TokenMixer
from ..neurons import build_neuron


@MODELS.register_module()
class SpikingAttention(BaseModule):
    """Spiking attention block on ``[T, B, C, H, W]``.

    ``u = head_spike(x)`` (optional) → ``q/k/v = spike(BN(conv1x1(u)))`` (only those the mixer
    requires) → ``y = mixer(q, k, v, u)`` → ``attn_spike(y)`` → ``BN(conv1x1)`` (→ optional
    ``proj_spike``). Submodule names follow the official SDT-V3 ``MS_Attention_linear``
    (``head_spike``, ``q_conv``, ``q_spike``, …, ``proj_conv``) so official weights map 1:1.

    Args:
        embed_dims (int): channels C of input and output.
        num_heads (int): attention heads.
        mixer (dict): token mixer config, e.g. ``dict(type='SSA', order='qk')``,
            ``dict(type='LRFSSA')`` or ``dict(type='LRFDyn')``; ``num_heads``, ``qk_channels``
            and ``v_channels`` are filled in.
        neuron (dict): neuron config for every neuron of the block.
        attn_neuron (dict | None): config of the neuron after the mixer (default: ``neuron``;
            Spikformer uses a LIF with ``v_threshold=0.5``).
        v_ratio (int): V has ``v_ratio * C`` channels (SDT-V3: 4).
        pre_neuron (bool): spike the block input first (SDT: yes, Spikformer: no).
        proj_neuron (bool): spike after the output projection (Spikformer: yes).
        qkv_bias (bool): bias in the Q/K/V convs.
        proj_bias (bool): bias in the output projection conv (official Spikformer/QKFormer: yes).
        conv_cfg (dict | None): conv layer of the block and its mixer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer of the block and its mixer (None: ``BN``).
        init_cfg (dict | None): mmengine init config.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mixer: dict,
                 neuron: dict = dict(type='MultiSpike'),
                 attn_neuron: dict | None = None,
                 v_ratio: int = 1,
                 pre_neuron: bool = True,
                 proj_neuron: bool = False,
                 qkv_bias: bool = False,
                 proj_bias: bool = False,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        v_ratio = check_positive_int(v_ratio, 'v_ratio')
        if not isinstance(mixer, dict) or 'type' not in mixer:
            raise ValueError(f"mixer must be a config dict with a 'type', got {mixer!r}")
        self.embed_dims, self.num_heads = embed_dims, num_heads
        mixer_cfg = copy.deepcopy(mixer)
        mixer_cfg.update(num_heads=num_heads, qk_channels=embed_dims,
                         v_channels=embed_dims * v_ratio, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.mixer: TokenMixer = build_component(mixer_cfg)
        if not isinstance(self.mixer, TokenMixer):
            raise ValueError(f'mixer type {mixer["type"]!r} is not a TokenMixer')
        need = self.mixer.requires
        self.head_spike = build_neuron(neuron) if pre_neuron else None
        for name, channels in (('q', embed_dims), ('k', embed_dims), ('v', embed_dims * v_ratio)):
            if name in need:
                self.add_module(f'{name}_conv', ConvBN(embed_dims, channels, bias=qkv_bias,
                                                       conv_cfg=conv_cfg, norm_cfg=norm_cfg))
                self.add_module(f'{name}_spike', build_neuron(neuron))
        self.attn_spike = build_neuron(attn_neuron or neuron)
        self.proj_conv = ConvBN(self.mixer.out_channels, embed_dims, bias=proj_bias,
                                conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.proj_spike = build_neuron(neuron) if proj_neuron else None

    def _project(self, name: str, u: Tensor) -> Tensor | None:
        if name not in self.mixer.requires:
            return None
        return getattr(self, f'{name}_spike')(getattr(self, f'{name}_conv')(u))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[T, B, C, H, W]`` → ``[T, B, C, H, W]``."""
        if x.dim() != 5 or x.shape[2] != self.embed_dims:
            raise ValueError(f'SpikingAttention expects [T, B, {self.embed_dims}, H, W], '
                             f'got {tuple(x.shape)}')
        u = self.head_spike(x) if self.head_spike is not None else x
        y = self.mixer(self._project('q', u), self._project('k', u), self._project('v', u),
                       u if 'x' in self.mixer.requires else None)
        y = self.proj_conv(self.attn_spike(y))
        return self.proj_spike(y) if self.proj_spike is not None else y
