"""Backbones (registered in mmseg's and mmpretrain's ``MODELS``)."""
from .qkformer import QKFormer
from .sdt_v3 import SDTV3
from .spiking_attention import SpikingAttention
from .spikformer import Spikformer

__all__ = ['QKFormer', 'SDTV3', 'SpikingAttention', 'Spikformer']
