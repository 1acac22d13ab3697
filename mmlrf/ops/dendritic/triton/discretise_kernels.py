"""Triton kernels of the fused discretisation of the 'pmsn' parameters (forward + backward).

Imported only where Triton is (:mod:`~mmlrf.ops.dendritic.triton_ops` launches them).

Per direction and channel (a row), from ``log_dt`` and per mode ``log_a_real``, ``a_imag`` and
the complex input and readout ``B``, ``C``, the same maths as
:func:`~mmlrf.ops.dendritic.reference.pmsn_discretisation`::

    λ_j = −exp(log_a_real_j) + i·a_imag_j,   Δ = exp(log_dt),   x_j = λ_j Δ = log ā_j
    φ_j = (e^{x_j} − 1)/λ_j,   w_j = C_j φ_j B_j,   K[m] = Re Σ_j w_j e^{m x_j}  (m < HEAD)

in float64 registers (``e^x − 1`` as ``expm1(Re x)·cos(Im x) − 2 sin²(Im x / 2) +
i·e^{Re x} sin(Im x)``, with ``expm1(a)`` as ``exp(a) − 1``), stored as fp32 (complex
interleaved) ``log ā``, ``w`` and the kernel head ``K``: one launch instead of the PyTorch
path's tens of ATen operators and autograd nodes. The backward is one more launch with the
chain rule written out, for a real loss with complex gradients ``G = ∂L/∂Re + i ∂L/∂Im`` (the
PyTorch convention; ``P = B C``)::

    G_λ = Δ G_x + conj(P (Δ ā − φ)/λ) G_w,      ∂Δ = Re(conj(G_x) λ) + Re(conj(G_w) P ā)
    ∂log_a_real = Re(λ)·Re(G_λ),   ∂a_imag = Im(G_λ),   ∂log_dt = Δ·∂Δ
    G_B = conj(φ C) G_w,   G_C = conj(φ B) G_w

``K`` is not differentiable (it is a function of ``log ā`` and ``w``, whose gradients the scan's
backward returns).
"""
import triton
import triton.language as tl

# Rows (direction × channel) per program; the modes are a runtime loop.
BLOCK_ROWS = 16


