"""The lean inference paths of the spiking FPN neck and head (:func:`neck_forward`,
:func:`head_forward`): the same outputs as their plain forwards, in less memory.

They spike each input map in place and empty it once read (:func:`release`), normalise and sum
in place, and write each 3×3 conv's result over its own spikes strip by strip
(:func:`~mmlrf.inference.strips.conv_bn_over_input`). The caller's tensors come back empty: only
for pipelines that do not read them again (mmseg's ``EncoderDecoder``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from mmseg.models.utils import Upsample
from torch import Tensor, nn

from ..utils import writable
from .strips import batch_norm_in_place, conv_bn_over_input

#: A level's full-resolution map is added to the head's sum over this many channel chunks, so
#: only one chunk of it exists at a time (bilinear resizing is per channel: the same sum).
ADD_CHUNKS = 4


def release(x: Tensor) -> None:
    """Empty the caller's tensor ``x`` (``x.set_()``: it becomes a 0-element tensor); its memory
    is freed unless another tensor views it. An inference-mode tensor outside
    ``torch.inference_mode`` cannot be changed and is left as it is."""
    if writable(x):
        x.set_()


def spike_in_place(neuron: nn.Module, x: Tensor) -> Tensor:
    """A neuron on a map ``[B, C, H, W]`` as the single step ``[1, B, C, H, W]``, overwriting
    ``x`` where the neuron can."""
    return neuron(x.unsqueeze(0), inplace=True).squeeze(0)


def add_nearest_resized(out: Tensor, x: Tensor) -> None:
    """``out += nearest_resize(x, out.shape[-2:])`` in place, ``out`` ``[B, C, H, W]``, ``x``
    ``[B, C, h, w]``. An exact ×2 is added as a broadcast into the ``[B, C, h, 2, w, 2]`` view
    of ``out`` (the same sums), so the resized map never exists."""
    h, w = x.shape[-2:]
    if tuple(out.shape[-2:]) != (2 * h, 2 * w):
        out += F.interpolate(x, size=out.shape[-2:], mode='nearest')
        return
    out.unflatten(-1, (w, 2)).unflatten(-3, (h, 2)).add_(x[..., :, None, :, None])


def neck_forward(neck: nn.Module, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """:class:`~mmlrf.models.necks.SpikingFPN`'s forward, lean: each lateral conv's BN in place,
    the backbone's maps freed before the stride-2 conv runs, the top-down ×2 resizes added
    without being made, each output conv written over its spikes."""
    laterals = []
    for conv, spike, x in zip(neck.lateral_convs, neck.lateral_convs_spikes, inputs):
        laterals.append(batch_norm_in_place(conv[1], conv[0](spike_in_place(spike, x))))
        release(x)
    for i in range(len(laterals) - 1, 0, -1):
        add_nearest_resized(laterals[i - 1], laterals[i])
    outs = []
    for i, (conv, spike) in enumerate(zip(neck.fpn_convs, neck.fpn_convs_spikes)):
        spikes = spike_in_place(spike, laterals[i])
        laterals[i] = None
        outs.append(conv_bn_over_input(conv[0], conv[1], spikes))
        del spikes
    return tuple(outs)


def _scale_head(stages: Sequence[nn.Module], x: Tensor) -> Tensor:
    """One level's stages; every spike overwrites its input, the level's input is emptied once
    its first conv has read it, every conv result is written over its spikes."""
    for j, layer in enumerate(stages):
        if isinstance(layer, Upsample):
            x = layer(x)
            continue
        neuron, conv, norm = layer
        y = conv_bn_over_input(conv, norm, spike_in_place(neuron, x))
        if j == 0:
            release(x)
        x = y
    return x


def _add_resized(out: Tensor, y: Tensor, upsample: nn.Module | None,
                 align_corners: bool) -> None:
    """``out += resize(upsample(y))`` in place over :data:`ADD_CHUNKS` channel chunks (resize:
    bilinear to ``out``'s size where it differs), so only one chunk of the resized map exists
    at a time. ``out`` ``[B, C, H, W]``, ``y`` ``[B, C, h, w]``."""
    step = -(-y.shape[1] // ADD_CHUNKS)
    for c in range(0, y.shape[1], step):
        part = y[:, c:c + step]
        if upsample is not None:
            part = upsample(part)
        if part.shape[-2:] != out.shape[-2:]:
            part = F.interpolate(part, size=out.shape[-2:], mode='bilinear',
                                 align_corners=align_corners)
        out[:, c:c + step] += part


def head_forward(head: nn.Module, inputs: Sequence[Tensor]) -> Tensor:
    """:class:`~mmlrf.models.decode_heads.SpikingFPNHead`'s forward on its selected inputs,
    lean: each level's last upsample and resize run over :data:`ADD_CHUNKS` channel chunks
    added into the sum in place."""
    out = _scale_head(head.scale_heads[0], inputs[0])
    for level, stages in zip(inputs[1:], head.scale_heads[1:]):
        layers = list(stages)
        upsample = layers.pop() if isinstance(layers[-1], Upsample) else None
        _add_resized(out, _scale_head(layers, level), upsample, head.align_corners)
    return head.cls_seg(spike_in_place(head.out_spike, out))
