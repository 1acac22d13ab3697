"""Spiking Semantic-FPN decode head of the SDT-V3 segmentation protocol (official ``QFPNHead``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from mmcv.cnn import build_conv_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import Upsample, resize
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...inference import lean_applies
from ...inference.lean_fpn import head_forward
from ..layers import build_norm
from ..necks.spiking_fpn import spike_map
from ..neurons import build_neuron


class SpikeConvBN(nn.Sequential):
    """``neuron`` (index 0) → 3×3 conv without bias (1) → norm (2), on ``[B, C, H, W]`` (the
    neuron sees the single step ``[1, B, C, H, W]``).

    Args:
        channels (int): input and output channels.
        neuron (dict): neuron config.
        conv_cfg (dict | None): conv layer (None: ``nn.Conv2d``).
        norm_cfg (dict | None): norm layer (None: ``BN``).
    """

    def __init__(self, channels: int, neuron: dict, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None) -> None:
        super().__init__(build_neuron(neuron),
                         build_conv_layer(conv_cfg, channels, channels, 3, padding=1, bias=False),
                         build_norm(norm_cfg, channels))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` → ``[B, C, H, W]``."""
        return self[2](self[1](spike_map(self[0], x)))


@MODELS.register_module()
class SpikingFPNHead(BaseDecodeHead):
    """Spiking Semantic-FPN head (official ``QFPNHead``): every conv input is a spike.

    Level i runs ``max(1, log2(s_i / s_0))`` stages ``spike → conv3x3 (no bias) → BN``, each
    stage of levels ≥ 1 followed by a bilinear ×2 upsample; the levels are then summed in real
    values after a bilinear resize to level 0's size (a no-op when sizes match, a genuine resize
    for inputs whose sides are not multiples of the total stride), spiked (``out_spike``) and
    classified by ``conv_seg`` (1×1 with bias). Logits come out at level 0's resolution, i.e.
    stride 2 with the SDT-V3 backbone. This is mmseg's ``FPNHead`` with spikes before every conv.

    Submodule names follow the official code (``scale_heads.i.j.{0,1,2}``, ``out_spike``,
    ``conv_seg``).

    Args:
        feature_strides (Sequence[int]): strides of the input levels. Only their ratios to the
            first one matter (they set the number of stages per level). The default is the
            truth for :class:`~mmlrf.models.backbones.SDTV3`, (2, 4, 8, 16); the official
            configs say (4, 8, 16, 32), which has the same ratios and builds the identical head.
        neuron (dict): neuron config. Official: ``MultiSpike`` with D = 4 and ``norm`` = the
            config's ``T`` (4).
        dropout_ratio (float): dropout before ``conv_seg`` (applied on the spikes while
            training). The official head builds a 0.1 dropout but never applies it, so the
            default 0 reproduces it.
        lean_inference (bool): at inference take the lean path
            (:func:`~mmlrf.inference.lean_fpn.head_forward`), which empties the maps it is given.
        **kwargs: :class:`BaseDecodeHead` arguments (``in_channels`` (one entry per level, each
            equal to ``channels``), ``channels``, ``num_classes``, ``in_index``,
            ``align_corners``, ``conv_cfg``, ``norm_cfg`` (None: ``BN``), ``loss_decode``, …).
            ``input_transform`` is always ``'multiple_select'``; there is no activation besides
            the neurons (``act_cfg`` is not used).

    Shapes: input the neck's levels ``[B, channels, H_i, W_i]``; output logits
    ``[B, num_classes, H_0, W_0]``.
    """

    def __init__(self,
                 feature_strides: Sequence[int] = (2, 4, 8, 16),
                 neuron: dict = dict(type='MultiSpike', max_value=4, norm=4),
                 dropout_ratio: float = 0.0,
                 lean_inference: bool = False,
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
        self.lean_inference = lean_inference
        # BaseDecodeHead's 1×1 classifier, rebuilt from conv_cfg (same parameters and init)
        self.conv_seg = build_conv_layer(self.conv_cfg, self.channels, self.out_channels, 1)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            num_stages = max(1, int(math.log2(stride / strides[0])))
            layers: list[nn.Module] = []
            for _ in range(num_stages):
                layers.append(SpikeConvBN(self.channels, neuron, self.conv_cfg, self.norm_cfg))
                if stride != strides[0]:
                    layers.append(Upsample(scale_factor=2, mode='bilinear',
                                           align_corners=self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.out_spike = build_neuron(neuron)

    @property
    def lean_inference(self) -> bool:
        """See ``lean_inference`` in the class docstring (settable; checked when set)."""
        return self._lean_inference

    @lean_inference.setter
    def lean_inference(self, value: bool) -> None:
        if value and len(set(self.in_index)) != len(self.in_index):
            raise ValueError('lean_inference needs distinct in_index entries (a level read '
                             f'twice cannot be emptied after its first read), got '
                             f'{self.in_index}')
        self._lean_inference = bool(value)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Neck levels ``[B, channels, H_i, W_i]`` → logits ``[B, num_classes, H_0, W_0]``."""
        x = self._transform_inputs(inputs)
        if lean_applies(self):
            return head_forward(self, x)
        out = self.scale_heads[0](x[0])
        for level, head in zip(x[1:], self.scale_heads[1:]):
            # in place: a BN output nothing saved for backward
            out += resize(head(level), size=out.shape[2:], mode='bilinear',
                          align_corners=self.align_corners)
        return self.cls_seg(spike_map(self.out_spike, out, inplace=True))