@triton.jit
def _cmul(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _cdiv(ar, ai, br, bi):
    norm = br * br + bi * bi
    return (ar * br + ai * bi) / norm, (ai * br - ar * bi) / norm


@triton.jit
def _load_complex(ptr, at, live):
    """Real and imaginary parts (float64) of interleaved complex entries ``at``."""
    return (tl.load(ptr + 2 * at, mask=live, other=0.0).to(tl.float64),
            tl.load(ptr + 2 * at + 1, mask=live, other=0.0).to(tl.float64))


@triton.jit
def _mode(log_a_real_ptr, a_imag_ptr, at, live, delta):
    """``(λ, x = λΔ, ā = e^x, φ = (ā − 1)/λ)`` of one mode per row, each a float64 pair."""
    lam_r = -tl.exp(tl.load(log_a_real_ptr + at, mask=live, other=0.0).to(tl.float64))
    lam_i = tl.load(a_imag_ptr + at, mask=live, other=0.0).to(tl.float64)
    x_r, x_i = lam_r * delta, lam_i * delta
    mag = tl.exp(x_r)
    cos, sin = tl.cos(x_i), tl.sin(x_i)
    half = tl.sin(x_i / 2)
    phi_r, phi_i = _cdiv((mag - 1.0) * cos - 2.0 * half * half, mag * sin, lam_r, lam_i)
    return lam_r, lam_i, x_r, x_i, mag * cos, mag * sin, phi_r, phi_i


@triton.jit
def pmsn_discretise_kernel(log_a_real_ptr, a_imag_ptr, b_ptr, c_ptr, log_dt_ptr, log_a_ptr,
                           w_ptr, kern_ptr, rows, num_modes, HEAD: tl.constexpr,
                           BLOCK_R: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = row < rows
    lags = tl.arange(0, HEAD).to(tl.float64)
    delta = tl.exp(tl.load(log_dt_ptr + row, mask=live, other=0.0).to(tl.float64))
    kern = tl.zeros([BLOCK_R, HEAD], dtype=tl.float64)
    for j in range(num_modes):
        at = row * num_modes + j
        _, _, x_r, x_i, _, _, phi_r, phi_i = _mode(log_a_real_ptr, a_imag_ptr, at, live, delta)
        b_r, b_i = _load_complex(b_ptr, at, live)
        c_r, c_i = _load_complex(c_ptr, at, live)
        p_r, p_i = _cmul(b_r, b_i, c_r, c_i)
        w_r, w_i = _cmul(phi_r, phi_i, p_r, p_i)
        tl.store(log_a_ptr + 2 * at, x_r.to(tl.float32), mask=live)
        tl.store(log_a_ptr + 2 * at + 1, x_i.to(tl.float32), mask=live)
        tl.store(w_ptr + 2 * at, w_r.to(tl.float32), mask=live)
        tl.store(w_ptr + 2 * at + 1, w_i.to(tl.float32), mask=live)
        mag = tl.exp(x_r[:, None] * lags[None, :])
        angle = x_i[:, None] * lags[None, :]
        kern += mag * (w_r[:, None] * tl.cos(angle) - w_i[:, None] * tl.sin(angle))
    tl.store(kern_ptr + row[:, None] * HEAD + tl.arange(0, HEAD)[None, :], kern.to(tl.float32),
             mask=live[:, None])


@triton.jit
def pmsn_discretise_grad_kernel(log_a_real_ptr, a_imag_ptr, b_ptr, c_ptr, log_dt_ptr, gx_ptr,
                                gw_ptr, g_log_a_real_ptr, g_a_imag_ptr, g_b_ptr, g_c_ptr,
                                g_log_dt_ptr, rows, num_modes, BLOCK_R: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = row < rows
    delta = tl.exp(tl.load(log_dt_ptr + row, mask=live, other=0.0).to(tl.float64))
    g_delta = tl.zeros([BLOCK_R], dtype=tl.float64)
    for j in range(num_modes):
        at = row * num_modes + j
        lam_r, lam_i, _, _, a_r, a_i, phi_r, phi_i = _mode(log_a_real_ptr, a_imag_ptr, at, live,
                                                           delta)
        b_r, b_i = _load_complex(b_ptr, at, live)
        c_r, c_i = _load_complex(c_ptr, at, live)
        gx_r, gx_i = _load_complex(gx_ptr, at, live)
        gw_r, gw_i = _load_complex(gw_ptr, at, live)
        p_r, p_i = _cmul(b_r, b_i, c_r, c_i)
        # dφ/dλ = (Δ ā − φ)/λ; G_λ = Δ G_x + conj(P dφ/dλ) G_w
        d_r, d_i = _cdiv(delta * a_r - phi_r, delta * a_i - phi_i, lam_r, lam_i)
        t_r, t_i = _cmul(p_r, p_i, d_r, d_i)
        s_r, s_i = _cmul(t_r, -t_i, gw_r, gw_i)
        gl_r, gl_i = delta * gx_r + s_r, delta * gx_i + s_i
        # ∂Δ = Re(conj(G_x) λ) + Re(conj(G_w) P ā)
        pa_r, pa_i = _cmul(p_r, p_i, a_r, a_i)
        g_delta += gx_r * lam_r + gx_i * lam_i + gw_r * pa_r + gw_i * pa_i
        tl.store(g_log_a_real_ptr + at, lam_r * gl_r, mask=live)
        tl.store(g_a_imag_ptr + at, gl_i, mask=live)
        # G_B = conj(φ C) G_w, G_C = conj(φ B) G_w
        q_r, q_i = _cmul(phi_r, phi_i, c_r, c_i)
        o_r, o_i = _cmul(q_r, -q_i, gw_r, gw_i)
        tl.store(g_b_ptr + 2 * at, o_r, mask=live)
        tl.store(g_b_ptr + 2 * at + 1, o_i, mask=live)
        q_r, q_i = _cmul(phi_r, phi_i, b_r, b_i)
        o_r, o_i = _cmul(q_r, -q_i, gw_r, gw_i)
        tl.store(g_c_ptr + 2 * at, o_r, mask=live)
        tl.store(g_c_ptr + 2 * at + 1, o_i, mask=live)
    tl.store(g_log_dt_ptr + row, g_delta * delta, mask=live)
