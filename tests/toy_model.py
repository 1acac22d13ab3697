"""Test helper: the toy config's segmentor (a tiny SDT-V3 with LRF-Dyn, spiking FPN neck and
head), optionally with another token mixer."""
from __future__ import annotations

import os.path as osp

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CONFIG = osp.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')


def build_toy_model(attn: dict | None = None, dynamics_mode: str | None = None,
                    device: str | torch.device = 'cpu') -> nn.Module:
    """The toy config's model on ``device`` (training mode), its backbone's token mixer
    replaced by ``attn`` (None: the config's LRF-Dyn) and its dynamics on ``dynamics_mode``."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from mmlrf.models.mixers import set_dynamics_mode
    cfg = Config.fromfile(TOY_CONFIG)
    if attn is not None:
        cfg.model.backbone.attn = attn
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model).to(device)
    if dynamics_mode is not None:
        assert set_dynamics_mode(model, dynamics_mode) > 0
    return model
