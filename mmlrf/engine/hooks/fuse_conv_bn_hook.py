"""Hook folding every BatchNorm into the convolution before it, for testing."""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ...inference.transforms import count_batchnorms, fold_batchnorms


@HOOKS.register_module()
class FuseConvBNHook(Hook):
    """Fold each BatchNorm into the convolution before it
    (:func:`~mmlrf.inference.transforms.fold_batchnorms`) once the test checkpoint is loaded
    (``tools/test.py --fuse-conv-bn``). The same function up to float rounding, so opt-in.
    """

    priority = 'LOW'

    def before_test(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        before = count_batchnorms(model)
        print_log(f'FuseConvBNHook: folded {fold_batchnorms(model)} of {before} '
                  'BatchNorm layers into their convolutions', logger='current')
