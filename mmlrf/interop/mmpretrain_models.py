"""Import mmpretrain's registering packages on machines without a usable torchvision.

mmpretrain's ``register_all_modules`` (called by mmengine's Runner under
``default_scope='mmpretrain'``, and by every mmpretrain registry on its first build) imports
``mmpretrain.{datasets, engine, evaluation, models, structures, visualization}``. Those reach
torchvision at import time in four places, none of which mmlrf's backbones, ``ImageClassifier``,
``ClsDataPreprocessor``, ``LinearClsHead`` or the ``LoadImageFromFile`` / ``RandomResizedCrop``
(``backend='pillow'``) / ``PackInputs`` pipeline (for numpy images) need:

==============================================  =============================================
mmpretrain module                               torchvision names it binds at import time
==============================================  =============================================
``evaluation.metrics.visual_grounding_eval``    ``torchvision.ops.boxes`` (box IoU)
``models.utils.box_utils``                      ``torchvision.ops.boxes`` (box IoU)
``datasets.transforms.formatting``              ``torchvision.transforms.functional``
``datasets.transforms.processing``              ``torchvision``, ``torchvision.transforms``
                                                (``dir()`` of it, ``RandomResizedCrop`` as a
                                                base class), ``.functional``,
                                                ``.transforms.InterpolationMode``
==============================================  =============================================

When torchvision cannot be imported (absent, or its compiled ops do not match torch), these
modules are provided, **only for the duration of the import**, as stand-ins: every lowercase
attribute is a function and every capitalised one a class, and calling the function,
instantiating the class or reading an attribute of the class raises
:class:`MissingTorchvisionError` naming the torchvision object (e.g.
``torchvision.transforms.functional.pil_to_tensor``). ``dir()`` of a stand-in is empty, so
mmpretrain registers no ``torchvision/*`` transforms. Afterwards ``torchvision`` is again absent
from ``sys.modules``: any later ``import torchvision`` (mmengine's environment report) fails or
succeeds exactly as it would have without mmlrf. With a working torchvision nothing is replaced.

Importing this module performs the import, so an mmpretrain config only needs
``custom_imports = dict(imports=['mmlrf.interop.mmpretrain_models'], allow_failed_imports=False)``
(``mmlrf``'s own import does not touch mmpretrain beyond its registry).
"""
from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager
from typing import Any, Iterator

#: Every torchvision module mmpretrain imports at import time (parents before children).
STAND_IN_MODULES: tuple[str, ...] = (
    'torchvision', 'torchvision.ops', 'torchvision.ops.boxes', 'torchvision.transforms',
    'torchvision.transforms.functional', 'torchvision.transforms.transforms')


class MissingTorchvisionError(RuntimeError):
    """A torchvision object was used, but torchvision is not usable on this machine."""


def _missing(qualname: str) -> MissingTorchvisionError:
    return MissingTorchvisionError(
        f'{qualname} was used, but torchvision is not usable here (mmlrf imported mmpretrain '
        'with a stand-in for it). Install a torchvision matching your torch to use the '
        'mmpretrain features that need it.')


class _MissingClassMeta(type):
    """Metaclass of stand-in classes: instantiating or reading an attribute raises."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith('__'):
            raise AttributeError(name)
        raise _missing(f'{cls.torchvision_name}.{name}')

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _missing(cls.torchvision_name)  # for a subclass: the torchvision base it needs


class _StandInModule(types.ModuleType):
    """A torchvision module whose attributes are stand-ins (see the module docstring)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__'):
            raise AttributeError(name)
        qualname = f'{self.__name__}.{name}'
        if name[:1].isupper():
            stand_in: Any = _MissingClassMeta(name, (), {'torchvision_name': qualname,
                                                         '__module__': self.__name__})
        else:
            def stand_in(*args: Any, **kwargs: Any) -> Any:
                raise _missing(qualname)

            stand_in.__name__ = stand_in.__qualname__ = name
        setattr(self, name, stand_in)  # the same object on every access
        return stand_in

    def __dir__(self) -> list:
        return []  # nothing to enumerate (mmpretrain registers ``dir(torchvision.transforms)``)


def torchvision_usable() -> bool:
    """Whether the torchvision modules mmpretrain imports can be imported.

    Leaves no partly imported ``torchvision`` in ``sys.modules`` when they cannot.
    """
    try:
        for name in STAND_IN_MODULES:
            importlib.import_module(name)
    except (ImportError, RuntimeError, OSError, AttributeError):
        for name in [n for n in sys.modules if n == 'torchvision' or n.startswith('torchvision.')]:
            del sys.modules[name]
        return False
    return True


@contextmanager
def torchvision_stand_in() -> Iterator[None]:
    """Install the stand-in modules in ``sys.modules`` for the duration of the block."""
    modules = {name: _StandInModule(name) for name in STAND_IN_MODULES}
    for name, module in modules.items():
        module.__path__ = []  # a package: submodules outside the list fail with their own name
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(modules[parent], child, module)
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in STAND_IN_MODULES:
            sys.modules.pop(name, None)


def _import_all() -> types.ModuleType:
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return sys.modules['mmpretrain.models']


def import_mmpretrain() -> types.ModuleType:
    """Import every package ``mmpretrain.utils.register_all_modules`` imports.

    Uses the torchvision stand-in only when torchvision is not usable (see the module docstring).

    Returns:
        ModuleType: ``mmpretrain.models``, with all mmpretrain classes registered in
        ``mmpretrain.registry``.
    """
    if torchvision_usable():
        return _import_all()
    with torchvision_stand_in():
        return _import_all()


import_mmpretrain()
