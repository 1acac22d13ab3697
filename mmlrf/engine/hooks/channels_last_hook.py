"""Hook storing a model's convolution weights channels-last (NHWC) for testing."""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ...inference.transforms import to_channels_last


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Store the model's 4-D weights channels-last
    (:func:`~mmlrf.inference.transforms.to_channels_last`) once the test checkpoint is loaded
    (``tools/test.py --channels-last``).

    Runs after :class:`FuseConvBNHook` (priority 'LOWEST'), so folded weights are converted
    too. For memory-bound CPU deployment (docs/benchmarks.md). Inference only: training keeps
    the contiguous layout.
    """

    priority = 'LOWEST'

    def before_test(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        print_log(f'ChannelsLastHook: {to_channels_last(model)} 4-D weights stored '
                  'channels-last', logger='current')
