"""What the measurement tools build (:mod:`mmlrf.analysis.loading`): a config's model in the
config's own registry scope, its attention replaced by a named variant."""
import os.path as osp

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from mmengine.registry import DefaultScope

from mmlrf.analysis.loading import build_model, parse_variant

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_SPIKFORMER = {'model.backbone.arch': dict(_delete_=True, embed_dims=16, depth=1,
                                                num_heads=2),
                   'model.head.in_channels': 16}


def test_a_classifier_config_builds_in_mmpretrains_scope():
    """An ImageNet config (``default_scope='mmpretrain'``) gives mmpretrain's classifier with the
    variant's mixer; the default scope stays mmseg's."""
    model, cfg = build_model(osp.join(ROOT, 'configs/imagenet/spikformer-8-512-ssa_8xb64_in1k.py'),
                             'lrf_dyn', TINY_SPIKFORMER)
    assert cfg.default_scope == 'mmpretrain'
    assert type(model).__name__ == 'ImageClassifier' and not model.training
    assert {type(m).__name__ for m in model.backbone.modules()} >= {'LRFDyn'}
    assert DefaultScope.get_current_instance().scope_name == 'mmseg'
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32), mode='tensor').shape == (2, 1000)


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match="variant must be one of .*'lrf_dyn'"):
        parse_variant('lrf_dun')
    with pytest.raises(ValueError, match='only LRFDyn variants'):
        parse_variant('ssa_kv:scan')
    assert parse_variant('lrf_dyn:scan') == (dict(type='LRFDyn'), 'scan')
