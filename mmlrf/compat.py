"""Make the pinned OpenMMLab stack usable on CPU-only machines with mmcv-lite and torch >= 2.6.

Two fixes, both applied once by ``import mmlrf`` and both no-ops where they are not needed:

* ``mmcv._ext`` stand-in: mmcv-lite ships no compiled ops, yet four mmseg modules import
  ``mmcv.ops`` at module level, so ``import mmseg.models`` fails. When (and only when) the real
  extension is absent, a stand-in module is registered whose every attribute is a function that
  raises :class:`MissingCompiledOpError` naming the op. A full mmcv is never touched.
* ``torch.load(weights_only=True)`` allow-list: mmengine 0.10.7 checkpoints pickle a
  ``HistoryBuffer`` and numpy scalars/arrays in their ``message_hub``; exactly those types are
  allow-listed so ``load_from``, ``resume`` and ``init_model`` work without disabling the safety.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any, Callable

_EXT_NAME = 'mmcv._ext'


class MissingCompiledOpError(RuntimeError):
    """A compiled mmcv op was called while only mmcv-lite is installed."""


def _missing_op(name: str) -> Callable[..., Any]:
    def op(*args: Any, **kwargs: Any) -> Any:
        raise MissingCompiledOpError(
            f'mmcv compiled op {name!r} was called, but only mmcv-lite (no compiled ops) is '
            'installed. mmlrf models never call it; if your config does (e.g. a head using '
            f'{name}), install full mmcv (pip install "mmcv>=2.0.0rc4,<2.2.0").')

    op.__name__ = name
    return op


class _ExtStandIn(types.ModuleType):
    """Module whose attributes are raising stubs (see :func:`_missing_op`)."""

    is_mmlrf_stand_in = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__'):
            raise AttributeError(name)
        return _missing_op(name)


def _real_ext_available() -> bool:
    if _EXT_NAME in sys.modules:
        return True
    try:
        return importlib.util.find_spec(_EXT_NAME) is not None
    except (ImportError, ValueError):
        return False


def install_mmcv_ext_stand_in() -> bool:
    """Register the ``mmcv._ext`` stand-in if the compiled extension is absent.

    Returns:
        bool: True if the stand-in is (now) in place, False if a real extension exists.
    """
    if _real_ext_available():
        return bool(getattr(sys.modules.get(_EXT_NAME), 'is_mmlrf_stand_in', False))
    module = _ExtStandIn(_EXT_NAME, 'mmlrf stand-in for the compiled ops missing in mmcv-lite')
    # A real spec: mmengine's Runner inspects module specs and crashes on ``None``.
    module.__spec__ = importlib.machinery.ModuleSpec(_EXT_NAME, loader=None, origin='mmlrf.compat')
    module.__file__ = __file__
    sys.modules[_EXT_NAME] = module
    import mmcv
    mmcv._ext = module  # attribute access ``mmcv._ext`` as after a normal import
    return True


def allow_mmengine_checkpoint_types() -> None:
    """Allow-list the non-tensor types mmengine 0.10.x checkpoints contain for ``weights_only``."""
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    if not hasattr(torch.serialization, 'add_safe_globals'):
        return
    numpy_types: list[Any] = [np.ndarray, np.dtype]
    reconstruct = getattr(getattr(np, '_core', np.core), 'multiarray')._reconstruct
    numpy_types.append(reconstruct)
    scalar = getattr(getattr(np, '_core', np.core), 'multiarray').scalar
    numpy_types.append(scalar)
    numpy_types += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    torch.serialization.add_safe_globals([HistoryBuffer, *numpy_types])


def apply() -> None:
    """Apply every fix (idempotent)."""
    install_mmcv_ext_stand_in()
    allow_mmengine_checkpoint_types()
