"""Make the pinned OpenMMLab stack usable on CPU-only machines with mmcv-lite and torch >= 2.6.

Two fixes, both applied once by ``import mmlrf`` and both no-ops where they are not needed:

* ``mmcv._ext`` stand-in: mmcv-lite ships no compiled ops, yet four mmseg modules import
  ``mmcv.ops`` at module level, so ``import mmseg.models`` fails. When (and only when) the real
  extension is absent, a stand-in module is registered whose every attribute is a function that
  raises :class:`MissingCompiledOpError` naming the op. A full mmcv is never touched.
* ``torch.load(weights_only=True)`` allow-list: mmengine 0.10.7 checkpoints pickle a
  ``HistoryBuffer`` (with references to its statistics methods) and numpy scalars/arrays in
  their ``message_hub``; exactly those globals are allow-listed (see
  :func:`allow_mmengine_checkpoint_types`) so ``load_from``, ``resume`` and ``init_model`` work
  without disabling the safety.
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


#: dtypes of the numpy arrays/scalars in a Runner checkpoint's message hub: logged values keep
#: the dtype of whatever was logged (metrics, losses, counts), so every real/bool dtype.
_CHECKPOINT_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                      'uint64', 'float16', 'float32', 'float64')
#: The four statistics methods mmengine's ``HistoryBuffer`` pickles by reference.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_method(obj: Any, name: str) -> Any:
    """``getattr`` restricted to the ``HistoryBuffer`` statistics methods.

    ``HistoryBuffer.__getstate__`` pickles ``HistoryBuffer.min`` etc., which pickle writes as
    ``getattr(HistoryBuffer, 'min')``. Allow-listing the builtin ``getattr`` would let a
    checkpoint read any attribute of any allowed object, so this stand-in is registered under
    the builtin's name instead and resolves exactly those four look-ups.

    Raises:
        pickle.UnpicklingError: for any other look-up.
    """
    import pickle

    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'weights_only load: getattr({obj!r}, {name!r}) is not allowed (mmlrf allows only '
        f'HistoryBuffer.{{{", ".join(_HISTORY_BUFFER_METHODS)}}})')


def allow_mmengine_checkpoint_types() -> None:
    """Allow-list exactly the globals of mmengine 0.10.x checkpoints for ``weights_only``.

    A checkpoint saved by mmengine's Runner contains, besides tensors and builtin containers:
    ``mmengine.logging.HistoryBuffer``, ``numpy.ndarray``, ``numpy.dtype``,
    ``numpy._core.multiarray._reconstruct`` and ``.scalar`` (``numpy.core`` before numpy 2),
    the dtype classes of :data:`_CHECKPOINT_DTYPES` (numpy >= 2 rebuilds dtypes through them),
    and ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean')`` (see
    :func:`_history_buffer_method`).
    """
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    multiarray = getattr(np, '_core', None) or np.core
    multiarray = multiarray.multiarray
    dtype_classes = [type(np.dtype(name)) for name in _CHECKPOINT_DTYPES]
    torch.serialization.add_safe_globals([
        HistoryBuffer, np.ndarray, np.dtype, *dtype_classes, multiarray._reconstruct,
        multiarray.scalar,
        (_history_buffer_method, '__builtin__.getattr'),
        (_history_buffer_method, 'builtins.getattr'),
    ])


def apply() -> None:
    """Apply every fix (idempotent)."""
    install_mmcv_ext_stand_in()
    allow_mmengine_checkpoint_types()
