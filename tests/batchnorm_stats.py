"""Test helper: BatchNorm running statistics away from the identity, so that eval-mode BNs and
their folding matter."""
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomise_batchnorms(module: nn.Module) -> nn.Module:
    """Draw the running statistics of every BatchNorm (SyncBN included) in ``module`` from the
    global RNG (mean in [-0.5, 0.5], variance in [0.5, 2]); returns ``module``."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module


def calibrate_batchnorms(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to those of one training-mode pass on ``x`` and switch
    to eval: at PyTorch's default init (mean 0, var 1) almost no neuron fires in eval mode, which
    would make value and determinism checks vacuous."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives that batch's statistics
    with torch.no_grad():
        model.train()(x)
    return model.eval()
