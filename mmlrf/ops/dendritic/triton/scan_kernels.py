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
# ≤ triton_ops.CHUNK_MAX, the number of lags of the kernel head the wrapper passes); the first
# entry of each list is the fastest measured (docs/benchmarks.md). fp32 inputs keep fp32
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
def combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def combine_pair(a1, b1, x1, f1, a2, b2, x2, f2):
    # Composition of the affine maps (E, F) -> (a E + x, a F + b E + f), the earlier one first.
    return a1 * a2, a2 * b1 + b2 * a1, a2 * x1 + x2, a2 * f1 + b2 * x1 + f2


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
def mode_operators(log_a_ptr, w_ptr, ch, num_modes, K: tl.constexpr, CHUNK: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """Per-channel modal operators (padded modes: ā = 1, w = 0, zero injection).

    Returns ``log ā`` ``[K]``, ``w`` ``[K]``, ``inject_t[j, s] = ā_j^{CHUNK−1−s}`` ``[K, CHUNK]``,
    ``powers[j, t] = ā_j^{t+1}`` ``[K, CHUNK]``, the chunk decay ``ā^CHUNK`` ``[K, BLOCK_M]`` and
    ``carry_decay[j, i] = ā_j^{CHUNK(i+1)}`` ``[K, BLOCK_M]``."""
    offs_t = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, K)
    mask_k = offs_k < num_modes
    log_a = tl.load(log_a_ptr + ch * num_modes + offs_k, mask=mask_k, other=0.0)
    w = tl.load(w_ptr + ch * num_modes + offs_k, mask=mask_k, other=0.0)
    inject_t = tl.where(mask_k[:, None],
                        tl.exp(log_a[:, None] * (CHUNK - 1 - offs_t)[None, :]), 0.0)
    powers = tl.exp(log_a[:, None] * (offs_t + 1)[None, :])
    chunk_decay = tl.broadcast_to(tl.exp(log_a * CHUNK)[:, None], (K, BLOCK_M))
    carry_decay = tl.exp(log_a[:, None] * (CHUNK * (tl.arange(0, BLOCK_M) + 1))[None, :])
    return log_a, w, inject_t, powers, chunk_decay, carry_decay


@triton.jit
def last_row(x, BLOCK_M: tl.constexpr):
    """``x[:, BLOCK_M − 1]`` of a ``[K, BLOCK_M]`` tile."""
    return tl.sum(tl.where((tl.arange(0, BLOCK_M) == BLOCK_M - 1)[None, :], x, 0.0), axis=1)


