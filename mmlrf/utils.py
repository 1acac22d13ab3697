"""Small helpers shared by every layer of the package (imports nothing from it)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_positive_int(value: int, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer (an integral float counts), else
    raise ValueError naming it (also for NaN and infinities)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or int(value) != value or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


def writable(x: Tensor) -> bool:
    """Whether ``x`` may be changed in place here: not an inference-mode tensor outside
    ``torch.inference_mode`` (PyTorch refuses those updates). Always True while
    ``torch.compile`` traces (Dynamo cannot trace ``is_inference``; it rewrites in-place
    updates itself)."""
    return torch.compiler.is_compiling() or not x.is_inference() or \
        torch.is_inference_mode_enabled()
