"""Test helper for tests/interop/test_cpu_dist.py: every rank saves its weights."""
from __future__ import annotations

import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


@HOOKS.register_module()
class DumpRankWeightsHook(Hook):
    """Write ``work_dir/rank{r}_init.pth`` before and ``rank{r}_weights.pth`` after training:
    ``{'params', 'buffers'}`` dicts."""

    def before_train(self, runner) -> None:
        self._dump(runner, 'init')

    def after_train(self, runner) -> None:
        self._dump(runner, 'weights')

    def _dump(self, runner, tag: str) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save({'params': {k: v.detach().clone() for k, v in model.named_parameters()},
                    'buffers': {k: v.detach().clone() for k, v in model.named_buffers()}},
                   osp.join(runner.work_dir, f'rank{get_rank()}_{tag}.pth'))
