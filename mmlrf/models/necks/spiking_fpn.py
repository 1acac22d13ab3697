"""Spiking FPN neck of the SDT-V3 segmentation protocol (official ``QFPN``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...inference import lean_applies
from ...inference.lean_fpn import neck_forward
from ..layers import ConvBN
from ..neurons import build_neuron


def spike_map(neuron: nn.Module, x: Tensor, inplace: bool = False) -> Tensor:
    """A neuron on a real-valued map ``[B, C, H, W]`` as the single step ``[1, B, C, H, W]`` of
    the multi-step layout; returns ``[B, C, H, W]``. ``inplace``: ``x`` is a temporary the neuron
    may overwrite (at inference)."""
    return neuron(x.unsqueeze(0), inplace=inplace).squeeze(0)


def nearest_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PyTorch's ``mode='nearest'`` resize of ``[B, C, H, W]`` to ``size``; an exact ×2 as a
    broadcast copy (the same values), whose backward is a sum instead of the scatter-add that
    inductor's CPU code can write out of bounds (torch 2.13)."""
    h, w = x.shape[-2:]
    if tuple(size) != (2 * h, 2 * w):
        return F.interpolate(x, size=size, mode='nearest')
    return x[..., None, :, None].expand(*x.shape[:-2], h, 2, w, 2).flatten(-4, -3).flatten(-2)


@MODELS.register_module()
class SpikingFPN(BaseModule):
    """Spiking FPN neck (official ``QFPN``): every conv input is a spike.

    For each level ``lat_i = BN(conv1x1(s(x_i)))`` (conv with bias); top-down, deepest first and
    cumulatively, ``lat_{i-1} += nearest_resize(lat_i)`` (to the exact size of the shallower
    level, so odd sizes work); outputs ``n_i = BN(conv3x3(s(lat_i)))`` (conv with bias). Sums
    stay real-valued.

    Submodule names follow the official code (``lateral_convs.i.{0,1}``,
    ``lateral_convs_spikes.i``, ``fpn_convs.i.{0,1}``, ``fpn_convs_spikes.i``).

    Args:
        in_channels (Sequence[int]): channels of the input levels (SDT-V3: ``[C0/2, C0, C1, C3]``).
        out_channels (int): width of every output level.
        num_outs (int | None): number of outputs; must equal ``len(in_channels)`` (extra levels
            are not part of the official neck). None means ``len(in_channels)``.
        neuron (dict): neuron config. Official: ``MultiSpike`` with D = 4 and ``norm`` = the
            config's ``T`` (4), i.e. ``dict(type='MultiSpike', max_value=4, norm=4)``.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
        lean_inference (bool): at inference take the lean path
            (:func:`~mmlrf.inference.lean_fpn.neck_forward`), which empties the maps it is given;
            usually switched for a whole model (:func:`~mmlrf.inference.set_lean_inference`).
        init_cfg (dict | list[dict] | None): mmengine init config.

    Shapes: input a sequence of ``[B, in_channels[i], H_i, W_i]``; output a tuple of
    ``[B, out_channels, H_i, W_i]``.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int | None = None,
                 neuron: dict = dict(type='MultiSpike', max_value=4, norm=4),
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 lean_inference: bool = False,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg)
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError('in_channels must be a non-empty sequence of channel counts')
        if num_outs is not None and num_outs != len(in_channels):
            raise ValueError(f'num_outs must equal len(in_channels) = {len(in_channels)} '
                             f'(no extra levels), got {num_outs}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = len(in_channels)
        self.lean_inference = lean_inference
        self.lateral_convs = nn.ModuleList(
            ConvBN(c, out_channels, 1, bias=True, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for c in in_channels)
        self.lateral_convs_spikes = nn.ModuleList(build_neuron(neuron) for _ in in_channels)
        self.fpn_convs = nn.ModuleList(
            ConvBN(out_channels, out_channels, 3, bias=True, conv_cfg=conv_cfg,
                   norm_cfg=norm_cfg)
            for _ in in_channels)
        self.fpn_convs_spikes = nn.ModuleList(build_neuron(neuron) for _ in in_channels)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Levels ``[B, C_i, H_i, W_i]`` (shallow to deep) → ``[B, out_channels, H_i, W_i]``."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'SpikingFPN expects {len(self.in_channels)} levels, '
                             f'got {len(inputs)}')
        if lean_applies(self):
            return neck_forward(self, inputs)
        laterals = [conv[1](conv[0](spike_map(spike, x)))
                    for conv, spike, x in zip(self.lateral_convs, self.lateral_convs_spikes,
                                              inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            # in place: a BN output nothing saved for backward
            laterals[i - 1] += nearest_resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = []
        for i, (conv, spike) in enumerate(zip(self.fpn_convs, self.fpn_convs_spikes)):
            outs.append(conv[1](conv[0](spike_map(spike, laterals[i], inplace=True))))
            laterals[i] = None  # each lateral is freed once spiked
        return tuple(outs)
