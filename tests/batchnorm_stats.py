"""Test helper: BatchNorm running statistics away from the identity (mean in [-0.5, 0.5], variance
in [0.5, 2]), drawn from the global RNG, so that eval-mode BNs and their folding matter."""
from torch import nn


def randomise_batchnorms(module: nn.Module) -> nn.Module:
    """Draw the running statistics of every ``BatchNorm2d`` in ``module``; returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module
