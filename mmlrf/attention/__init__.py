"""Attention operators: the shared block, token mixers (SSA variants, LRF-SSA, LRF-Dyn) and the
dendritic dynamics operator."""
from .mixer import TokenMixer
from .spiking_attention import SpikingAttention
from .ssa import SSA, ssa_product

__all__ = ['TokenMixer', 'SpikingAttention', 'SSA', 'ssa_product']