@triton.jit
def forward_kernel(u_ptr, y_ptr, log_a_ptr, w_ptr, d_ptr, kern_ptr, n_tokens, channels,
                   num_modes, REVERSE: tl.constexpr, K: tl.constexpr, KERN_STRIDE: tl.constexpr,
                   PRECISION: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    """``y = scan(u)`` for one ``(image, channel)`` sequence per program (grid ``B·C``)."""
    row = tl.program_id(0)
    ch = row % channels
    base = row.to(tl.int64) * n_tokens
    log_a, w, inject_t, powers, chunk_decay, carry_decay = mode_operators(
        log_a_ptr, w_ptr, ch, num_modes, K, CHUNK, BLOCK_M)
    readout = w[:, None] * powers
    d = tl.load(d_ptr + ch)
    offs_t = tl.arange(0, CHUNK)
    lag = offs_t[None, :] - offs_t[:, None]
    toeplitz = tl.load(kern_ptr + ch * KERN_STRIDE + lag, mask=lag >= 0, other=0.0)
    carry = tl.zeros((K,), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_M * CHUNK):
        u, mask = load_group(u_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev, _ = load_group(u_ptr, base, start - CHUNK, n_tokens, REVERSE, CHUNK, BLOCK_M)
        prev_end = tl.dot(inject_t, tl.trans(u_prev), input_precision=PRECISION)  # [K, M]
        _, entering = tl.associative_scan((chunk_decay, prev_end), axis=1, combine_fn=combine)
        entering += carry_decay * carry[:, None]
        y = tl.dot(u, toeplitz, input_precision=PRECISION)
        y += tl.dot(tl.trans(entering), readout, input_precision=PRECISION)
        y += d * u
        y_ptrs, _ = group_tile(y_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        carry = last_row(entering, BLOCK_M)


@triton.jit
def param_grad_kernel(u_ptr, gy_ptr, log_a_ptr, w_ptr, gw_ptr, gl_ptr, gd_ptr, n_tokens,
                      channels, num_modes, REVERSE: tl.constexpr, K: tl.constexpr,
                      PRECISION: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    """Per-sequence parameter gradients ``∂w``, ``∂log ā`` (``[B·C, k]``) and ``∂d`` (``[B·C]``)
    of ``Σ gy·y`` (grid ``B·C``; see :mod:`~mmlrf.ops.dendritic.triton_ops` for the maths)."""
    row = tl.program_id(0)
    ch = row % channels
    base = row.to(tl.int64) * n_tokens
    log_a, w, inject_t, powers, chunk_decay, carry_decay = mode_operators(
        log_a_ptr, w_ptr, ch, num_modes, K, CHUNK, BLOCK_M)
    offs_t = tl.arange(0, CHUNK)
    inject_lag_t = inject_t * (CHUNK - 1 - offs_t)[None, :].to(tl.float32)
    powers_lag = powers * (offs_t + 1)[None, :].to(tl.float32)
    chunk_cross = chunk_decay * CHUNK
    carry_cross = carry_decay * (CHUNK * (tl.arange(0, BLOCK_M) + 1))[None, :].to(tl.float32)
    carry_e = tl.zeros((K,), dtype=tl.float32)
    carry_f = tl.zeros((K,), dtype=tl.float32)
    acc_w = tl.zeros((K,), dtype=tl.float32)
    acc_l = tl.zeros((K,), dtype=tl.float32)
    pairs = tl.zeros((CHUNK, CHUNK), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_M * CHUNK):
        u, _ = load_group(u_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev, _ = load_group(u_ptr, base, start - CHUNK, n_tokens, REVERSE, CHUNK, BLOCK_M)
        gy, _ = load_group(gy_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev_t = tl.trans(u_prev)
        gy_t = tl.trans(gy)
        prev_end = tl.dot(inject_t, u_prev_t, input_precision=PRECISION)  # [K, M]
        prev_end_lag = tl.dot(inject_lag_t, u_prev_t, input_precision=PRECISION)
        _, _, state, state_lag = tl.associative_scan(
            (chunk_decay, chunk_cross, prev_end, prev_end_lag), axis=1, combine_fn=combine_pair)
        state += carry_decay * carry_e[:, None]
        state_lag += carry_decay * carry_f[:, None] + carry_cross * carry_e[:, None]
        gy_pow = tl.dot(powers, gy_t, input_precision=PRECISION)  # [K, M]
        gy_pow_lag = tl.dot(powers_lag, gy_t, input_precision=PRECISION)
        acc_w += tl.sum(state * gy_pow, axis=1)
        acc_l += tl.sum(state * gy_pow_lag + state_lag * gy_pow, axis=1)
        pairs += tl.dot(gy_t, u, input_precision=PRECISION)  # [CHUNK (t), CHUNK (s)]
        carry_e = last_row(state, BLOCK_M)
        carry_f = last_row(state_lag, BLOCK_M)
    # Pairs inside one chunk: lag t − s ≥ 0, summed over all chunks in `pairs`.
    lag = offs_t[:, None] - offs_t[None, :]
    lag_f = tl.maximum(lag, 0).to(tl.float32)
    offs_k = tl.arange(0, K)
    for j in range(0, num_modes):
        decay = tl.where(lag >= 0, tl.exp(tl.load(log_a_ptr + ch * num_modes + j) * lag_f), 0.0)
        weighted = pairs * decay
        acc_w += tl.where(offs_k == j, tl.sum(tl.sum(weighted, axis=1), axis=0), 0.0)
        acc_l += tl.where(offs_k == j, tl.sum(tl.sum(weighted * lag_f, axis=1), axis=0), 0.0)
    out = row.to(tl.int64) * num_modes + offs_k
    mask_k = offs_k < num_modes
    tl.store(gw_ptr + out, acc_w, mask=mask_k)
    tl.store(gl_ptr + out, acc_l * w, mask=mask_k)
    tl.store(gd_ptr + row, tl.sum(tl.sum(tl.where(lag == 0, pairs, 0.0), axis=1), axis=0))
