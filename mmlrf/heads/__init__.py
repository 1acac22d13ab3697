"""mmlrf.heads."""
from .spiking_fpn_head import SpikingFPNHead
from .spiking_fpn_neck import SpikingFPN

__all__ = ['SpikingFPN', 'SpikingFPNHead']
