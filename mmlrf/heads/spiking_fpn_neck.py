"""Spiking FPN neck of the SDT-V3 segmentation protocol (official ``QFPN``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..layers import ConvBN
from ..neurons import build_neuron, spike_temporary, writable
from ..strips import batch_norm_in_place, conv_bn_over_input


def nearest_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PyTorch's ``mode='nearest'`` resize of ``[B, C, H, W]`` to ``size``; an exact ×2 as a
    broadcast copy (the same values), whose backward is a sum instead of the scatter-add that
    inductor's CPU code can write out of bounds (torch 2.13, docs/benchmarks.md)."""
    h, w = x.shape[-2:]
    if tuple(size) != (2 * h, 2 * w):
        return F.interpolate(x, size=size, mode='nearest')
    return x[..., None, :, None].expand(*x.shape[:-2], h, 2, w, 2).flatten(-4, -3).flatten(-2)


def add_nearest_resized(out: Tensor, x: Tensor) -> None:
    """``out += nearest_resize(x, out.shape[-2:])`` in place, ``out`` ``[B, C, H, W]``, ``x``
    ``[B, C, h, w]``. An exact ×2 is added as a broadcast into the ``[B, C, h, 2, w, 2]`` view of
    ``out`` (the same sums), so the resized map never exists."""
    h, w = x.shape[-2:]
    if tuple(out.shape[-2:]) != (2 * h, 2 * w):
        out += nearest_resize(x, out.shape[-2:])
        return
    out.unflatten(-1, (w, 2)).unflatten(-3, (h, 2)).add_(x[..., :, None, :, None])


def spike_map(neuron: nn.Module, x: Tensor, inplace: bool = False) -> Tensor:
    """Apply a neuron to a real-valued map ``[B, C, H, W]`` as the single step ``[1, B, C, H, W]``
    of the multi-step layout; returns ``[B, C, H, W]``.

    ``inplace=True``: ``x`` is a temporary, see :func:`~mmlrf.neurons.spike_temporary`; only
    for maps nothing else reads later.
    """
    x = x.unsqueeze(0)
    return (spike_temporary(neuron, x) if inplace else neuron(x)).squeeze(0)


def releases_inputs(release_inputs: bool) -> bool:
    """Whether a module built with ``release_inputs`` frees its input maps in this call: only
    when autograd does not record it (inference) and outside ``torch.compile``'s tracing."""
    return release_inputs and not torch.is_grad_enabled() and \
        not torch.compiler.is_compiling()


def release(x: Tensor) -> None:
    """Empty the caller's tensor ``x`` (``x.set_()``: it becomes a 0-element tensor); its memory
    is freed unless another tensor views it. An inference-mode tensor outside
    ``torch.inference_mode`` cannot be changed and is left as it is."""
    if writable(x):
        x.set_()


def spike_conv_bn(pair: ConvBN, spikes: Tensor, bn_in_place: bool = False) -> Tensor:
    """``pair[1](pair[0](spikes))`` on a single-step ``[B, C, H, W]`` map (the conv, a
    :class:`~mmlrf.conv.RoutedConv2d`, saves multi-spike input as its 1-byte code);
    ``bn_in_place``: the BN overwrites the conv's output
    (:func:`~mmlrf.strips.batch_norm_in_place`)."""
    y = pair[0](spikes)
    return batch_norm_in_place(pair[1], y) if bn_in_place else pair[1](y)


