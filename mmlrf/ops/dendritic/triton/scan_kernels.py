"""Triton kernels of the dendritic scan, launched by :mod:`~mmlrf.ops.dendritic.triton_ops`.

Imported only where Triton is. The maths and the backward formulas are documented in
:mod:`~mmlrf.ops.dendritic.triton_ops`.

Forward (:data:`forward_kernel`), a chunked scan on tensor cores (autotuned over
:data:`FP32_CONFIGS` / :data:`LOWP_CONFIGS` by the wrapper). One program owns one
``(image, channel)`` sequence (grid ``B·C``) and walks it in groups of ``BLOCK_M`` chunks of
``CHUNK`` tokens; a group is one contiguous ``[BLOCK_M, CHUNK]`` tile of the sequence (coalesced
loads along the token axis), row i = chunk i. With the unit-input modal state
``h_t = ā h_{t−1} + u_t`` and ``K[m] = Σ_j w_j ā_j^m``:

- intra-chunk: ``Y = U·T`` with the ``[CHUNK, CHUNK]`` Toeplitz ``T[s, t] = K[t−s]`` (t ≥ s) of
  the channel (all k modes folded in, so this costs CHUNK MACs per token whatever k is);
- chunk-local end states of the *previous* chunk of every row: ``S = U_prev·inject``,
  ``inject[s, j] = ā_j^{CHUNK−1−s}`` (``U_prev`` = the same tile shifted back by one chunk,
  served by the cache);
- states entering each chunk: a ``tl.associative_scan`` over the BLOCK_M rows with decay
  ``ā^CHUNK`` plus ``(ā^CHUNK)^{i+1}·carry``, where ``carry`` (``[K]`` fp32, the only
  loop-carried value) is the state entering the chunk before the group;
- readout of the entering states: ``Y += E·R``, ``R[j, t] = w_j ā_j^{t+1}``; plus ``d·u``.

All powers are ``exp(m·log ā)`` with m ≥ 0, so nothing overflows. HBM traffic is one read of
``u`` and one write of ``y``. The dot precision is a tile-config parameter (``PRECISION``): 3×TF32
(``'tf32x3'``) or plain fp32 FMA (``'ieee'``) for fp32 inputs (both fp32-accurate), single TF32
for 16-bit inputs.

Parameter gradients (:data:`param_grad_kernel`), the same chunked formulation: per sequence the
gradients are sums over token pairs ``s ≤ t`` of ``∂y_t·u_s`` times ``ā^{t−s}`` (``∂w``) or
``(t−s)·ā^{t−s}`` (``∂log ā / w``). Pairs in different chunks go through the state entering
chunk t's chunk, ``E``, and its companion ``F = ā ∂E/∂ā`` (scanned together over the chunks with
:func:`combine_pair`, ``F ← ā^L F + L·ā^L E + S'``); pairs inside one chunk are accumulated as the
``[CHUNK, CHUNK]`` matrix ``Σ_chunks ∂Y_cᵀ U_c`` (one tensor-core dot per group) and contracted
with the lag powers once at the end. Reads ``u`` and ``∂y`` once, writes ``k`` numbers per
sequence.
"""
import triton
import triton.language as tl


def _config(chunk: int, block_m: int, warps: int, precision: str,
            stages: int = 2) -> triton.Config:
    return triton.Config({'CHUNK': chunk, 'BLOCK_M': block_m, 'PRECISION': precision},
                         num_warps=warps, num_stages=stages)


