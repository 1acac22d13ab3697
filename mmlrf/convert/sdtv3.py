"""Official SDT-V3 / E-SpikeFormer checkpoints → mmlrf (``SDTV3`` + ``SpikingFPN`` +
``SpikingFPNHead``).

Two official sources are understood:

* **segmentor** state dicts (mmseg checkpoints of the official segmentation code): keys start
  with ``backbone.``, ``neck.``, ``decode_head.``. Our modules keep the official names, so keys
  are unchanged; the MLP ``Conv1d`` weights ``[out, in, 1]`` become ``[out, in, 1, 1]``.
* **ImageNet classification** checkpoints (``Efficient_Spiking_Transformer_s/m/l``): a dict
  with ``'model'`` (plus optimizer, args …); keys lack ``backbone.``, there is a classifier
  ``head.weight`` / ``head.bias`` (dropped and reported) and the transformer blocks have **no
  layer scales**. The 24 missing ``layer_scale{1,2,3}`` vectors are filled with
  ``layer_scale`` (default :data:`DEFAULT_IMAGENET_LAYER_SCALE` = 1e-6): that is what the
  official segmentation recipe starts fine-tuning from (its ``init_cfg=Pretrained`` loads with
  ``strict=False`` and leaves them at their 1e-6 initialisation), so the default reproduces
  the protocol behind the published mIoU numbers. ``layer_scale=1.0`` instead makes the
  backbone compute exactly what it computed inside the ImageNet model.

Conversion is strict: every key of the target model must be produced with the right shape and
every source key must be used (classifier keys excepted); :class:`ConversionReport` lists what
is missing, unexpected or mismatched.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..models.backbones import SDTV3
from ..models.decode_heads import SpikingFPNHead
from ..models.necks import SpikingFPN

#: Layer-scale value given to ImageNet checkpoints (official segmentation recipe).
DEFAULT_IMAGENET_LAYER_SCALE = 1e-6
SOURCE_KINDS = ('segmentor', 'imagenet')
_CLASSIFIER_KEYS = ('head.weight', 'head.bias')
_MLP_CONV = re.compile(r'\.mlp\.fc[12]_conv\.weight$')
_LAYER_SCALE = re.compile(r'^backbone\.block[34]\.\d+\.layer_scale[123]$')


@dataclass
class ConversionReport:
    """What a conversion did. ``ok`` is True when nothing is missing, unexpected or mismatched.

    Attributes:
        kind (str): the detected source kind, one of :data:`SOURCE_KINDS`.
        missing (list[str]): target keys the source does not provide.
        unexpected (list[str]): source keys (after renaming) the target does not have.
        shape_mismatch (list[tuple[str, tuple, tuple]]): ``(key, source shape, target shape)``.
        filled (list[str]): target keys set to a constant (ImageNet layer scales).
        dropped (list[str]): source keys deliberately ignored (ImageNet classifier).
    """

    kind: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f'source kind: {self.kind}']
        for title, items in (('missing keys', self.missing),
                             ('unexpected keys', self.unexpected),
                             ('filled keys', self.filled),
                             ('dropped keys', self.dropped)):
            lines.append(f'{title}: {len(items)}')
            lines += [f'  {k}' for k in items]
        lines.append(f'shape mismatches: {len(self.shape_mismatch)}')
        lines += [f'  {k}: source {s} vs target {t}' for k, s, t in self.shape_mismatch]
        lines.append('result: ' + ('complete' if self.ok else 'PARTIAL'))
        return '\n'.join(lines)


class SDTV3Segmentor(nn.Module):
    """Backbone + neck + head container with the key layout of an mmseg segmentor.

    Args:
        backbone (dict), neck (dict), decode_head (dict): kwargs of :class:`SDTV3`,
            :class:`SpikingFPN`, :class:`SpikingFPNHead` (no ``type``).
    """

    def __init__(self, backbone: dict, neck: dict, decode_head: dict) -> None:
        super().__init__()
        self.backbone = SDTV3(**backbone)
        self.neck = SpikingFPN(**neck)
        self.decode_head = SpikingFPNHead(**decode_head)

    def forward_parts(self, x: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
        """Images ``[B, 3, H, W]`` → (4 backbone maps, 4 neck maps, logits at stride 2)."""
        feats = self.backbone(x)
        neck = self.neck(feats)
        return feats, neck, self.decode_head(neck)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` → logits ``[B, num_classes, ceil(H/2), ceil(W/2)]``."""
        return self.forward_parts(x)[2]


