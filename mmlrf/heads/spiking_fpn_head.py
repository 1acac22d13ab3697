"""Spiking Semantic-FPN decode head of the SDT-V3 segmentation protocol (official ``QFPNHead``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..conv import RoutedConv2d
from ..neurons import build_neuron
from ..strips import conv_bn_over_input
from .spiking_fpn_neck import release, releases_inputs, spike_map

#: A level's full-resolution map is added to the sum over this many channel chunks, so only
#: one chunk of it exists at a time (bilinear resizing is per channel: the same sum).
ADD_CHUNKS = 4


class SpikeConvBN(nn.Sequential):
    """``neuron`` (index 0) → 3×3 ``Conv2d`` without bias (1) → ``BatchNorm2d`` (2), on
    ``[B, C, H, W]`` (the neuron sees the single step ``[1, B, C, H, W]``; the conv saves its
    1-byte spike code for backward, see :class:`~mmlrf.conv.RoutedConv2d`)."""

    def __init__(self, channels: int, neuron: dict) -> None:
        super().__init__(build_neuron(neuron), RoutedConv2d(channels, channels, 3, padding=1,
                                                              bias=False),
                         nn.BatchNorm2d(channels))

    def forward(self, x: Tensor, inplace: bool = False, overwrite: bool = False) -> Tensor:
        """``[B, C, H, W]`` → ``[B, C, H, W]``; ``inplace``: see :func:`spike_map`;
        ``overwrite``: the result is written over the spikes, see
        :func:`~mmlrf.strips.conv_bn_over_input`."""
        spikes = spike_map(self[0], x, inplace)
        if overwrite:
            return conv_bn_over_input(self[1], self[2], spikes)
        return self[2](self[1](spikes))


class Upsample2x(nn.Module):
    """Bilinear resize to exactly ``2H × 2W``.

    Args:
        align_corners (bool): ``align_corners`` of the interpolation.
    """

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` → ``[B, C, 2H, 2W]``."""
        return F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode='bilinear',
                             align_corners=self.align_corners)


