"""Token mixers: what a spiking attention block computes between its Q/K/V spikes and its
output projection (SSA variants, LRF-SSA, LRF-Dyn)."""
from .base import TokenMixer
from .causal_ssa import CausalSSA, causal_ssa_product
from .lrf_dyn import LRFDyn, set_dynamics_mode
from .lrf_ssa import LRFSSA, LRFBranch
from .qk_attention import QKTokenAttention
from .ssa import SSA, ssa_product

__all__ = ['TokenMixer', 'SSA', 'ssa_product', 'CausalSSA', 'causal_ssa_product',
           'QKTokenAttention', 'LRFBranch', 'LRFSSA', 'LRFDyn', 'set_dynamics_mode']
