"""Switch lean inference (:mod:`mmlrf.strips`, the spiking FPN's released inputs) on or off in
a built model."""
from __future__ import annotations

from torch import nn


def set_lean_inference(model: nn.Module, enabled: bool) -> int:
    """Turn lean inference on or off in every module of ``model`` that has it: SDT-V3's conv
    blocks (``strips``, the backbone's ``conv_strips``) and the spiking FPN neck and head
    (``release_inputs``). Off, the model computes whole maps and leaves the maps it is given as
    they are (e.g. to read the backbone's maps after the head has run); the outputs are the
    same.

    Returns:
        int: how many modules were switched.
    """
    from ..backbones.sdt_v3 import ConvBlock
    from ..heads import SpikingFPN, SpikingFPNHead
    count = 0
    for module in model.modules():
        if isinstance(module, ConvBlock):
            module.strips = bool(enabled)
        elif isinstance(module, (SpikingFPN, SpikingFPNHead)):
            module.release_inputs = bool(enabled)
        else:
            continue
        count += 1
    return count
