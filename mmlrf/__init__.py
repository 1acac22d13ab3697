"""mmlrf: spiking transformers with LRF-SSA and LRF-Dyn attention for OpenMMLab.

Importing the package makes mmseg importable with mmcv-lite (see :mod:`mmlrf.compat`) and
registers every mmlrf component in mmseg's (and, for backbones, mmpretrain's) registries.
"""
from . import compat

compat.apply()

# Registration side effects, in dependency order.
from . import interop, models, engine, datasets  # noqa: E402,F401

from .interop import cpu_dist  # noqa: E402

cpu_dist.apply()  # multi-process training on CPU-only torch (no-op with CUDA)

__version__ = '0.1.0'
