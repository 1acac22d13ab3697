"""Hook storing a model's convolution weights channels-last (NHWC) for testing."""
from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def to_channels_last(model: nn.Module) -> int:
    """Store every 4-D parameter and buffer of ``model`` channels-last, in place.

    A convolution whose weight is channels-last produces a channels-last output, so the
    activations of the whole network follow from the first conv on. On the CPU, oneDNN then
    runs its convolutions on the tensors as they are instead of reordering each input and
    output into its blocked layout (a full-size copy of each), which lowers the inference peak.
    oneDNN may pick other kernels for the new layout, so outputs can differ from the contiguous
    model's by float rounding (tests/test_configs.py; the 19M segmentor's 1×1024×2048 logits
    came out identical on the development machine).

    Returns:
        int: how many 4-D parameters were converted.
    """
    count = sum(p.dim() == 4 for p in model.parameters())
    model.to(memory_format=torch.channels_last)
    return count


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Store the model's 4-D weights channels-last (:func:`to_channels_last`) once the test
    checkpoint is loaded (``tools/test.py --channels-last``).

    Runs after :class:`~mmlrf.hooks.FuseConvBNHook` (priority 'LOWEST'), so folded weights are
    converted too. Meant for memory-bound CPU deployment: on the 2-core development machine
    the 19M LRF-Dyn segmentor's 1×1024×2048 inference peak drops by a quarter at about the
    same speed (docs/benchmarks.md). Inference only: training keeps the contiguous layout.
    """

    priority = 'LOWEST'

    def before_test(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        print_log(f'ChannelsLastHook: {to_channels_last(model)} 4-D weights stored '
                  'channels-last', logger='current')
