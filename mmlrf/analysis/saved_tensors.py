"""What autograd keeps for backward: bytes per dtype, and per module that saved them.

Training memory is mostly the tensors autograd saves during the forward pass for the backward
pass. :class:`SavedTensorMeter` counts them through ``torch.autograd.graph.saved_tensors_hooks``
(each storage once: views of one tensor and a tensor saved twice count once) and, given the
model, attributes every storage to the module whose forward saved it first.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .memory import MIB

#: ``by_module`` key of tensors saved outside every hooked module's forward.
OUTSIDE = '(outside modules)'


class SavedTensorMeter:
    """Context manager summing the bytes autograd saves for backward, each storage once.

    Args:
        exclude (Iterable[Tensor]): tensors whose storages are not counted (e.g. parameters).
        model (nn.Module | None): when given, attribute each storage to the innermost module
            running when it was first saved (``by_module``, ``by_kind``), through forward hooks
            on every module (a conv's 1-byte spike code, saved first by its neuron, counts for
            the neuron).
        depth (int | None): ``by_module`` keeps the first ``depth`` components of the module
            names (``backbone.block3.0``: depth 3); None keeps the full names.

    Attributes:
        bytes (int): total.
        by_dtype (dict[torch.dtype, int]): bytes per dtype.
        by_module (dict[str, int]): bytes per (truncated) module name; :data:`OUTSIDE` for
            tensors saved outside every hooked module.
        by_kind (dict[tuple[str, str], int]): bytes per (class of the saving module, dtype).
    """

    def __init__(self, exclude: Iterable[Tensor] = (), model: nn.Module | None = None,
                 depth: int | None = None) -> None:
        if depth is not None and depth < 1:
            raise ValueError(f'depth must be >= 1 or None, got {depth!r}')
        self.bytes = 0
        self.by_dtype: dict[torch.dtype, int] = defaultdict(int)
        self.by_module: dict[str, int] = defaultdict(int)
        self.by_kind: dict[tuple[str, str], int] = defaultdict(int)
        self._seen = {t.untyped_storage().data_ptr() for t in exclude}
        self._model, self._depth = model, depth
        self._stack: list[nn.Module] = []
        self._names: dict[nn.Module, str] = {}
        self._handles: list = []

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            size = storage.nbytes()
            self.bytes += size
            self.by_dtype[t.dtype] += size
            if self._model is not None:
                module = self._stack[-1] if self._stack else None
                name = OUTSIDE if module is None else self._names[module] or '(model)'
                if self._depth is not None and module is not None:
                    name = '.'.join(name.split('.')[:self._depth])
                self.by_module[name] += size
                kind = type(module).__name__ if module is not None else OUTSIDE
                self.by_kind[(kind, str(t.dtype).replace('torch.', ''))] += size
        return t

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        self._stack.append(module)

    def _leave_module(self, module: nn.Module, args: Any, output: Any) -> None:
        self._stack.pop()

    def __enter__(self) -> 'SavedTensorMeter':
        if self._model is not None:
            self._names = {m: n for n, m in self._model.named_modules()}
            for module in self._names:
                self._handles += [module.register_forward_pre_hook(self._enter_module),
                                  module.register_forward_hook(self._leave_module)]
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles, self._stack = [], []

    def summary(self, top: int | None = None) -> dict[str, Any]:
        """JSON-able totals in MiB, the largest first.

        Args:
            top (int | None): rows kept per table (None: all).

        Returns:
            dict: ``saved_mib``, ``by_dtype`` {dtype: MiB}, ``by_module`` [[name, MiB]],
            ``by_kind`` [[class, dtype, MiB]].
        """
        def ranked(table: dict) -> list:
            return sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return dict(
            saved_mib=self.bytes / MIB,
            by_dtype={str(k).replace('torch.', ''): v / MIB for k, v in ranked(self.by_dtype)},
            by_module=[[name, v / MIB] for name, v in ranked(self.by_module)],
            by_kind=[[cls, dtype, v / MIB] for (cls, dtype), v in ranked(self.by_kind)])