@MODELS.register_module()
class SpikingFPNHead(BaseDecodeHead):
    """Spiking Semantic-FPN head (official ``QFPNHead``): every conv input is a spike.

    Level i runs ``max(1, log2(s_i / s_0))`` stages ``spike → conv3x3 (no bias) → BN``, each
    stage of levels ≥ 1 followed by a bilinear ×2 upsample; the levels are then summed in real
    values after a bilinear resize to level 0's size (a no-op when sizes match, a genuine resize
    for inputs whose sides are not multiples of the total stride; each level's last upsample
    and resize run over :data:`ADD_CHUNKS` channel chunks added in place), spiked
    (``out_spike``) and classified by ``conv_seg`` (1×1 with bias). Logits come out at level
    0's resolution, i.e. stride 2 with the SDT-V3 backbone.

    Submodule names follow the official code (``scale_heads.i.j.{0,1,2}``, ``out_spike``,
    ``conv_seg``).

    Args:
        feature_strides (Sequence[int]): strides of the input levels. Only their ratios to the
            first one matter (they set the number of stages per level). The default is the
            truth for :class:`~mmlrf.backbones.SDTV3`, (2, 4, 8, 16); the official configs say
            (4, 8, 16, 32), which has the same ratios and builds the identical head.
        neuron (dict): neuron config. Official: ``MultiSpike`` with D = 4 and ``norm`` = the
            config's ``T`` (4).
        dropout_ratio (float): dropout before ``conv_seg`` (applied on the spikes while
            training). The official head builds a 0.1 dropout but never applies it, so the
            default 0 reproduces it.
        release_inputs (bool): at inference (autograd off), spike each input level in place and
            empty it (:func:`~mmlrf.heads.spiking_fpn_neck.release`) once its first conv has
            read it, and write every 3×3 conv's result over its spikes, strip by strip
            (:func:`~mmlrf.strips.conv_bn_over_input`): the stride-2 level's convs
            then need no second map of its size. The caller's tensors come back empty: only
            for pipelines that do not read them again (mmseg's ``EncoderDecoder``). Default
            False.
        **kwargs: :class:`BaseDecodeHead` arguments (``in_channels`` (one entry per level, each
            equal to ``channels``), ``channels``, ``num_classes``, ``in_index``,
            ``align_corners``, ``loss_decode``, …). ``input_transform`` is always
            ``'multiple_select'``; ``norm_cfg`` / ``act_cfg`` are not used (plain BN, no
            activation besides the neurons).

    Shapes: input the neck's levels ``[B, channels, H_i, W_i]``; output logits
    ``[B, num_classes, H_0, W_0]``.
    """

    def __init__(self,
                 feature_strides: Sequence[int] = (2, 4, 8, 16),
                 neuron: dict = dict(type='MultiSpike', max_value=4, norm=4),
                 dropout_ratio: float = 0.0,
                 release_inputs: bool = False,
                 **kwargs) -> None:
        if kwargs.get('input_transform', 'multiple_select') != 'multiple_select':
            raise ValueError("input_transform must be 'multiple_select' (the only allowed "
                             f"value), got {kwargs['input_transform']!r}")
        kwargs['input_transform'] = 'multiple_select'
        super().__init__(dropout_ratio=dropout_ratio, **kwargs)
        strides = list(feature_strides)
        if len(strides) != len(self.in_channels):
            raise ValueError(f'feature_strides must have one entry per input level '
                             f'({len(self.in_channels)}), got {feature_strides!r}')
        if any(s <= 0 for s in strides) or strides != sorted(strides) or \
                any(math.log2(s / strides[0]) % 1 for s in strides):
            raise ValueError('feature_strides must be positive, non-decreasing and power-of-two '
                             f'multiples of the first one, got {feature_strides!r}')
        if any(c != self.channels for c in self.in_channels):
            raise ValueError(f'in_channels must all equal channels={self.channels} (the convs '
                             f'take `channels` inputs), got {self.in_channels}')
        self.feature_strides = strides
        self.release_inputs = release_inputs
        # BaseDecodeHead's 1x1 classifier, rebuilt as a RoutedConv2d (same parameters and init)
        self.conv_seg = RoutedConv2d(self.channels, self.out_channels, 1)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            num_stages = max(1, int(math.log2(stride / strides[0])))
            layers: list[nn.Module] = []
            for _ in range(num_stages):
                layers.append(SpikeConvBN(self.channels, neuron))
                if stride != strides[0]:
                    layers.append(Upsample2x(self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.out_spike = build_neuron(neuron)

    @property
    def release_inputs(self) -> bool:
        """See ``release_inputs`` in the class docstring (settable; checked when set)."""
        return self._release_inputs

    @release_inputs.setter
    def release_inputs(self, value: bool) -> None:
        if value and len(set(self.in_index)) != len(self.in_index):
            raise ValueError('release_inputs needs distinct in_index entries (a level read '
                             f'twice cannot be emptied after its first read), got '
                             f'{self.in_index}')
        self._release_inputs = bool(value)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Neck levels ``[B, channels, H_i, W_i]`` → logits ``[B, num_classes, H_0, W_0]``."""
        x = self._transform_inputs(inputs)
        free = releases_inputs(self.release_inputs)
        out = self._scale_head(self.scale_heads[0], x[0], free)
        for level, head in zip(x[1:], self.scale_heads[1:]):
            layers = list(head)
            upsample = layers.pop() if isinstance(layers[-1], Upsample2x) else None
            y = self._scale_head(layers, level, free)
            self._add_resized(out, y, upsample)
            del y
        spikes = spike_map(self.out_spike, out, inplace=True)
        del out
        if self.dropout is not None:
            spikes = self.dropout(spikes)
        return self.conv_seg(spikes)

    @staticmethod
    def _scale_head(head: Sequence[nn.Module], x: Tensor, free: bool) -> Tensor:
        """Run one level's stages; every stage but the first spikes a temporary (in place at
        inference), the first spikes the input in place and empties it when ``free``; with
        ``free`` each conv's result is written over its spikes."""
        for j, layer in enumerate(head):
            if not isinstance(layer, SpikeConvBN):
                x = layer(x)
                continue
            y = layer(x, inplace=j > 0 or free, overwrite=free)
            if j == 0 and free:
                release(x)
            x = y
        return x

    def _add_resized(self, out: Tensor, y: Tensor, upsample: Upsample2x | None) -> None:
        """``out += resize(upsample(y))`` in place, over :data:`ADD_CHUNKS` channel chunks
        (``resize``: bilinear to ``out``'s size where it differs). ``out`` ``[B, C, H, W]``,
        ``y`` ``[B, C, h, w]``."""
        step = -(-y.shape[1] // ADD_CHUNKS)
        for c in range(0, y.shape[1], step):
            part = y[:, c:c + step]
            if upsample is not None:
                part = upsample(part)
            if part.shape[-2:] != out.shape[-2:]:
                part = F.interpolate(part, size=out.shape[-2:], mode='bilinear',
                                     align_corners=self.align_corners)
            out[:, c:c + step] += part  # `out` is a temporary nothing saved: sum in place
