"""Chunked exact scans of the diagonalised dendritic operator (pure PyTorch, the CPU fast paths).

The modal system ``h_{n,j} = ā_j h_{n−1,j} + u_n``, ``y_n = Re Σ_j w_j h_{n,j} + d u_n`` (see
:mod:`~mmlrf.ops.dendritic.reference`; complex ā, w and h for complex modes) is evaluated over
chunks of L tokens:

- inside a chunk: ``y = T u`` with the L×L lower-triangular Toeplitz matrix ``T[t, s] = K[t−s]``,
  ``K[m] = Re Σ_j w_j ā_j^m`` (one real ``[C, L, L]`` matrix shared by all chunks);
- from the state entering the chunk: ``y_t += Re Σ_j w_j ā_j^{t+1} h_j``;
- state update across a chunk: ``h ← ā^L h + Σ_s ā^{L−1−s} u_s``.

All powers are ``exp(m log ā)`` with m ≥ 0 and Re log ā ≤ 0, so nothing can overflow, and no
``[C, k, N]`` kernel is ever built. Complex modes cost two real products where real ones cost
one, and only on the ``k``-column state path (:func:`inject`, :func:`read_out`). Two
schedules:

- :func:`chunked_scan` (mode ``'scan'``): all chunks at once (three batched matmuls), only the
  cheap ``[B, C, k]`` state carry loops over the N/L chunks. Fastest; extra memory about one
  output-sized buffer plus ``[B, C, N/L, k]`` chunk states; for backward it keeps only its
  input and parameters.
- :func:`streaming_scan` (mode ``'stream'``): chunk after chunk, carrying only the ``[B, C, k]``
  state; extra memory beyond input and output is O(C·k + C·L²) (state and chunk operators) plus
  one chunk of activations, independent of N.

The operator picks L with :func:`chunk_length`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import DiscreteModes


def chunk_length(n: int, chunk_size: int) -> int:
    """The chunk length L for sequences of ``n`` tokens: the largest power of two whose square
    is at most ``n``, and at most ``chunk_size``. The ``[C, L, L]`` chunk operator is then never
    larger than one ``[C, N]`` sequence, and the Toeplitz product's work, C·N·L, stays low
    (short chunks are the fastest on the CPU, docs/benchmarks.md)."""
    return min(chunk_size, 1 << (math.isqrt(max(n, 1)).bit_length() - 1))


def causal_toeplitz(kernel: Tensor) -> Tensor:
    """The transposed causal Toeplitz matrices of kernels: ``[..., L]`` → ``[..., L(s), L(t)]``
    holding ``K[t−s]`` for t ≥ s, else 0.

    Eager: a view (``unfold`` of the zero-padded kernel, rows flipped). Under ``torch.compile``
    the same values come from a periodic buffer instead: the zero-padded kernel
    ``[0]*(L−1) ++ K ++ [0]`` (period 2L) repeated L times and read in rows of stride 2L−1, so
    that each row shifts by one lag. Its backward is slices and a sum; ``unfold``'s is a
    scatter-add, which inductor's CPU code (torch 2.13) can write out of bounds when it fuses
    it into a transposed tile. Eager keeps the view: the buffer is twice the matrix.
    """
    length = kernel.shape[-1]
    if not torch.compiler.is_compiling():
        # windows[i, t] = [0]*(L−1) ++ K at i + t; row i = L−1−s holds K[t − s] (0 for t < s)
        return F.pad(kernel, (length - 1, 0)).unfold(-1, length, 1).flip(-2)
    period = F.pad(kernel, (length - 1, 1))                        # [..., 2L]
    # flat[L−1 + s(2L−1) + t] = period[(L−1 + t − s) mod 2L], and 0 ≤ L−1 + t − s < 2L
    flat = period.unsqueeze(-2).expand(*period.shape[:-1], length, 2 * length).flatten(-2)
    rows = flat[..., length - 1:length - 1 + length * (2 * length - 1)]
    return rows.unflatten(-1, (length, 2 * length - 1))[..., :length]


def inject(x: Tensor, operator: Tensor) -> Tensor:
    """``x @ operator`` of a real ``x`` ``[..., L]`` and a real or complex ``operator``
    (``[C, L, k]``); a complex one as one real product with its real and imaginary columns."""
    if not operator.is_complex():
        return torch.matmul(x, operator)
    both = torch.matmul(x, torch.cat((operator.real, operator.imag), -1))
    return torch.complex(*both.chunk(2, -1))


def read_out(states: Tensor, readout: Tensor) -> Tensor:
    """``Re(states @ readout)`` (``[..., k]`` by ``[C, k, L]``); complex operands as one real
    product of ``[Re, Im]`` with ``[Re; −Im]``."""
    if not states.is_complex():
        return torch.matmul(states, readout)
    return torch.matmul(torch.cat((states.real, states.imag), -1),
                        torch.cat((readout.real, -readout.imag), -2))


def chunk_operators(log_a: Tensor, w: Tensor,
                    length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Matrices shared by all chunks of length L.

    Args:
        log_a (Tensor): ``[C, k]`` log modal decays (real part ≤ 0), real or complex.
        w (Tensor): ``[C, k]`` modal weights.
        length (int): L.

    Returns:
        tuple[Tensor, Tensor, Tensor, Tensor]: ``toeplitz_t`` ``[C, L(s), L(t)]`` = ``K[t−s]``
        for t ≥ s else 0 (real); ``readout`` ``[C, k, L]`` = ``w_j ā_j^{t+1}``; ``inject``
        ``[C, L, k]`` = ``ā_j^{L−1−s}``; ``chunk_decay`` ``[C, k]`` = ``ā_j^L``.
    """
    steps = torch.arange(length, device=log_a.device, dtype=log_a.real.dtype)
    decay = torch.exp(log_a[..., None] * steps)                    # [C, k, L]  ā^m
    kernel = (w[..., None] * decay).sum(1)                         # [C, L]
    toeplitz_t = causal_toeplitz(kernel.real if kernel.is_complex() else kernel)
    readout = w[..., None] * decay * torch.exp(log_a)[..., None]
    inject = decay.flip(-1).transpose(1, 2)
    return toeplitz_t, readout, inject, torch.exp(log_a * length)


