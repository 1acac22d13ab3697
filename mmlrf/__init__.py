"""mmlrf: spiking transformers with LRF-SSA and LRF-Dyn attention for OpenMMLab.

Importing the package makes mmseg importable with mmcv-lite (see :mod:`mmlrf.compat`) and
registers every mmlrf component in mmseg's (and, for backbones, mmpretrain's) registries.
"""
from . import compat

compat.apply()

# Registration side effects, in dependency order.
from . import neurons, attention, backbones, heads, hooks, datasets  # noqa: E402,F401

__version__ = '0.1.0'
