"""Triton kernels of the dendritic scan; imported lazily by :mod:`mmlrf.attention.dynamics_triton`.

This module imports Triton at import time: never import it from code that must run without a
GPU. The maths and the backward formulas are documented in :mod:`~mmlrf.attention.dynamics_triton`.

Forward (:data:`forward_kernel`), a chunked scan on tensor cores. One program owns one
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
``u`` and one write of ``y``; the dots run as 3×TF32 (``'tf32x3'``, fp32-accurate) for fp32 inputs
and single TF32 for 16-bit inputs.
"""
import triton
import triton.language as tl

# Autotuned on the GPU per (N, k, dtype); every CHUNK must be ≤ dynamics_triton.CHUNK_MAX (the
# number of lags of the kernel head the wrapper passes).
FORWARD_CONFIGS = [
    triton.Config({'CHUNK': 64, 'BLOCK_M': 32}, num_warps=4, num_stages=2),
    triton.Config({'CHUNK': 64, 'BLOCK_M': 64}, num_warps=8, num_stages=2),
    triton.Config({'CHUNK': 32, 'BLOCK_M': 64}, num_warps=4, num_stages=2),
    triton.Config({'CHUNK': 32, 'BLOCK_M': 128}, num_warps=8, num_stages=2),
]
# Under TRITON_INTERPRET=1 (no GPU to benchmark on) one small config whose 256-token groups make
# short test sequences cross group boundaries (exercises the carried state).
INTERPRETER_CONFIG = triton.Config({'CHUNK': 16, 'BLOCK_M': 16})


@triton.jit
def combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def tile_setup(log_a_ptr, w_ptr, pid_c, channels, num_modes,
               BLOCK_C: tl.constexpr, K: tl.constexpr):
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, K)
    mask_c = offs_c < channels
    mask_ck = mask_c[:, None] & (offs_k[None, :] < num_modes)
    pk = offs_c[:, None] * num_modes + offs_k[None, :]
    # Padded modes: log ā = 0 (ā = 1) with w = 0 contribute nothing.
    log_a = tl.load(log_a_ptr + pk, mask=mask_ck, other=0.0)
    w = tl.load(w_ptr + pk, mask=mask_ck, other=0.0)
    return offs_c, mask_c, mask_ck, log_a, w


