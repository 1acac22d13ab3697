"""Triton kernels of the fused discretisation of the 'modal' parameters (forward + backward).

Imported only where Triton is (:mod:`~mmlrf.ops.dendritic.triton_ops` launches them).

Per direction and channel (a row), from the raw modal parameters ``leak_raw``, ``b``, ``c``
(``[k]``) and ``dt_raw`` (scalar), the same maths as
:func:`~mmlrf.ops.dendritic.reference.modal_discretisation`::

    λ_j = −(LEAK_MIN + softplus(leak_raw_j)),  Δ = exp(log dt_min + log(dt_max/dt_min)·σ(dt_raw))
    log ā_j = λ_j Δ,   w_j = expm1(λ_j Δ)/λ_j · b_j c_j,   K[m] = Σ_j w_j ā_j^m  (m < HEAD)

in float64 registers (``expm1`` as ``exp − 1``, relative error ~1e-16/|λΔ| with
``|λΔ| ≥ LEAK_MIN·dt_min``), stored as fp32 ``log ā``, ``w`` and kernel head ``K``: one
launch instead of the PyTorch path's tens of ATen operators and autograd nodes. The backward
is one more launch with the chain rule written out
(``φ_j = expm1(λ_j Δ)/λ_j``, ``x_j = λ_j Δ``)::

    ∂b_j = ∂w_j c_j φ_j,   ∂c_j = ∂w_j b_j φ_j,   g_j = ∂w_j b_j c_j
    ∂λ_j = ∂log ā_j Δ + g_j (Δ e^{x_j} − φ_j)/λ_j,   ∂Δ = Σ_j ∂log ā_j λ_j + g_j e^{x_j}
    ∂leak_raw_j = −∂λ_j σ(leak_raw_j),   ∂dt_raw = ∂Δ · Δ log(dt_max/dt_min) σ(1 − σ)

``K`` is not differentiable (it is a function of ``log ā`` and ``w``, whose gradients the scan's
backward returns).
"""
import triton
import triton.language as tl

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


