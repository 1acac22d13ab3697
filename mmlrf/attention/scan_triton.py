"""Triton kernels of the dendritic scan; imported lazily by :mod:`mmlrf.attention.dynamics_triton`.

This module imports Triton at import time: never import it from code that must run without a
GPU. The maths and the backward formulas are documented in :mod:`~mmlrf.attention.dynamics_triton`.
"""
import triton
import triton.language as tl


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
def forward_kernel(u_ptr, y_ptr, log_a_ptr, w_ptr, d_ptr, n_tokens, channels, num_modes,
                   REVERSE: tl.constexpr, BLOCK_C: tl.constexpr, K: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c, mask_c, mask_ck, log_a, w = tile_setup(log_a_ptr, w_ptr, pid_c, channels,
                                                   num_modes, BLOCK_C, K)
    d = tl.load(d_ptr + offs_c, mask=mask_c, other=0.0)
    a3 = tl.broadcast_to(tl.exp(log_a)[:, :, None], (BLOCK_C, K, BLOCK_N))
    base = (pid_b * channels + offs_c).to(tl.int64)[:, None] * n_tokens
    state = tl.zeros((BLOCK_C, K), dtype=tl.float32)
    for start in range(0, n_tokens, BLOCK_N):
        u_ptrs, mask = token_tile(u_ptr, base, start, n_tokens, mask_c, REVERSE, BLOCK_N)
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        h = chunk_scan(a3, tl.broadcast_to(u[:, None, :], (BLOCK_C, K, BLOCK_N)), state)
        y = tl.sum(h * w[:, :, None], axis=1) + d[:, None] * u
        y_ptrs, _ = token_tile(y_ptr, base, start, n_tokens, mask_c, REVERSE, BLOCK_N)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        state = last_token(h, BLOCK_N)


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
