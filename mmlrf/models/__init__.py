"""mmlrf's models, registered in mmseg's (and, for backbones, mmpretrain's) ``MODELS``: neurons,
layers, token mixers, backbones, necks, decode heads and segmentors."""
from . import backbones, decode_heads, layers, mixers, necks, neurons, segmentors  # noqa: F401
