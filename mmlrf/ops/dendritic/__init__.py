"""The dendritic (multi-compartment) operator of LRF-Dyn.

:mod:`.reference` holds the maths (a leaf: torch only), :mod:`.scan` the chunked PyTorch scans,
:mod:`.triton_ops` and :mod:`.triton` the fused GPU kernels, :mod:`.backends` the table from
evaluation mode to function, and :mod:`.module` the ``DendriticDynamics`` module.
"""
from .backends import BACKENDS, DYNAMICS_MODES, resolve_mode
from .module import PARAMETERIZATIONS, DendriticDynamics
from .reference import LEAK_MIN, SCAN_ORDERS, DiscreteModes, scan_permutation

__all__ = ['BACKENDS', 'DYNAMICS_MODES', 'resolve_mode', 'PARAMETERIZATIONS',
           'DendriticDynamics', 'LEAK_MIN', 'SCAN_ORDERS', 'DiscreteModes', 'scan_permutation']
