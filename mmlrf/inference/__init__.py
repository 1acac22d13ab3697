"""Lean inference: memory-saving evaluation paths behind one switch, and the inference-time
model transforms.

Modules with a lean path (SDT-V3's conv blocks, the spiking FPN neck and head) carry a
``lean_inference`` flag, off by default; :func:`set_lean_inference` turns it on or off in a whole
model, and ``LeanEncoderDecoder(lean_inference=True)`` (the segmentation configs' model) turns
it on at build. On, at inference (autograd off, outside ``torch.compile``) they compute over row
strips (:mod:`.strips`), normalise and spike in place and free the maps they are given once read
(:mod:`.lean_fpn`), with the same outputs as the plain paths beside them. Also here:
:class:`.cuda_graph.GraphedForward` (replay an inference pass as one CUDA graph) and
:mod:`.options` (fold BNs, channels-last weights, ``torch.compile``).
"""
from __future__ import annotations

import torch
from torch import nn


def set_lean_inference(model: nn.Module, enabled: bool) -> int:
    """Turn lean inference on or off in every module of ``model`` that has it (a
    ``lean_inference`` attribute). Off, the model computes whole maps and leaves the maps it is
    given as they are (e.g. to read the backbone's maps after the head has run); the outputs
    are the same.

    Returns:
        int: how many modules were switched.
    """
    modules = [m for m in model.modules() if hasattr(m, 'lean_inference')]
    for module in modules:
        module.lean_inference = bool(enabled)
    return len(modules)


def lean_applies(module: nn.Module) -> bool:
    """Whether ``module`` takes its lean path in this call: its ``lean_inference`` flag is on,
    autograd does not record the call (inference) and ``torch.compile`` is not tracing it."""
    return module.lean_inference and not torch.is_grad_enabled() and \
        not torch.compiler.is_compiling()
