"""Test helper: the bytes autograd saves for backward, each storage once."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class SavedBytes:
    """Context manager summing the bytes of the storages autograd saves for backward inside it
    (through ``torch.autograd.graph.saved_tensors_hooks``): views of one tensor and a tensor
    saved twice count once.

    Args:
        exclude (Iterable[Tensor]): tensors whose storages are not counted (e.g. parameters).

    Attributes:
        bytes (int): total.
        by_dtype (dict[torch.dtype, int]): bytes per dtype.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self.bytes = 0
        self.by_dtype: dict[torch.dtype, int] = defaultdict(int)
        self._seen = {t.untyped_storage().data_ptr() for t in exclude}

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
            self.by_dtype[t.dtype] += storage.nbytes()
        return t

    def __enter__(self) -> 'SavedBytes':
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