# Autotune candidates of the forward kernel per input dtype (every CHUNK must be
# ≤ triton_ops.CHUNK_MAX, the number of lags of the kernel head the wrapper passes); the
# autotuner times each, docs/benchmarks.md records which won on a GPU. fp32 inputs keep fp32
# accuracy: 3×TF32 tensor-core dots or plain fp32 FMA dots ('ieee'). CHUNK = 16 halves the
# Toeplitz MACs per token and, with BLOCK_M = 64, the registers per thread. Each program walks
# its sequence serially; the last two candidates try to hide the latency of a group: a deeper
# load pipeline, and twice the tokens per group on the same 4 warps.
FP32_CONFIGS = [
    _config(32, 64, 4, 'tf32x3'),
    _config(16, 64, 4, 'tf32x3'),
    _config(16, 128, 8, 'tf32x3'),
    _config(16, 64, 4, 'ieee'),
    _config(32, 32, 4, 'ieee'),
    _config(16, 64, 4, 'tf32x3', stages=3),
    _config(16, 128, 4, 'tf32x3'),
]
# 16-bit inputs (converted to fp32 in registers): single-pass TF32 dots suffice.
LOWP_CONFIGS = [
    _config(32, 64, 4, 'tf32'),
    _config(16, 64, 4, 'tf32'),
    _config(16, 128, 8, 'tf32'),
]
# Parameter-gradient kernel, every input dtype: fp32 FMA dots (tensor-core variants of this
# kernel need all 255 registers and spill on sm_90; this one does not).
GRAD_CONFIG = _config(32, 64, 8, 'ieee')
# Under TRITON_INTERPRET=1 (no GPU to benchmark on) one small config whose 256-token groups make
# short test sequences cross group boundaries (exercises the carried state).
INTERPRETER_CONFIG = _config(16, 16, 4, 'ieee')


@triton.jit
def cmul(ar, ai, br, bi):
    """Complex product ``(ar + i ai)(br + i bi)`` as its real and imaginary parts."""
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def combine(a1r, a1i, x1r, x1i, a2r, a2i, x2r, x2i):
    # Composition of the complex affine maps E -> a E + x, the earlier one first.
    ar, ai = cmul(a1r, a1i, a2r, a2i)
    xr, xi = cmul(a2r, a2i, x1r, x1i)
    return ar, ai, xr + x2r, xi + x2i


@triton.jit
def combine_pair(a1r, a1i, b1r, b1i, x1r, x1i, f1r, f1i,
                 a2r, a2i, b2r, b2i, x2r, x2i, f2r, f2i):
    # Composition of the complex affine maps (E, F) -> (a E + x, a F + b E + f), the earlier
    # one first: (a1 a2, a2 b1 + b2 a1, a2 x1 + x2, a2 f1 + b2 x1 + f2).
    ar, ai = cmul(a1r, a1i, a2r, a2i)
    br, bi = cmul(a2r, a2i, b1r, b1i)
    tr, ti = cmul(b2r, b2i, a1r, a1i)
    xr, xi = cmul(a2r, a2i, x1r, x1i)
    fr, fi = cmul(a2r, a2i, f1r, f1i)
    gr, gi = cmul(b2r, b2i, x1r, x1i)
    return ar, ai, br + tr, bi + ti, xr + x2r, xi + x2i, fr + gr + f2r, fi + gi + f2i