def exclusive_chunk_scan(ends: Tensor, decay: Tensor) -> Tensor:
    """States entering each chunk: ``out[i] = Σ_{i' < i} decay^{i−1−i'} ends[i']`` along dim 2.

    A loop over the nc chunks on ``[B, C, k]`` states, collected in a list and stacked once:
    writing each state into a slice of a preallocated tensor would make autograd copy the whole
    ``[B, C, nc, k]`` gradient once per chunk.

    Args:
        ends (Tensor): ``[B, C, nc, k]`` state each chunk builds from zero.
        decay (Tensor): ``[C, k]`` decay across one chunk, ``ā^L``.

    Returns:
        Tensor: ``[B, C, nc, k]``.
    """
    states = [torch.zeros_like(ends[:, :, 0])]
    for end in ends.unbind(2)[:-1]:
        states.append(states[-1] * decay + end)
    return torch.stack(states, 2)


def _chunk_products(chunks: Tensor, log_a: Tensor, w: Tensor, length: int) -> Tensor:
    """``[B, C, nc, L]`` chunks → their dynamics output without the skip, ``[B, C, nc, L]``."""
    toeplitz_t, readout, injection, chunk_decay = chunk_operators(log_a, w, length)
    y = torch.matmul(chunks, toeplitz_t)
    entering = exclusive_chunk_scan(inject(chunks, injection), chunk_decay)
    return y.add_(read_out(entering, readout))


