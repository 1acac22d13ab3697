"""Layers shared by mixers, backbones, necks and heads."""
from .conv_bn import DEFAULT_NORM_CFG, ConvBN, build_norm, conv_norm, seq_apply
from .drop_path import drop_path
from .heads import merge_heads, split_heads
from .routed_conv import RoutedConv2d

__all__ = ['DEFAULT_NORM_CFG', 'ConvBN', 'build_norm', 'conv_norm', 'seq_apply', 'drop_path',
           'merge_heads', 'split_heads', 'RoutedConv2d']
