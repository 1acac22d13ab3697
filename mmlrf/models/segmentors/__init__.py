"""Segmentors."""
from .lean_encoder_decoder import LeanEncoderDecoder

__all__ = ['LeanEncoderDecoder']
