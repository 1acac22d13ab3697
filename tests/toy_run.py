"""Test helper: the toy config run small through the tools (a shallow backbone, 32x32 images,
a few samples), and checkpoints of its model written without training."""
from __future__ import annotations

import os.path as osp

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CONFIG = osp.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')
#: One transformer block per stage instead of 6 + 2: the same code paths, quicker.
SHALLOW = 'model.backbone.depths=(1,1)'


def toy_data(folder: str) -> str:
    """A toy data set of 32x32 images (4 training, 2 validation) in ``folder``; its root."""
    from mmlrf.datasets import make_toy_dataset
    root = osp.join(folder, 'toy')
    if not osp.isdir(root):
        make_toy_dataset(root, num_train=4, num_val=2, size=32)
    return root


def toy_options(data_root: str, iters: int = 2, *extra: str) -> list[str]:
    """``--cfg-options`` for a short run of the toy config on ``data_root``."""
    return ['--cfg-options', f'data_root={data_root}', SHALLOW, f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={iters}', f'default_hooks.checkpoint.interval={iters}',
            'model.data_preprocessor.size=(32,32)', 'train_dataloader.batch_size=2', *extra]


def toy_model(shallow: bool = True) -> torch.nn.Module:
    """The toy segmentor (its own initialisation), ``shallow`` as :data:`SHALLOW`."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(TOY_CONFIG)
    if shallow:
        cfg.model.backbone.depths = (1, 1)
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg.model)


def save_toy_checkpoint(path: str, state_dict: dict | None = None) -> str:
    """Write an mmengine-style checkpoint of the shallow toy model (or of ``state_dict``) with
    the toy data set's classes."""
    from mmlrf.datasets import TOY_CLASSES
    state = toy_model().state_dict() if state_dict is None else state_dict
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dict(
        classes=TOY_CLASSES, palette=[[i * 40, 0, 0] for i in range(5)]))), path)
    return path
