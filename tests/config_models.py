"""Test helper: the segmentation configs, their models at reduced width (same component types)
and the configs grouped by that reduced model."""
from __future__ import annotations

import copy
import functools
import glob
import os.path as osp

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in p.split(osp.sep) and osp.sep + 'imagenet' + osp.sep not in p)
# Reduced widths and depths, same component types: the full-width channel wiring is checked
# separately.
SMALL_BACKBONE = {
    'SDTV3': dict(arch=None, embed_dims=[16, 32, 32, 32], depths=(1, 1)),
    'Spikformer': dict(arch=dict(embed_dims=32, depth=2, num_heads=4), T=2),
    'QKFormer': dict(arch=dict(embed_dims=32, depths=(1, 1, 1), num_heads=4), T=2),
}
#: Side of the reduced models' (padded) inputs.
SIZE = 32


def rel(path):
    return osp.relpath(path, ROOT)


def load(path):
    """The config at ``path`` (a copy of it: each file is parsed once per process)."""
    return copy.deepcopy(_parse(osp.abspath(path)))


@functools.lru_cache(maxsize=None)
def _parse(path):
    from mmengine.config import Config
    return Config.fromfile(path)


def shrink_model(model_cfg):
    """Reduced-width copy of ``model_cfg`` (no pretrained init, ``SIZE``-pixel padding) with
    consistent wiring."""
    from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.data_preprocessor.size = (SIZE, SIZE)
    backbone = model_cfg.backbone
    backbone.update(SMALL_BACKBONE[backbone.type], init_cfg=None)
    with torch.device('meta'):
        channels = list(MODELS.build(backbone).out_channels)
    if model_cfg.get('neck'):
        model_cfg.neck.update(in_channels=channels, out_channels=16)
        model_cfg.decode_head.update(in_channels=[16] * len(channels), channels=16)
    else:  # mmseg head directly on the backbone (UPerHead)
        model_cfg.decode_head.update(in_channels=channels, channels=16)
    if model_cfg.get('auxiliary_head'):
        aux = model_cfg.auxiliary_head
        aux.update(in_channels=channels[aux.in_index], channels=16)
    return model_cfg


def build_small(path):
    """The reduced-width model of the config at ``path``."""
    from mmseg.registry import MODELS
    return MODELS.build(shrink_model(load(path).model))


def _model_groups():
    """Configs grouped by their reduced-width model config: the forward/backward computation is
    a function of that config only, so one run per group covers every config in it."""
    from mmengine.config import Config
    groups = {}
    for path in SEG_CONFIGS:
        model_cfg = shrink_model(load(path).model)
        groups.setdefault(Config(dict(model=model_cfg)).pretty_text, []).append(path)
    return sorted(groups.values())


def group_id(group) -> str:
    return '+'.join(map(rel, group))


MODEL_GROUPS = _model_groups()


def randomise_batchnorms(model, seed=0):
    """Eval statistics and affine parameters far from the identity, so folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                shape = m.running_mean.shape
                m.running_mean.copy_(0.2 * torch.randn(shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(shape, generator=gen))
                m.weight.copy_(0.5 + torch.rand(shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(shape, generator=gen))