@triton.jit
def group_tile(ptr, base, start, n_tokens, REVERSE: tl.constexpr, CHUNK: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """Pointers and mask of the ``[BLOCK_M, CHUNK]`` tile of sequence positions ``start + …``
    (positions < 0 or ≥ N are masked)."""
    pos = start + tl.arange(0, BLOCK_M)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    mask = (pos >= 0) & (pos < n_tokens)
    if REVERSE:
        pos = n_tokens - 1 - pos
    return ptr + base + pos, mask


@triton.jit
def load_group(ptr, base, start, n_tokens, REVERSE: tl.constexpr, CHUNK: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """fp32 ``[BLOCK_M, CHUNK]`` tile of a group (row i = chunk i) and its mask."""
    ptrs, mask = group_tile(ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), mask


@triton.jit
def cpow(log_r, log_i, m):
    """``exp(m·log ā)`` (``[K, 1]`` logs, ``[1, X]`` powers) as fp32 real and imaginary parts.
    The phase ``m·Im log ā`` is formed and reduced modulo 2π in float64: in fp32 a phase of a
    thousand radians would already be off by about 1e-4."""
    mag = tl.exp(log_r * m)
    phase = log_i.to(tl.float64) * m.to(tl.float64)
    phase = (phase - 6.283185307179586 * tl.floor(phase / 6.283185307179586)).to(tl.float32)
    return mag * tl.cos(phase), mag * tl.sin(phase)


@triton.jit
def load_modes(ptr, ch, num_modes, K: tl.constexpr):
    """Real and imaginary parts ``[K]`` of a channel's interleaved complex ``[C, k]`` row
    (padded modes 0)."""
    offs_k = tl.arange(0, K)
    mask_k = offs_k < num_modes
    at = 2 * (ch * num_modes + offs_k)
    return (tl.load(ptr + at, mask=mask_k, other=0.0), tl.load(ptr + at + 1, mask=mask_k,
                                                                other=0.0))


@triton.jit
def mode_operators(log_a_ptr, w_ptr, ch, num_modes, K: tl.constexpr, CHUNK: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """Per-channel modal operators, complex as (real, imaginary) pairs (padded modes: ā = 1,
    w = 0, zero injection).

    Returns ``log ā`` and ``w`` (``[K]`` each part), ``inject_t[j, s] = ā_j^{CHUNK−1−s}``
    ``[K, CHUNK]``, ``powers[j, t] = ā_j^{t+1}`` ``[K, CHUNK]``, the chunk decay ``ā^CHUNK``
    ``[K, BLOCK_M]`` and ``carry_decay[j, i] = ā_j^{CHUNK(i+1)}`` ``[K, BLOCK_M]``."""
    offs_t = tl.arange(0, CHUNK)
    live = (tl.arange(0, K) < num_modes)[:, None]
    log_r, log_i = load_modes(log_a_ptr, ch, num_modes, K)
    w_r, w_i = load_modes(w_ptr, ch, num_modes, K)
    lr, li = log_r[:, None], log_i[:, None]
    inj_r, inj_i = cpow(lr, li, (CHUNK - 1 - offs_t)[None, :].to(tl.float32))
    inj_r, inj_i = tl.where(live, inj_r, 0.0), tl.where(live, inj_i, 0.0)
    pow_r, pow_i = cpow(lr, li, (offs_t + 1)[None, :].to(tl.float32))
    dec_r, dec_i = cpow(lr, li, tl.full((1, BLOCK_M), CHUNK, tl.float32))
    car_r, car_i = cpow(lr, li, (CHUNK * (tl.arange(0, BLOCK_M) + 1))[None, :].to(tl.float32))
    return (log_r, log_i, w_r, w_i, inj_r, inj_i, pow_r, pow_i, dec_r, dec_i, car_r, car_i)


@triton.jit
def last_row(x, BLOCK_M: tl.constexpr):
    """``x[:, BLOCK_M − 1]`` of a ``[K, BLOCK_M]`` tile."""
    return tl.sum(tl.where((tl.arange(0, BLOCK_M) == BLOCK_M - 1)[None, :], x, 0.0), axis=1)


@triton.jit
def forward_kernel(u_ptr, y_ptr, log_a_ptr, w_ptr, d_ptr, kern_ptr, n_tokens, channels,
                   num_modes, REVERSE: tl.constexpr, K: tl.constexpr, KERN_STRIDE: tl.constexpr,
                   PRECISION: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    """``y = scan(u)`` for one ``(image, channel)`` sequence per program (grid ``B·C``);
    ``log_a_ptr``, ``w_ptr``: interleaved complex ``[C, k]``."""
    row = tl.program_id(0)
    ch = row % channels
    base = row.to(tl.int64) * n_tokens
    (log_r, log_i, w_r, w_i, inj_r, inj_i, pow_r, pow_i, dec_r, dec_i, car_r,
     car_i) = mode_operators(log_a_ptr, w_ptr, ch, num_modes, K, CHUNK, BLOCK_M)
    out_r, out_i = cmul(w_r[:, None], w_i[:, None], pow_r, pow_i)  # readout w ā^{t+1}
    d = tl.load(d_ptr + ch)
    offs_t = tl.arange(0, CHUNK)
    lag = offs_t[None, :] - offs_t[:, None]
    toeplitz = tl.load(kern_ptr + ch * KERN_STRIDE + lag, mask=lag >= 0, other=0.0)
    carry_r = tl.zeros((K,), dtype=tl.float32)
    carry_i = tl.zeros((K,), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_M * CHUNK):
        u, mask = load_group(u_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev, _ = load_group(u_ptr, base, start - CHUNK, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev_t = tl.trans(u_prev)
        end_r = tl.dot(inj_r, u_prev_t, input_precision=PRECISION)  # [K, M]
        end_i = tl.dot(inj_i, u_prev_t, input_precision=PRECISION)
        _, _, in_r, in_i = tl.associative_scan((dec_r, dec_i, end_r, end_i), axis=1,
                                               combine_fn=combine)
        add_r, add_i = cmul(car_r, car_i, carry_r[:, None], carry_i[:, None])
        in_r += add_r
        in_i += add_i
        y = tl.dot(u, toeplitz, input_precision=PRECISION)
        y += tl.dot(tl.trans(in_r), out_r, input_precision=PRECISION)
        y -= tl.dot(tl.trans(in_i), out_i, input_precision=PRECISION)
        y += d * u
        y_ptrs, _ = group_tile(y_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        carry_r = last_row(in_r, BLOCK_M)
        carry_i = last_row(in_i, BLOCK_M)


@triton.jit
def param_grad_kernel(u_ptr, gy_ptr, log_a_ptr, w_ptr, gw_ptr, gl_ptr, gd_ptr, n_tokens,
                      channels, num_modes, REVERSE: tl.constexpr, K: tl.constexpr,
                      PRECISION: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    """Per-sequence parameter gradients ``∂w``, ``∂log ā`` (interleaved complex ``[B·C, k]``)
    and ``∂d`` (``[B·C]``) of ``Σ gy·y`` (grid ``B·C``; the maths:
    :mod:`~mmlrf.ops.dendritic.triton_ops`)."""
    row = tl.program_id(0)
    ch = row % channels
    base = row.to(tl.int64) * n_tokens
    (log_r, log_i, w_r, w_i, inj_r, inj_i, pow_r, pow_i, dec_r, dec_i, car_r,
     car_i) = mode_operators(log_a_ptr, w_ptr, ch, num_modes, K, CHUNK, BLOCK_M)
    offs_t = tl.arange(0, CHUNK)
    inj_lag = (CHUNK - 1 - offs_t)[None, :].to(tl.float32)
    pow_lag = (offs_t + 1)[None, :].to(tl.float32)
    cross_r, cross_i = dec_r * CHUNK, dec_i * CHUNK  # CHUNK·ā^CHUNK
    car_lag = (CHUNK * (tl.arange(0, BLOCK_M) + 1))[None, :].to(tl.float32)
    ce_r = tl.zeros((K,), dtype=tl.float32)  # carried E (state) and F (its lag moment)
    ce_i = tl.zeros((K,), dtype=tl.float32)
    cf_r = tl.zeros((K,), dtype=tl.float32)
    cf_i = tl.zeros((K,), dtype=tl.float32)
    acc_wr = tl.zeros((K,), dtype=tl.float32)
    acc_wi = tl.zeros((K,), dtype=tl.float32)
    acc_lr = tl.zeros((K,), dtype=tl.float32)
    acc_li = tl.zeros((K,), dtype=tl.float32)
    pairs = tl.zeros((CHUNK, CHUNK), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_M * CHUNK):
        u, _ = load_group(u_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev, _ = load_group(u_ptr, base, start - CHUNK, n_tokens, REVERSE, CHUNK, BLOCK_M)
        gy, _ = load_group(gy_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev_t = tl.trans(u_prev)
        gy_t = tl.trans(gy)
        end_r = tl.dot(inj_r, u_prev_t, input_precision=PRECISION)  # [K, M]
        end_i = tl.dot(inj_i, u_prev_t, input_precision=PRECISION)
        lag_r = tl.dot(inj_r * inj_lag, u_prev_t, input_precision=PRECISION)
        lag_i = tl.dot(inj_i * inj_lag, u_prev_t, input_precision=PRECISION)
        _, _, _, _, e_r, e_i, f_r, f_i = tl.associative_scan(
            (dec_r, dec_i, cross_r, cross_i, end_r, end_i, lag_r, lag_i), axis=1,
            combine_fn=combine_pair)
        t_r, t_i = cmul(car_r, car_i, ce_r[:, None], ce_i[:, None])
        e_r += t_r
        e_i += t_i
        t_r, t_i = cmul(car_r, car_i, cf_r[:, None], cf_i[:, None])
        s_r, s_i = cmul(car_r * car_lag, car_i * car_lag, ce_r[:, None], ce_i[:, None])
        f_r += t_r + s_r
        f_i += t_i + s_i
        gp_r = tl.dot(pow_r, gy_t, input_precision=PRECISION)  # [K, M] Σ_t ā^{t+1} gy_t
        gp_i = tl.dot(pow_i, gy_t, input_precision=PRECISION)
        gl_r = tl.dot(pow_r * pow_lag, gy_t, input_precision=PRECISION)
        gl_i = tl.dot(pow_i * pow_lag, gy_t, input_precision=PRECISION)
        p_r, p_i = cmul(e_r, e_i, gp_r, gp_i)
        acc_wr += tl.sum(p_r, axis=1)
        acc_wi += tl.sum(p_i, axis=1)
        p_r, p_i = cmul(e_r, e_i, gl_r, gl_i)
        q_r, q_i = cmul(f_r, f_i, gp_r, gp_i)
        acc_lr += tl.sum(p_r + q_r, axis=1)
        acc_li += tl.sum(p_i + q_i, axis=1)
        pairs += tl.dot(gy_t, u, input_precision=PRECISION)  # [CHUNK (t), CHUNK (s)]
        ce_r = last_row(e_r, BLOCK_M)
        ce_i = last_row(e_i, BLOCK_M)
        cf_r = last_row(f_r, BLOCK_M)
        cf_i = last_row(f_i, BLOCK_M)
    # Pairs inside one chunk: lag t − s ≥ 0, summed over all chunks in `pairs`.
    lag = offs_t[:, None] - offs_t[None, :]
    lag_f = tl.maximum(lag, 0).to(tl.float32)
    offs_k = tl.arange(0, K)
    for j in range(0, num_modes):
        at = 2 * (ch * num_modes + j)
        pow_r, pow_i = cpow(tl.load(log_a_ptr + at), tl.load(log_a_ptr + at + 1), lag_f)
        wr = tl.where(lag >= 0, pairs * pow_r, 0.0)
        wi = tl.where(lag >= 0, pairs * pow_i, 0.0)
        hit = offs_k == j
        acc_wr += tl.where(hit, tl.sum(tl.sum(wr, axis=1), axis=0), 0.0)
        acc_wi += tl.where(hit, tl.sum(tl.sum(wi, axis=1), axis=0), 0.0)
        acc_lr += tl.where(hit, tl.sum(tl.sum(wr * lag_f, axis=1), axis=0), 0.0)
        acc_li += tl.where(hit, tl.sum(tl.sum(wi * lag_f, axis=1), axis=0), 0.0)
    # ∂w = conj(Σ_t gy_t h_t), ∂log ā = conj(w · Σ_t gy_t Σ_s (t − s) ā^{t−s} u_s)
    out = 2 * (row.to(tl.int64) * num_modes + offs_k)
    mask_k = offs_k < num_modes
    tl.store(gw_ptr + out, acc_wr, mask=mask_k)
    tl.store(gw_ptr + out + 1, -acc_wi, mask=mask_k)
    l_r, l_i = cmul(w_r, w_i, acc_lr, acc_li)
    tl.store(gl_ptr + out, l_r, mask=mask_k)
    tl.store(gl_ptr + out + 1, -l_i, mask=mask_k)
    tl.store(gd_ptr + row, tl.sum(tl.sum(tl.where(lag == 0, pairs, 0.0), axis=1), axis=0))
