"""The evaluation paths of the dendritic operator, one table with one signature.

Every backend is ``fn(u, modes, reverse, chunk_size) -> y`` with ``u`` and ``y`` ``[B, C, N]``
(``y`` in ``u``'s dtype), ``modes`` the operator of one direction (:class:`DiscreteModes`),
``reverse`` for the anti-causal direction (token N first) and ``chunk_size`` the longest chunk of
the chunked scans. All compute the same operator (the tests check each against the float64
:func:`~mmlrf.ops.dendritic.reference.fft_conv` over a grid of cases):

- ``'fft'``: causal convolution with the materialised ``[C, N]`` kernel, FFT of length 2N;
- ``'recurrent'``: token by token with a ``[B, C, k]`` state (slow in Python: the reference
  sequential path);
- ``'scan'``: chunked exact scan, all chunks at once (the fastest CPU path);
- ``'stream'``: the same chunks one after another with a ``[B, C, k]`` carried state (extra
  memory independent of N);
- ``'triton'``: the fused Triton kernels (CUDA only).

``'auto'`` (:func:`resolve_mode`) is ``'triton'`` for CUDA inputs where Triton works, else
``'scan'``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .reference import DiscreteModes, complex_dtype, fft_conv, recurrent_scan
from .scan import chunk_length, chunked_scan, streaming_scan
from .triton_ops import triton_available, triton_scan

Backend = Callable[[Tensor, DiscreteModes, bool, int], Tensor]


def cast_modes(modes: DiscreteModes, dtype: torch.dtype) -> DiscreteModes:
    """``modes`` in the real ``dtype`` (its complex counterpart for complex tensors)."""
    return DiscreteModes(*(t.to(complex_dtype(dtype) if t.is_complex() else dtype)
                           for t in modes[:3]))


def _pytorch(fn: Callable[[Tensor, DiscreteModes, int], Tensor]) -> Backend:
    """A PyTorch path as a backend: computes in ``u``'s dtype promoted to at least fp32 (also
    under autocast), runs the anti-causal direction on the reversed sequence."""

    def backend(u: Tensor, modes: DiscreteModes, reverse: bool, chunk_size: int) -> Tensor:
        dtype = torch.promote_types(u.dtype, torch.float32)
        modes = cast_modes(modes, dtype)
        seq = u.to(dtype).flip(-1) if reverse else u.to(dtype)
        with torch.autocast(u.device.type, enabled=False):
            y = fn(seq, modes, chunk_length(seq.shape[-1], chunk_size))
        return (y.flip(-1) if reverse else y).to(u.dtype)

    backend.__doc__ = fn.__doc__
    return backend


BACKENDS: dict[str, Backend] = {
    'fft': _pytorch(lambda u, modes, _: fft_conv(u, modes)),
    'recurrent': _pytorch(lambda u, modes, _: recurrent_scan(u, modes)),
    'scan': _pytorch(chunked_scan),
    'stream': _pytorch(streaming_scan),
    'triton': lambda u, modes, reverse, _: triton_scan(u, modes, reverse),
}
#: Every value of :attr:`DendriticDynamics.mode`.
DYNAMICS_MODES = (*BACKENDS, 'auto')


def resolve_mode(mode: str, x: Tensor) -> str:
    """The backend ``mode`` selects for input ``x`` (resolves ``'auto'``).

    Raises:
        ValueError: naming the allowed modes for an unknown one.
    """
    if mode not in DYNAMICS_MODES:
        raise ValueError(f'mode must be one of {DYNAMICS_MODES}, got {mode!r}')
    if mode != 'auto':
        return mode
    return 'triton' if x.is_cuda and triton_available() else 'scan'