@triton.jit
def token_tile(ptr, base, start, n_tokens, mask_c,
               REVERSE: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = start + tl.arange(0, BLOCK_N)
    mask = mask_c[:, None] & (offs_n < n_tokens)[None, :]
    pos = offs_n
    if REVERSE:
        pos = n_tokens - 1 - offs_n
    ptrs = ptr + base + pos[None, :]
    return ptrs, mask


@triton.jit
def chunk_scan(a3, x, state):
    # Inclusive scan of h_t = a h_{t-1} + x_t over the tile, starting from `state`.
    a_cum, h = tl.associative_scan((a3, x), axis=2, combine_fn=combine)
    return h + a_cum * state[:, :, None]


@triton.jit
def last_token(h, BLOCK_N: tl.constexpr):
    is_last = (tl.arange(0, BLOCK_N) == BLOCK_N - 1)[None, None, :]
    return tl.sum(tl.where(is_last, h, 0.0), axis=2)


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


def _forward_kernel(u_ptr, y_ptr, log_a_ptr, w_ptr, d_ptr, kern_ptr, n_tokens, channels,
                    num_modes, REVERSE: tl.constexpr, K: tl.constexpr, KERN_STRIDE: tl.constexpr,
                    PRECISION: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    row = tl.program_id(0)
    ch = row % channels
    base = row.to(tl.int64) * n_tokens
    offs_t = tl.arange(0, CHUNK)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, K)
    mask_k = offs_k < num_modes
    log_a = tl.load(log_a_ptr + ch * num_modes + offs_k, mask=mask_k, other=0.0)
    w = tl.load(w_ptr + ch * num_modes + offs_k, mask=mask_k, other=0.0)
    d = tl.load(d_ptr + ch)
    lag = offs_t[None, :] - offs_t[:, None]
    toeplitz = tl.load(kern_ptr + ch * KERN_STRIDE + lag, mask=lag >= 0, other=0.0)
    # Transposed small operators ([K, ·]) so that the chunk scan runs along the last axis.
    inject_t = tl.where(mask_k[:, None],
                        tl.exp(log_a[:, None] * (CHUNK - 1 - offs_t)[None, :]), 0.0)
    readout = w[:, None] * tl.exp(log_a[:, None] * (offs_t + 1)[None, :])
    chunk_decay = tl.broadcast_to(tl.exp(log_a * CHUNK)[:, None], (K, BLOCK_M))
    carry_decay = tl.exp(log_a[:, None] * (CHUNK * (offs_m + 1))[None, :])
    is_last = (offs_m == BLOCK_M - 1)[None, :]
    carry = tl.zeros((K,), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_M * CHUNK):
        u_ptrs, mask = group_tile(u_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        p_ptrs, p_mask = group_tile(u_ptr, base, start - CHUNK, n_tokens, REVERSE, CHUNK, BLOCK_M)
        u_prev = tl.load(p_ptrs, mask=p_mask, other=0.0).to(tl.float32)
        prev_end = tl.dot(inject_t, tl.trans(u_prev), input_precision=PRECISION)  # [K, M]
        _, entering = tl.associative_scan((chunk_decay, prev_end), axis=1, combine_fn=combine)
        entering += carry_decay * carry[:, None]
        y = tl.dot(u, toeplitz, input_precision=PRECISION)
        y += tl.dot(tl.trans(entering), readout, input_precision=PRECISION)
        y += d * u
        y_ptrs, _ = group_tile(y_ptr, base, start, n_tokens, REVERSE, CHUNK, BLOCK_M)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        carry = tl.sum(tl.where(is_last, entering, 0.0), axis=1)


#: The compiled forward kernel (autotuned); ``forward_kernel.fn`` is the plain JIT function.
forward_kernel = triton.autotune(FORWARD_CONFIGS, key=['n_tokens', 'num_modes'])(
    triton.jit(_forward_kernel))


@triton.jit
def param_grad_kernel(u_ptr, gy_ptr, log_a_ptr, w_ptr, gw_ptr, gl_ptr, gd_ptr, n_tokens,
                      channels, num_modes, REVERSE: tl.constexpr, BLOCK_C: tl.constexpr,
                      K: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c, mask_c, mask_ck, log_a, w = tile_setup(log_a_ptr, w_ptr, pid_c, channels,
                                                   num_modes, BLOCK_C, K)
    a3 = tl.broadcast_to(tl.exp(log_a)[:, :, None], (BLOCK_C, K, BLOCK_N))
    base = (pid_b * channels + offs_c).to(tl.int64)[:, None] * n_tokens
    h_state = tl.zeros((BLOCK_C, K), dtype=tl.float32)
    q_state = tl.zeros((BLOCK_C, K), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_C, K), dtype=tl.float32)
    acc_l = tl.zeros((BLOCK_C, K), dtype=tl.float32)
    acc_d = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_N):
        u_ptrs, mask = token_tile(u_ptr, base, start, n_tokens, mask_c, REVERSE, BLOCK_N)
        g_ptrs, _ = token_tile(gy_ptr, base, start, n_tokens, mask_c, REVERSE, BLOCK_N)
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(g_ptrs, mask=mask, other=0.0).to(tl.float32)
        h = chunk_scan(a3, tl.broadcast_to(u[:, None, :], (BLOCK_C, K, BLOCK_N)), h_state)
        q = chunk_scan(a3, h, q_state)
        g3 = gy[:, None, :]
        acc_w += tl.sum(g3 * h, axis=2)
        acc_l += tl.sum(g3 * (q - h), axis=2)
        acc_d += tl.sum(gy * u, axis=1)
        h_state = last_token(h, BLOCK_N)
        q_state = last_token(q, BLOCK_N)
    row = (pid_b * channels + offs_c).to(tl.int64)
    out_ck = row[:, None] * num_modes + tl.arange(0, K)[None, :]
    tl.store(gw_ptr + out_ck, acc_w, mask=mask_ck)
    tl.store(gl_ptr + out_ck, acc_l * w, mask=mask_ck)
    tl.store(gd_ptr + row, acc_d, mask=mask_c)
