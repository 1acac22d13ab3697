"""Inference over row strips: local layers ('same' convolutions, per-channel BN, neurons) run on
a few rows at a time, so that a map they would make whole never exists whole."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils import check_positive_int, writable

#: Row strips per map (each holds ``1 / STRIPS`` of the map's rows).
STRIPS = 8
#: Maps smaller than this run whole (a conv block counts its wider hidden map): their strips
#: would save little memory and cost calls and halo rows (docs/benchmarks.md).
MIN_STRIP_BYTES = 4 << 20


def keeps_shape(conv: nn.Conv2d) -> bool:
    """True for a conv whose output has its input's height and width: stride 1 and zero 'same'
    padding (``dilation * (kernel // 2)`` with an odd kernel)."""
    if not isinstance(conv.padding, tuple) or conv.padding_mode != 'zeros':
        return False
    return conv.stride == (1, 1) and all(
        k % 2 == 1 and p == d * (k // 2)
        for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation))


def strips_allowed(x: Tensor, convs: tuple[nn.Conv2d, ...], norms: tuple[nn.Module, ...]) -> bool:
    """Whether ``x`` ``[..., C, H, W]`` may be computed on over strips and written to: autograd
    off, outside ``torch.compile``, a writable ``x``, ``convs`` that
    :func:`keeps_shape` and per-channel affine ``norms`` (eval-mode BatchNorms, or ``Identity``
    after folding), and a largest map (``x``, or the widest conv output) of at least
    :data:`MIN_STRIP_BYTES`."""
    affine = all(isinstance(n, nn.Identity) or (isinstance(n, _BatchNorm) and not n.training)
                 for n in norms)
    widest = max((x.shape[-3], *(c.out_channels for c in convs)))
    big = x.nbytes * widest >= MIN_STRIP_BYTES * max(x.shape[-3], 1)
    return (not torch.is_grad_enabled() and not torch.compiler.is_compiling() and affine and big
            and all(keeps_shape(c) for c in convs) and writable(x))


def row_strips(fn: Callable[[Tensor], Tensor], x: Tensor, halo: int,
               strips: int = STRIPS) -> Iterator[tuple[int, int, Tensor]]:
    """``fn(x)`` in row strips, top to bottom: yields ``(top, bottom, fn(x)[..., top:bottom, :])``.

    Each strip applies ``fn`` to its rows plus ``halo`` rows above and below (where they exist)
    and keeps its own rows. This is exact when ``fn`` is row-local with reach ``halo``: a stack
    of 'same' convolutions (:func:`keeps_shape`, reach the sum of their paddings), per-element
    neurons and per-channel affine maps. A strip is never shorter than ``halo`` rows, so a
    consumer that writes a strip's result over ``x`` one strip late overwrites no row that
    is still to be read.

    Args:
        fn (Callable): a row-local map ``[..., H, W]`` → ``[..., H, W']``.
        x (Tensor): ``[..., H, W]``.
        halo (int): ``fn``'s reach in rows.
        strips (int): strips per map.

    Raises:
        ValueError: ``strips`` is not a positive integer.
    """
    check_positive_int(strips, 'strips')
    height = x.shape[-2]
    rows = max(-(-height // strips), halo, 1)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        start = max(top - halo, 0)
        yield top, bottom, fn(x[..., start:min(bottom + halo, height), :])[
            ..., top - start:bottom - start, :]


def add_over_strips(x: Tensor, fn: Callable[[Tensor], Tensor], spikes: Tensor,
                    halo: int) -> Tensor:
    """``x += fn(spikes)`` computed in :func:`row_strips` (``fn`` row-local with reach ``halo``),
    each strip added into ``x`` in place: ``fn``'s intermediate maps never exist whole.
    ``x`` ``[..., H, W]`` must be a temporary nothing else reads (checked by the caller with
    :func:`strips_allowed`). Returns ``x``."""
    for top, bottom, y in row_strips(fn, spikes, halo):
        x[..., top:bottom, :] += y
    return x


def conv_bn_over_input(conv: nn.Conv2d, bn: nn.Module, x: Tensor, strips: int = STRIPS) -> Tensor:
    """``bn(conv(x))`` for a temporary ``x`` ``[B, C, H, W]``, stored in ``x``'s memory.

    When :func:`strips_allowed` and the conv has as many outputs as inputs, the rows are
    computed in :func:`row_strips`, and each strip's result is written over its rows once the
    next strip has read them. So the call needs about two strips of extra memory instead of a
    whole output map (plus the conv's workspace for one strip). Otherwise ``bn(conv(x))`` as
    usual. The values equal the whole-map computation's up to the conv algorithm's rounding
    (bit for bit with the CPU's oneDNN in the tests).

    Raises:
        ValueError: ``strips`` is not a positive integer.

    Returns:
        Tensor: ``[B, C, H, W]``: ``x``'s memory, overwritten (:func:`memory_of` ``x``), or a
        new map.
    """
    check_positive_int(strips, 'strips')
    if conv.in_channels != conv.out_channels or not strips_allowed(x, (conv,), (bn,)):
        return bn(conv(x))
    pending = None  # (first row, values) of the strip above, not yet written
    for top, _, values in row_strips(lambda t: bn(conv(t)), x, conv.padding[0], strips):
        if pending is not None:
            x[..., pending[0]:top, :].copy_(pending[1])
        pending = (top, values)
    x[..., pending[0]:, :].copy_(pending[1])
    return memory_of(x)


def batch_norm_in_place(bn: nn.Module, y: Tensor, strips: int = STRIPS) -> Tensor:
    """``bn(y)`` for a temporary ``y`` ``[B, C, H, W]`` (a conv's output), written over ``y``.

    When :func:`strips_allowed` (``bn`` per-channel affine), the rows are normalised in
    :func:`row_strips`, each strip written back at once: about two strips of extra memory
    instead of a second whole map. Each strip is first copied out contiguous in ``y``'s layout,
    so the BN runs the kernel it runs on the whole map: the values are equal bit for bit (on
    the CPU in the tests). Otherwise ``bn(y)`` as usual; ``Identity`` (a folded BN) returns ``y``.

    Raises:
        ValueError: ``strips`` is not a positive integer.

    Returns:
        Tensor: ``[B, C, H, W]``: ``y``, overwritten, or a new map.
    """
    check_positive_int(strips, 'strips')
    if isinstance(bn, nn.Identity) or not strips_allowed(y, (), (bn,)):
        return bn(y)
    layout = torch.channels_last if not y.is_contiguous() and \
        y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    for top, bottom, values in row_strips(lambda t: bn(t.contiguous(memory_format=layout)), y, 0,
                                          strips):
        y[..., top:bottom, :].copy_(values)
    return y


def memory_of(x: Tensor) -> Tensor:
    """A tensor over ``x``'s memory with its shape and strides that is not a view of ``x``:
    emptying it (``set_()``) frees the memory once ``x`` is gone. (Emptying a view does not:
    its base tensor, which holds the memory, stays alive as long as the view.)"""
    return x.new_empty(0).set_(x.untyped_storage(), x.storage_offset(), x.shape, x.stride())
