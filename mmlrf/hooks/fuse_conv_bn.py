"""Hook folding every BatchNorm into the convolution before it, for testing."""
from __future__ import annotations

from typing import Any

from mmcv.cnn import fuse_conv_bn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers (any ``_BatchNorm``, SyncBN included) in ``model``."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorms(model: nn.Module) -> int:
    """Fold each BatchNorm into the conv before it, in place (``mmcv.cnn.fuse_conv_bn``; see
    :class:`FuseConvBNHook` for when that is exact). Put ``model`` in eval mode first.

    Returns:
        int: how many BatchNorm layers were folded (a BN after a transposed conv stays).
    """
    before = count_batchnorms(model)
    fuse_conv_bn(model)
    return before - count_batchnorms(model)


@HOOKS.register_module()
class FuseConvBNHook(Hook):
    """Fold each BatchNorm into the convolution before it (``mmcv.cnn.fuse_conv_bn``) once the
    test checkpoint is loaded.

    In eval mode a BN is a per-channel affine map, so folding it into the preceding conv's
    weight and bias gives the same function with one elementwise pass fewer per conv. Results
    can differ from the unfused model by float rounding (a multi-spike neuron right at a
    rounding boundary may flip), so it is opt-in (``tools/test.py --fuse-conv-bn``). mmcv pairs a
    BN with the conv registered just before it in the same parent; every mmlrf model registers
    them in data-flow order (tests/test_configs.py checks all model families). A BN after a
    transposed conv (Spikformer's multi-scale adapter) is left as it is.
    """

    priority = 'LOW'

    def before_test(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        before = count_batchnorms(model)
        print_log(f'FuseConvBNHook: folded {fold_batchnorms(model)} of {before} '
                  'BatchNorm layers into their convolutions', logger='current')
