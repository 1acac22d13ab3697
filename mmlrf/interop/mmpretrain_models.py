"""Import ``mmpretrain.models`` on machines without a usable torchvision.

``import mmpretrain.models`` (needed for ``ImageClassifier``, ``LinearClsHead``,
``ClsDataPreprocessor``, ...) reaches exactly one torchvision import: ``torchvision.ops.boxes`` in
``mmpretrain.evaluation.metrics.visual_grounding_eval`` (a box-IoU metric for visual grounding).
When torchvision cannot be imported (absent, or its compiled ops do not match torch), that one
module is provided, **only for the duration of the import**, as a stand-in whose every function
raises :class:`MissingTorchvisionError`. Afterwards ``torchvision`` is again absent from
``sys.modules``, so any later ``import torchvision`` (mmpretrain's data transforms, mmengine's
environment report) fails or succeeds exactly as it would have without mmlrf. With a working
torchvision nothing is replaced.

Importing this module performs the import, so an mmpretrain config only needs
``custom_imports = dict(imports=['mmlrf.interop.mmpretrain_models'], allow_failed_imports=False)``.
"""
from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager
from typing import Any, Callable, Iterator

_STAND_IN_NAMES = ('torchvision', 'torchvision.ops', 'torchvision.ops.boxes')


class MissingTorchvisionError(RuntimeError):
    """A torchvision function was called, but torchvision is not usable on this machine."""


class _BoxesStandIn(types.ModuleType):
    """``torchvision.ops.boxes`` whose every function raises :class:`MissingTorchvisionError`."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith('__'):
            raise AttributeError(name)

        def missing(*args: Any, **kwargs: Any) -> Any:
            raise MissingTorchvisionError(
                f'torchvision.ops.boxes.{name} was called, but torchvision is not usable here '
                '(mmlrf imported mmpretrain.models with a stand-in for it). Install a torchvision '
                'matching your torch to use mmpretrain features that need it.')

        missing.__name__ = name
        return missing


def torchvision_usable() -> bool:
    """Whether ``import torchvision.ops.boxes`` works (leaves ``sys.modules`` clean if not)."""
    try:
        importlib.import_module('torchvision.ops.boxes')
    except (ImportError, RuntimeError, OSError, AttributeError):
        for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
            del sys.modules[name]
        return False
    return True


@contextmanager
def _torchvision_boxes_stand_in() -> Iterator[None]:
    package = types.ModuleType('torchvision')
    package.__path__ = []  # a package, so other submodule imports fail with their own name
    ops = types.ModuleType('torchvision.ops')
    ops.__path__ = []
    boxes = _BoxesStandIn('torchvision.ops.boxes')
    package.ops, ops.boxes = ops, boxes  # type: ignore[attr-defined]
    sys.modules.update(zip(_STAND_IN_NAMES, (package, ops, boxes)))
    try:
        yield
    finally:
        for name in _STAND_IN_NAMES:
            sys.modules.pop(name, None)


def import_mmpretrain_models() -> types.ModuleType:
    """Import and return ``mmpretrain.models`` (see the module docstring).

    Returns:
        ModuleType: ``mmpretrain.models``, with all its classes registered in
        ``mmpretrain.registry``.
    """
    if 'mmpretrain.models' in sys.modules or torchvision_usable():
        return importlib.import_module('mmpretrain.models')
    with _torchvision_boxes_stand_in():
        return importlib.import_module('mmpretrain.models')


import_mmpretrain_models()