def _backbone_kwargs(bb: Mapping) -> dict:
    """Official ``Spiking_vit_MetaFormerv2`` arguments → :class:`SDTV3` kwargs."""
    if bb.get('decode_mode', 'QTrick') != 'QTrick':
        raise ValueError(f"backbone decode_mode must be 'QTrick' (4-map output), "
                         f"got {bb['decode_mode']!r}")
    if bb.get('depths', 8) < 6:
        raise ValueError(f"backbone depths must be >= 6, got {bb['depths']}")
    return dict(embed_dims=list(bb['embed_dim']), num_heads=bb.get('num_heads', 8),
                mlp_ratio=bb.get('mlp_ratios', 4), in_channels=bb.get('in_channels', 3),
                attn=dict(type='SSA', order='qk'), out_indices=(0, 1, 2, 3),
                drop_path_rate=bb.get('drop_path_rate', 0.0))


def mmlrf_config_from_official(cfg: Mapping) -> dict:
    """Translate official constructor arguments (``tiny_model.json`` layout: ``cfg['backbone']``,
    ``cfg['neck']``, ``cfg['decode_head']``) into kwargs of :class:`SDTV3Segmentor`.

    Raises:
        ValueError: for official options this port does not reproduce (``decode_mode`` other
            than ``'QTrick'``, ``num_outs`` other than 4).
    """
    neck, head = cfg['neck'], cfg['decode_head']
    return dict(
        backbone=_backbone_kwargs(cfg['backbone']),
        neck=dict(in_channels=list(neck['in_channels']), out_channels=neck['out_channels'],
                  num_outs=neck.get('num_outs', 4),
                  neuron=dict(type='MultiSpike', max_value=4, norm=neck.get('T', 4))),
        decode_head=dict(in_channels=list(head['in_channels']), channels=head['channels'],
                         num_classes=head['num_classes'],
                         in_index=list(head.get('in_index', [0, 1, 2, 3])),
                         feature_strides=list(head.get('feature_strides', [4, 8, 16, 32])),
                         align_corners=head.get('align_corners', False),
                         neuron=dict(type='MultiSpike', max_value=4, norm=head.get('T', 4))))


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f'cannot infer the model size: checkpoint has no {key!r}')
    return tuple(state[key].shape)


def infer_official_config(state: Mapping[str, Tensor]) -> dict:
    """Recover official constructor arguments from a segmentor-layout state dict's shapes.

    ``num_heads`` cannot be read from weights (no per-head parameters) and is set to the
    official 8; it does not affect any key or shape. Without ``neck.`` keys (a backbone-only
    dict) only ``cfg['backbone']`` is returned.
    """
    def out_ch(name: str) -> int:
        return _shape(state, f'backbone.{name}.encode_conv.weight')[0]

    dims = [out_ch('downsample1_2'), out_ch('downsample2'), out_ch('downsample3'),
            out_ch('downsample4')]
    in_ch = _shape(state, 'backbone.downsample1_1.encode_conv.weight')[1]
    ratio = _shape(state, 'backbone.ConvBlock1_1.0.conv1.weight')[0] // (dims[0] // 2)
    cfg = dict(backbone=dict(embed_dim=dims, num_heads=8, mlp_ratios=ratio, in_channels=in_ch))
    if not any(k.startswith('neck.') for k in state):
        return cfg
    lateral = [_shape(state, f'neck.lateral_convs.{i}.0.weight') for i in range(4)]
    seg = _shape(state, 'decode_head.conv_seg.weight')
    stages = [len({k.split('.')[3] for k in state
                   if k.startswith(f'decode_head.scale_heads.{i}.') and k.endswith('.1.weight')})
              for i in range(4)]
    strides = [2] + [2 * 2 ** n for n in stages[1:]]
    cfg['neck'] = dict(in_channels=[s[1] for s in lateral], out_channels=lateral[0][0])
    cfg['decode_head'] = dict(in_channels=[seg[1]] * 4, channels=seg[1], num_classes=seg[0],
                              feature_strides=strides)
    return cfg


