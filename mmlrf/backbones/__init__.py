"""mmlrf.backbones."""
from .sdt_v3 import SDTV3

__all__ = ['SDTV3']
from .spikformer import Spikformer  # noqa: F401
from .qkformer import QKFormer  # noqa: F401