@MODELS.register_module()
class SpikingFPN(BaseModule):
    """Spiking FPN neck (official ``QFPN``): every conv input is a spike.

    For each level ``lat_i = BN(conv1x1(s(x_i)))`` (conv with bias); top-down, deepest first and
    cumulatively, ``lat_{i-1} += nearest_resize(lat_i)`` (PyTorch ``mode='nearest'``, to the
    exact size of the shallower level, so odd sizes work); outputs
    ``n_i = BN(conv3x3(s(lat_i)))`` (conv with bias). Sums stay real-valued.

    Submodule names follow the official code (``lateral_convs.i.{0,1}``,
    ``lateral_convs_spikes.i``, ``fpn_convs.i.{0,1}``, ``fpn_convs_spikes.i``).

    Args:
        in_channels (Sequence[int]): channels of the input levels (SDT-V3: ``[C0/2, C0, C1, C3]``).
        out_channels (int): width of every output level.
        num_outs (int | None): number of outputs; must equal ``len(in_channels)`` (extra levels
            are not part of the official neck). None means ``len(in_channels)``.
        neuron (dict): neuron config. Official: ``MultiSpike`` with D = 4 and ``norm`` = the
            config's ``T`` (4), i.e. ``dict(type='MultiSpike', max_value=4, norm=4)``.
        release_inputs (bool): at inference (autograd off), spike each input map in place,
            normalise its lateral conv's output in place
            (:func:`~mmlrf.strips.batch_norm_in_place`: no BN map beside the conv's) and empty
            the input (:func:`release`), so the backbone's maps are freed before the big
            stride-2 conv runs; add the top-down ×2 resizes without making them
            (:func:`add_nearest_resized`); and write each output conv's result over its spikes,
            strip by strip (:func:`~mmlrf.strips.conv_bn_over_input`). The caller's tensors
            come back empty: only for pipelines that do not read them again (mmseg's
            ``EncoderDecoder``). Default False.
        init_cfg (dict | list[dict] | None): mmengine init config.

    Shapes: input a sequence of ``[B, in_channels[i], H_i, W_i]``; output a tuple of
    ``[B, out_channels, H_i, W_i]``.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int | None = None,
                 neuron: dict = dict(type='MultiSpike', max_value=4, norm=4),
                 release_inputs: bool = False,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg)
        self.release_inputs = release_inputs
        in_channels = list(in_channels)
        if not in_channels:
            raise ValueError('in_channels must be a non-empty sequence of channel counts')
        if num_outs is not None and num_outs != len(in_channels):
            raise ValueError(f'num_outs must equal len(in_channels) = {len(in_channels)} '
                             f'(no extra levels), got {num_outs}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = len(in_channels)
        self.lateral_convs = nn.ModuleList(
            [ConvBN(c, out_channels, 1, bias=True) for c in in_channels])
        self.lateral_convs_spikes = nn.ModuleList([build_neuron(neuron) for _ in in_channels])
        self.fpn_convs = nn.ModuleList(
            [ConvBN(out_channels, out_channels, 3, bias=True) for _ in in_channels])
        self.fpn_convs_spikes = nn.ModuleList([build_neuron(neuron) for _ in in_channels])

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Levels ``[B, C_i, H_i, W_i]`` (shallow to deep) → ``[B, out_channels, H_i, W_i]``."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'SpikingFPN expects {len(self.in_channels)} levels, '
                             f'got {len(inputs)}')
        free = releases_inputs(self.release_inputs)
        laterals = []
        for conv, spike, x in zip(self.lateral_convs, self.lateral_convs_spikes, inputs):
            laterals.append(spike_conv_bn(conv, spike_map(spike, x, inplace=free),
                                          bn_in_place=free))
            if free:
                release(x)
        for i in range(len(laterals) - 1, 0, -1):
            # in place: a batch-norm output that nothing saved (same sum, no new map)
            if free:
                add_nearest_resized(laterals[i - 1], laterals[i])
            else:
                laterals[i - 1] += nearest_resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = []
        for i, (conv, spike) in enumerate(zip(self.fpn_convs, self.fpn_convs_spikes)):
            # the laterals are temporaries: spike them in place at inference, free them early
            spikes = spike_map(spike, laterals[i], inplace=True)
            laterals[i] = None
            outs.append(conv_bn_over_input(*conv, spikes) if free else spike_conv_bn(conv, spikes))
            del spikes
        return tuple(outs)