def load_official_checkpoint(path: str) -> dict[str, Tensor]:
    """Load an official checkpoint safely (``weights_only=True``) and return its state dict.

    The official classification training script pickles its ``argparse.Namespace`` under
    ``'args'``; exactly that class is allow-listed for this load. The state dict is taken from
    ``'model'`` (classification) or ``'state_dict'`` (mmseg) when present.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('model', 'state_dict'):
        if isinstance(obj, dict) and isinstance(obj.get(key), Mapping):
            return dict(obj[key])
    if not isinstance(obj, Mapping):
        raise ValueError(f'{path}: expected a state dict or a dict with "model"/"state_dict", '
                         f'got {type(obj).__name__}')
    return dict(obj)


def detect_kind(state: Mapping[str, Tensor]) -> str:
    """'segmentor' if keys carry the ``backbone.`` prefix, 'imagenet' otherwise."""
    return 'segmentor' if any(k.startswith('backbone.') for k in state) else 'imagenet'


def target_shapes(state: Mapping[str, Tensor], kind: str) -> dict[str, torch.Size]:
    """Key → shape of the mmlrf model matching an official (renamed) state dict: the full
    segmentor for 'segmentor' sources, the ``backbone.``-prefixed backbone for 'imagenet'."""
    official = infer_official_config(state)
    if kind == 'segmentor' and 'neck' not in official:
        raise ValueError('segmentor checkpoint without neck./decode_head. keys')
    with torch.device('meta'):
        if kind == 'imagenet':
            model = nn.ModuleDict(dict(backbone=SDTV3(**_backbone_kwargs(official['backbone']))))
        else:
            model = SDTV3Segmentor(**mmlrf_config_from_official(official))
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_official_state_dict(
        state: Mapping[str, Tensor],
        layer_scale: float = DEFAULT_IMAGENET_LAYER_SCALE,
        target: Mapping[str, torch.Size] | None = None,
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert an official state dict (segmentor or ImageNet classification) to mmlrf keys.

    Args:
        state (Mapping[str, Tensor]): the official state dict (already unwrapped, see
            :func:`load_official_checkpoint`).
        layer_scale (float): value of the layer-scale vectors an ImageNet checkpoint lacks.
        target (Mapping[str, torch.Size] | None): expected mmlrf key → shape; None infers the
            model from the checkpoint (:func:`target_shapes`).

    Returns:
        tuple[dict[str, Tensor], ConversionReport]: converted tensors (only keys present in the
        target with the right shape) and the report.
    """
    kind = detect_kind(state)
    report = ConversionReport(kind)
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if kind == 'imagenet':
            if key in _CLASSIFIER_KEYS:
                report.dropped.append(key)
                continue
            key = 'backbone.' + key
        if _MLP_CONV.search(key) and value.dim() == 3:
            value = value.unsqueeze(-1)
        renamed[key] = value
    if target is None:
        target = target_shapes(renamed, kind)
    out: dict[str, Tensor] = {}
    for key, value in renamed.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key]):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(target[key])))
        else:
            out[key] = value
    for key, shape in target.items():
        if key in renamed:
            continue
        if kind == 'imagenet' and _LAYER_SCALE.match(key):
            out[key] = torch.full(tuple(shape), float(layer_scale))
            report.filled.append(key)
        else:
            report.missing.append(key)
    return out, report


def convert_checkpoint(src: str, dst: str, allow_partial: bool = False,
                       layer_scale: float = DEFAULT_IMAGENET_LAYER_SCALE) -> ConversionReport:
    """Convert the official checkpoint file ``src`` and save ``{'state_dict', 'meta'}`` to
    ``dst`` (loadable by mmengine: ``load_from`` for segmentors, or a backbone ``init_cfg``
    ``dict(type='Pretrained', checkpoint=dst, prefix='backbone.')``).

    Nothing is written when the result is partial, unless ``allow_partial``.
    """
    state, report = convert_official_state_dict(load_official_checkpoint(src), layer_scale)
    if report.ok or allow_partial:
        meta = dict(converted_from='official SDT-V3', kind=report.kind, complete=report.ok,
                    layer_scale=layer_scale if report.filled else None)
        torch.save(dict(state_dict=state, meta=meta), dst)
    return report
