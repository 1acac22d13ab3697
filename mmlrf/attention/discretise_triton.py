"""Fused Triton discretisation of the modal dynamics parameters (forward + backward).

This module imports Triton at import time: never import it from code that must run without a
GPU (:mod:`mmlrf.attention.dynamics_triton` imports it lazily).

Per direction and channel (a row), from the raw modal parameters ``leak_raw``, ``b``, ``c``
(``[k]``) and ``dt_raw`` (scalar), the same maths as
:func:`~mmlrf.attention.dynamics.modal_discretisation`::

    λ_j = −(LEAK_MIN + softplus(leak_raw_j)),  Δ = exp(log dt_min + log(dt_max/dt_min)·σ(dt_raw))
    log ā_j = λ_j Δ,   w_j = expm1(λ_j Δ)/λ_j · b_j c_j,   K[m] = Σ_j w_j ā_j^m  (m < HEAD)

in float64 registers (``expm1`` as ``exp − 1``, relative error ~1e-16/|λΔ| with
``|λΔ| ≥ LEAK_MIN·dt_min``: 1e-11 at the default dt_min), stored as fp32 ``log ā``, ``w`` and
kernel head ``K``. That is one launch instead of the PyTorch path's ~25 ATen operators and
autograd nodes (~55 with the backward; on an H200 0.8–1.3 ms of host time per call and layer,
``bench_dynamics_gpu.py``). The backward is one more launch with the chain rule written out
(``φ_j = expm1(λ_j Δ)/λ_j``, ``x_j = λ_j Δ``)::

    ∂b_j = ∂w_j c_j φ_j,   ∂c_j = ∂w_j b_j φ_j,   g_j = ∂w_j b_j c_j
    ∂λ_j = ∂log ā_j Δ + g_j (Δ e^{x_j} − φ_j)/λ_j,   ∂Δ = Σ_j ∂log ā_j λ_j + g_j e^{x_j}
    ∂leak_raw_j = −∂λ_j σ(leak_raw_j),   ∂dt_raw = ∂Δ · Δ log(dt_max/dt_min) σ(1 − σ)

``K`` is not differentiable (it is a function of ``log ā`` and ``w``, whose gradients the scan's
backward returns).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl
from torch import Tensor

# Rows (direction × channel) per program; the modes are a runtime loop.
BLOCK_ROWS = 16


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _f64(head, tail):
    """A float64 constant passed as two fp32 kernel arguments (:func:`_split`)."""
    return tl.cast(head, tl.float64) + tl.cast(tail, tl.float64)


@triton.jit
def _step_size(dt_raw, log_dt_min, log_dt_range):
    """``(Δ, σ(dt_raw))`` of each row in float64 (arguments float64)."""
    sig = _sigmoid(dt_raw)
    return tl.exp(log_dt_min + log_dt_range * sig), sig


@triton.jit
def _modes(leak, delta, leak_min):
    """``(λ, x = λΔ, e^x, φ = expm1(x)/λ)`` of one mode per row in float64 (arguments
    float64)."""
    softplus = tl.maximum(leak, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(leak)))
    lam = -(leak_min + softplus)
    x = lam * delta
    ex = tl.exp(x)
    return lam, x, ex, (ex - 1.0) / lam


@triton.jit
def discretise_kernel(leak_ptr, dt_ptr, b_ptr, c_ptr, log_a_ptr, w_ptr, kern_ptr, rows,
                      num_modes, leak_min0, leak_min1, log_dt_min0, log_dt_min1, log_dt_range0,
                      log_dt_range1, HEAD: tl.constexpr, BLOCK_R: tl.constexpr):
    leak_min, log_dt_min = _f64(leak_min0, leak_min1), _f64(log_dt_min0, log_dt_min1)
    log_dt_range = _f64(log_dt_range0, log_dt_range1)
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = row < rows
    lags = tl.arange(0, HEAD).to(tl.float64)
    dt_raw = tl.load(dt_ptr + row, mask=live, other=0.0).to(tl.float64)
    delta, _ = _step_size(dt_raw, log_dt_min, log_dt_range)
    kern = tl.zeros([BLOCK_R, HEAD], dtype=tl.float64)
    for j in range(num_modes):
        at = row * num_modes + j
        leak = tl.load(leak_ptr + at, mask=live, other=0.0).to(tl.float64)
        b = tl.load(b_ptr + at, mask=live, other=0.0).to(tl.float64)
        c = tl.load(c_ptr + at, mask=live, other=0.0).to(tl.float64)
        lam, x, ex, phi = _modes(leak, delta, leak_min)
        w = phi * b * c
        tl.store(log_a_ptr + at, x.to(tl.float32), mask=live)
        tl.store(w_ptr + at, w.to(tl.float32), mask=live)
        kern += w[:, None] * tl.exp(x[:, None] * lags[None, :])
    tl.store(kern_ptr + row[:, None] * HEAD + tl.arange(0, HEAD)[None, :], kern.to(tl.float32),
             mask=live[:, None])


@triton.jit
def discretise_grad_kernel(leak_ptr, dt_ptr, b_ptr, c_ptr, gl_ptr, gw_ptr, g_leak_ptr, g_dt_ptr,
                           g_b_ptr, g_c_ptr, rows, num_modes, leak_min0, leak_min1, log_dt_min0,
                           log_dt_min1, log_dt_range0, log_dt_range1, BLOCK_R: tl.constexpr):
    leak_min, log_dt_min = _f64(leak_min0, leak_min1), _f64(log_dt_min0, log_dt_min1)
    log_dt_range = _f64(log_dt_range0, log_dt_range1)
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = row < rows
    dt_raw = tl.load(dt_ptr + row, mask=live, other=0.0).to(tl.float64)
    delta, sig = _step_size(dt_raw, log_dt_min, log_dt_range)
    g_delta = tl.zeros([BLOCK_R], dtype=tl.float64)
    for j in range(num_modes):
        at = row * num_modes + j
        leak = tl.load(leak_ptr + at, mask=live, other=0.0).to(tl.float64)
        b = tl.load(b_ptr + at, mask=live, other=0.0).to(tl.float64)
        c = tl.load(c_ptr + at, mask=live, other=0.0).to(tl.float64)
        g_log_a = tl.load(gl_ptr + at, mask=live, other=0.0).to(tl.float64)
        g_w = tl.load(gw_ptr + at, mask=live, other=0.0).to(tl.float64)
        lam, x, ex, phi = _modes(leak, delta, leak_min)
        g_phi = g_w * b * c
        g_lam = g_log_a * delta + g_phi * (delta * ex - phi) / lam
        g_delta += g_log_a * lam + g_phi * ex
        tl.store(g_leak_ptr + at, -g_lam * _sigmoid(leak), mask=live)
        tl.store(g_b_ptr + at, g_w * c * phi, mask=live)
        tl.store(g_c_ptr + at, g_w * b * phi, mask=live)
    tl.store(g_dt_ptr + row, g_delta * delta * log_dt_range * sig * (1.0 - sig), mask=live)


def _split(x: float) -> tuple[float, float]:
    """``x`` as an fp32 head and the rest: a compiled kernel receives Python floats as fp32, and
    :func:`_f64` adds the two back in float64 (about 1e-15 relative)."""
    head = float(np.float32(x))
    return head, x - head


def _scalars(leak_raw: Tensor, dt_min: float, dt_max: float) -> tuple:
    """Kernel arguments shared by both launches: grid, rows, modes and the float64 constants
    ``LEAK_MIN``, ``log dt_min``, ``log(dt_max/dt_min)``, each split by :func:`_split`."""
    from .dynamics import LEAK_MIN
    rows, k = leak_raw.shape[:-1].numel(), leak_raw.shape[-1]
    constants = (LEAK_MIN, math.log(dt_min), math.log(dt_max) - math.log(dt_min))
    return ((triton.cdiv(rows, BLOCK_ROWS),), rows, k,
            *(part for value in constants for part in _split(value)))


class _ModalDiscretisation(torch.autograd.Function):
    """``(leak_raw, dt_raw, b, c) → (log ā, w, K)``, see the module docstring."""

    @staticmethod
    def forward(ctx, leak_raw: Tensor, dt_raw: Tensor, b: Tensor, c: Tensor, dt_min: float,
                dt_max: float, head: int) -> tuple[Tensor, Tensor, Tensor]:
        grid, *scalars = _scalars(leak_raw, dt_min, dt_max)
        log_a = torch.empty(leak_raw.shape, device=leak_raw.device, dtype=torch.float32)
        w = torch.empty_like(log_a)
        kern = log_a.new_empty(*leak_raw.shape[:-1], head)
        discretise_kernel[grid](leak_raw, dt_raw, b, c, log_a, w, kern, *scalars, HEAD=head,
                                BLOCK_R=BLOCK_ROWS)
        ctx.save_for_backward(leak_raw, dt_raw, b, c)
        ctx.launch = (grid, *scalars)  # the backward launch takes the same grid and scalars
        ctx.mark_non_differentiable(kern)
        ctx.set_materialize_grads(False)  # no zero gradient is launched for K
        return log_a, w, kern

    @staticmethod
    def backward(ctx, grad_log_a: Tensor | None, grad_w: Tensor | None, _grad_kern: None):
        leak_raw, dt_raw, b, c = ctx.saved_tensors
        grid, *scalars = ctx.launch
        upstream = [torch.zeros(leak_raw.shape, device=leak_raw.device) if g is None
                    else g.contiguous() for g in (grad_log_a, grad_w)]
        grads = [torch.empty_like(t) for t in (leak_raw, dt_raw, b, c)]
        discretise_grad_kernel[grid](leak_raw, dt_raw, b, c, *upstream, *grads, *scalars,
                                     BLOCK_R=BLOCK_ROWS)
        return (*grads, None, None, None)


@torch.compiler.disable  # opaque to torch.compile, like the scan kernels
def discretise(leak_raw: Tensor, dt_raw: Tensor, b: Tensor, c: Tensor, dt_min: float,
               dt_max: float, head: int) -> tuple[Tensor, Tensor, Tensor]:
    """Modal discretisation for the Triton scan in one launch (differentiable, float64 maths).

    Args:
        leak_raw, b, c (Tensor): ``[D, C, k]`` raw modal parameters (CUDA).
        dt_raw (Tensor): ``[D, C]``.
        dt_min, dt_max (float): the step-size range.
        head (int): lags of the kernel head (a power of two).

    Returns:
        tuple[Tensor, Tensor, Tensor]: fp32 ``log ā`` and ``w`` ``[D, C, k]`` and the kernel head
        ``[D, C, head]`` (not differentiable).
    """
    return _ModalDiscretisation.apply(leak_raw.contiguous(), dt_raw.contiguous(), b.contiguous(),
                                      c.contiguous(), dt_min, dt_max, head)