class _ChunkedScan(torch.autograd.Function):
    """:func:`_chunk_products` saving only its inputs (the chunks, usually a view of the
    sequence, and the ``[C, k]`` parameters) for backward.

    Autograd would keep the chunk operators (``[C, L, L]`` Toeplitz and three ``[C, k, L]``
    tensors per layer, whatever the batch). Backward rebuilds
    them from ``(log ā, w)`` instead, with the cheap state path (``k`` ≪ ``L`` columns), and
    never recomputes the ``[B, C, nc, L] × [C, L, L]`` product itself.
    """

    @staticmethod
    def forward(ctx, chunks: Tensor, log_a: Tensor, w: Tensor, length: int) -> Tensor:
        ctx.save_for_backward(chunks, log_a, w)
        ctx.length = length
        return _chunk_products(chunks, log_a, w, length)

    @staticmethod
    def backward(ctx, grad: Tensor):
        chunks, log_a, w = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (chunks, log_a, w)]
            toeplitz_t, readout, injection, chunk_decay = chunk_operators(*leaves[1:],
                                                                          ctx.length)
            carried = read_out(exclusive_chunk_scan(inject(leaves[0], injection), chunk_decay),
                               readout)
        # y = chunks @ T + carried: T's gradient by hand, the rest through the rebuilt graph
        g_toeplitz = torch.einsum('bcns,bcnt->cst', chunks, grad)
        # (a single chunk carries no state in: the chunks then only reach y through T)
        g_carried, g_log_a, g_w = torch.autograd.grad((carried, toeplitz_t), leaves,
                                                      (grad, g_toeplitz), allow_unused=True)
        g_chunks = torch.matmul(grad, toeplitz_t.detach().transpose(-1, -2))
        if g_carried is not None:
            g_chunks += g_carried
        return g_chunks, g_log_a, g_w, None


def chunked_scan(u: Tensor, modes: DiscreteModes, chunk_size: int = 32) -> Tensor:
    """Causal dendritic operator over ``[B, C, N]``, all chunks in parallel (exact,
    differentiable).

    For backward it keeps only ``u`` (no copy when L divides N) and the ``[C, k]`` parameters
    (:class:`_ChunkedScan`).

    Args:
        u (Tensor): ``[B, C, N]`` input sequence.
        modes (DiscreteModes): the operator, in ``u``'s dtype.
        chunk_size (int): chunk length L.

    Returns:
        Tensor: ``[B, C, N]``, the causal convolution with ``K`` plus ``d u``.
    """
    log_a, w, d = modes.log_a, modes.w, modes.d
    bsz, ch, n = u.shape
    length = min(chunk_size, n)
    num_chunks = -(-n // length)
    padded = u if num_chunks * length == n else F.pad(u, (0, num_chunks * length - n))
    chunks = padded.reshape(bsz, ch, num_chunks, length)
    y = (_chunk_products(chunks, log_a, w, length) if torch.compiler.is_compiling()
         else _ChunkedScan.apply(chunks, log_a, w, length))
    return y.reshape(bsz, ch, num_chunks * length)[..., :n].addcmul_(u, d[:, None])


def streaming_scan(u: Tensor, modes: DiscreteModes, chunk_size: int = 32) -> Tensor:
    """Causal dendritic operator chunk after chunk with a ``[B, C, k]`` carried state.

    Same arguments, result and exactness as :func:`chunked_scan`; extra memory is independent of N.
    """
    log_a, w, d = modes.log_a, modes.w, modes.d
    bsz, ch, n = u.shape
    length = min(chunk_size, n)
    toeplitz_t, readout, injection, chunk_decay = chunk_operators(log_a, w, length)
    u_t = u.transpose(0, 1)                                        # [C, B, N] view
    state = u.new_zeros(ch, bsz, log_a.shape[-1], dtype=log_a.dtype)
    out = u.new_empty(bsz, ch, n)
    for start in range(0, n, length):
        stop = min(start + length, n)
        size = stop - start
        chunk = u_t[:, :, start:stop]
        y = torch.baddbmm(chunk * d[:, None, None], chunk, toeplitz_t[:, :size, :size])
        if start:
            y += read_out(state, readout[:, :, :size])
        out[:, :, start:stop] = y.transpose(0, 1)
        if stop < n:
            state = state * chunk_decay[:, None, :] + inject(chunk, injection)
    return out
