"""Test helper: a seeded spiking FPN neck and head, backbone-like input maps, and the neck's and
head's computations written out plainly (no in-place work, no strips, no chunks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from batchnorm_stats import randomise_batchnorms

IN_CHANNELS = [4, 8, 12, 16]
WIDTH = 8


def build(lean: bool, width: int = WIDTH, in_channels=IN_CHANNELS,
          neuron: dict = dict(type='MultiSpike', max_value=4, norm=4), **layers):
    """Eval-mode neck and head with the same seeded weights and BN statistics whatever
    ``lean`` (their ``lean_inference``); ``layers``: ``conv_cfg`` / ``norm_cfg``."""
    from mmlrf.models.decode_heads import SpikingFPNHead
    from mmlrf.models.necks import SpikingFPN
    torch.manual_seed(0)
    neck = SpikingFPN(in_channels, width, neuron=neuron, lean_inference=lean, **layers)
    head = SpikingFPNHead(in_channels=[width] * len(in_channels), channels=width, num_classes=3,
                          in_index=list(range(len(in_channels))), neuron=neuron,
                          feature_strides=[2 ** i for i in range(len(in_channels))],
                          lean_inference=lean, **layers)
    return randomise_batchnorms(neck).eval(), randomise_batchnorms(head).eval()


def features(size: tuple[int, int], in_channels=IN_CHANNELS, batch: int = 2) -> list:
    """Backbone-like maps at strides 1, 2, 4, 8 of ``size``, ``[B, C_i, H_i, W_i]``."""
    gen = torch.Generator().manual_seed(1)
    h, w = size
    return [torch.randn(batch, c, -(-h // 2 ** i), -(-w // 2 ** i), generator=gen) * 2
            for i, c in enumerate(in_channels)]


def spike(neuron, x: torch.Tensor) -> torch.Tensor:
    """A neuron on ``[B, C, H, W]`` as one step ``[1, B, C, H, W]``, out of place."""
    return neuron(x.unsqueeze(0)).squeeze(0)


def plain_neck(neck, inputs) -> list:
    """The neck written out: lateral spike → conv → BN, the top-down sum of nearest resizes
    (deepest first, cumulative), output spike → conv → BN."""
    laterals = [conv[1](conv[0](spike(neuron, x)))
                for conv, neuron, x in zip(neck.lateral_convs, neck.lateral_convs_spikes, inputs)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(
            laterals[i], size=laterals[i - 1].shape[-2:], mode='nearest')
    return [conv[1](conv[0](spike(neuron, lat)))
            for conv, neuron, lat in zip(neck.fpn_convs, neck.fpn_convs_spikes, laterals)]


def plain_head(head, levels) -> torch.Tensor:
    """The head written out: each level's stages in order (spike → conv → BN, then a bilinear
    ×2 for the deeper levels), a bilinear resize to level 0's size where it differs, the sum,
    spikes, classifier."""
    out = None
    for level, stages in zip(levels, head.scale_heads):
        y = level
        for layer in stages:
            if isinstance(layer, torch.nn.Sequential):  # neuron, conv, BN
                y = layer[2](layer[1](spike(layer[0], y)))
            else:
                y = F.interpolate(y, scale_factor=2, mode='bilinear',
                                  align_corners=head.align_corners)
        if out is not None and y.shape[-2:] != out.shape[-2:]:
            y = F.interpolate(y, size=out.shape[-2:], mode='bilinear',
                              align_corners=head.align_corners)
        out = y if out is None else out + y
    return head.conv_seg(spike(head.out_spike, out))
