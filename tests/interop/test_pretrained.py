"""Strict pretrained loading (``StrictPretrainedMixin``, ``load_pretrained``): every checkpoint
layout's prefix found, a readable report of what does not match, nothing loaded unless asked,
a classifier's checkpoint initialising a segmentation backbone."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import nn

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.interop import CheckpointMismatchError, StrictPretrainedMixin, load_pretrained
from mmlrf.models.backbones import SDTV3

TINY_SDTV3 = dict(type='SDTV3', arch=None, embed_dims=[8, 16, 32, 32], num_heads=2)


class _Child(BaseModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)

    def init_weights(self) -> None:  # own init, must not overwrite the pretrained weights
        nn.init.constant_(self.conv.weight, 0.5)


class _Tiny(StrictPretrainedMixin, BaseModule):
    def __init__(self, width: int = 3, init_cfg=None) -> None:
        super().__init__(init_cfg)
        self.stem = _Child()
        self.fc = nn.Linear(width, 4)


def _source_state(width: int = 3) -> dict:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in _Tiny(width).state_dict().items()}


def _save(path: Path, state: dict, prefix: str = '', extra: dict | None = None,
          wrap: str = 'state_dict') -> str:
    sd = {prefix + k: v for k, v in state.items()}
    sd.update(extra or {})
    torch.save({wrap: sd, 'meta': {}}, path)
    return str(path)


@pytest.mark.parametrize('prefix,wrap,extra', [
    ('', 'state_dict', {}),                                            # our backbone checkpoint
    ('backbone.', 'state_dict', {'decode_head.conv.weight': torch.ones(1)}),  # mmseg segmentor
    ('module.backbone.', 'state_dict', {'module.head.fc.weight': torch.ones(1)}),  # DDP classifier
    ('module.', 'model', {}),                                          # official-style 'model'
], ids=['bare', 'segmentor', 'ddp-classifier', 'official-model-key'])
def test_pretrained_loads_every_prefix_layout(tmp_path, prefix, wrap, extra):
    src = _source_state()
    ckpt = _save(tmp_path / 'c.pth', src, prefix, extra, wrap)
    model = _Tiny(init_cfg=dict(type='Pretrained', checkpoint=ckpt))
    model.init_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k]), k  # pretrained wins over _Child.init_weights' constant


def test_pretrained_strict_reports_and_loads_nothing(tmp_path):
    src = _source_state(width=5)  # fc is [4, 5] in the file, [4, 3] in the model
    del src['stem.bn.running_mean']
    src['backbone_extra.weight'] = torch.zeros(2)
    ckpt = _save(tmp_path / 'c.pth', src)
    model = _Tiny(init_cfg=dict(type='Pretrained', checkpoint=ckpt))
    with pytest.raises(CheckpointMismatchError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'stem.bn.running_mean' in msg and 'backbone_extra.weight' in msg
    assert 'fc.weight: (4, 5) vs (4, 3)' in msg and 'strict=False' in msg
    assert not torch.equal(model.stem.bn.running_var, src['stem.bn.running_var']) or \
        torch.equal(src['stem.bn.running_var'], torch.ones(3))  # untouched (fresh BN = ones)
    assert torch.equal(model.stem.conv.weight, torch.full_like(model.stem.conv.weight, 0.5))


def test_pretrained_non_strict_loads_part_and_says_so(tmp_path):
    src = _source_state(width=5)
    ckpt = _save(tmp_path / 'c.pth', src)
    model = _Tiny(init_cfg=dict(type='Pretrained', checkpoint=ckpt, strict=False))
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        model.init_weights()
    finally:
        logger.removeHandler(handler)
    text = '\n'.join(r.getMessage() for r in records)
    assert 'PARTIAL load' in text and 'loaded all' not in text and 'fc.weight' in text
    assert torch.equal(model.stem.conv.weight, src['stem.conv.weight'])
    assert torch.equal(model.fc.bias, src['fc.bias'])
    assert model.fc.weight.shape == (4, 3)


def test_pretrained_bad_options_fail_at_build_time():
    with pytest.raises(ValueError, match="stric"):
        _Tiny(init_cfg=dict(type='Pretrained', checkpoint='x.pth', stric=False))
    with pytest.raises(ValueError, match="'checkpoint'"):
        _Tiny(init_cfg=dict(type='Pretrained'))


def test_pretrained_missing_file_names_it(tmp_path):
    model = _Tiny(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        model.init_weights()


def test_classifier_checkpoint_into_segmentation_backbone(tmp_path):
    """An mmpretrain ImageClassifier's checkpoint initialises the same backbone in mmseg."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS as CLS_MODELS
    cfg = {k: v for k, v in TINY_SDTV3.items() if k != 'type'}
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = CLS_MODELS.build(dict(
            type='ImageClassifier', backbone=dict(TINY_SDTV3, out_indices=(3, )),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=32)))
    ckpt = tmp_path / 'cls.pth'
    torch.save({'state_dict': classifier.state_dict()}, ckpt)
    backbone = SDTV3(**cfg, init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    report = load_pretrained(backbone, str(ckpt))
    assert report.complete and report.prefix == 'backbone.'
    assert len(report.ignored) == 2  # head.fc.weight, head.fc.bias
    ref = classifier.backbone.state_dict()
    backbone.init_weights()
    assert all(torch.equal(v, ref[k]) for k, v in backbone.state_dict().items())
