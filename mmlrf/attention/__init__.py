"""Attention operators: the shared block, token mixers (SSA variants, LRF-SSA, LRF-Dyn) and the
dendritic dynamics operator."""
from .causal_ssa import CausalSSA, causal_ssa_product
from .dynamics import DendriticDynamics
from .lrf import LRFSSA, LRFBranch
from .lrf_dyn import LRFDyn, set_dynamics_mode
from .mixer import TokenMixer
from .qk_attention import QKTokenAttention
from .spiking_attention import SpikingAttention
from .ssa import SSA, ssa_product

__all__ = ['TokenMixer', 'SpikingAttention', 'SSA', 'ssa_product', 'CausalSSA',
           'causal_ssa_product', 'QKTokenAttention', 'LRFBranch', 'LRFSSA', 'DendriticDynamics',
           'LRFDyn', 'set_dynamics_mode']
