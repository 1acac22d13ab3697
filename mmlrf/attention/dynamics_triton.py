"""Fused Triton scan of the diagonalised dendritic dynamics (GPU fast path, forward + backward).

One program handles ``BLOCK_C`` channels of one image and walks the tokens in chunks of
``BLOCK_N``; each chunk is loaded once as a ``[BLOCK_C, BLOCK_N]`` tile, broadcast to the k modes
(``[BLOCK_C, K, BLOCK_N]``) and scanned with ``tl.associative_scan`` under the linear-recurrence
combine ``(a₁, x₁) ∘ (a₂, x₂) = (a₁a₂, a₂x₁ + x₂)``; the ``[BLOCK_C, K]`` fp32 state from the previous
chunk is added as ``ā^{t+1}·state``. The readout ``Σ_j w_j h_j + d u`` is fused, so only the input
is read and only the output written: no ``[C, k, N]`` kernel exists. Inputs may be fp32 / fp16 /
bf16; the state and all arithmetic are fp32; the output has the input's dtype.

Backward (a custom ``autograd.Function``):

- input gradient: the adjoint of a causal linear recurrence is the same recurrence run
  backwards in time, so ``∂u = `` the forward kernel applied to ``∂y`` in the opposite direction;
- parameter gradients in one more forward-direction pass, with the state ``h_j`` and its
  derivative companion ``q_j`` (``q_t = ā q_{t−1} + h_t``, so ``ā·∂h_t/∂ā = q_t − h_t``):
  ``∂w_j = Σ ∂y·h_j``, ``∂log ā_j = w_j Σ ∂y·(q_j − h_j)``, ``∂d = Σ ∂y·u``.

Triton is imported lazily (only GPU machines have it).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

BLOCK_C = 2
BLOCK_N = 128
NUM_WARPS = 4


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _kernels():
    """Compile-on-first-use kernels (keeps ``import triton`` out of module import)."""
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
        """Inclusive scan of ``h_t = ā h_{t−1} + x_t`` over the tile, starting from ``state``."""
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

    return triton, forward_kernel, param_grad_kernel


def _launch_forward(u: Tensor, out: Tensor, log_a: Tensor, w: Tensor, d: Tensor,
                    reverse: bool) -> None:
    triton, forward_kernel, _ = _kernels()
    bsz, ch, n = u.shape
    k = log_a.shape[-1]
    grid = (bsz, triton.cdiv(ch, BLOCK_C))
    forward_kernel[grid](u, out, log_a, w, d, n, ch, k, REVERSE=reverse, BLOCK_C=BLOCK_C,
                         K=max(2, triton.next_power_of_2(k)), BLOCK_N=BLOCK_N,
                         num_warps=NUM_WARPS)


class _TritonDynamics(torch.autograd.Function):
    """``y = causal (or anti-causal) modal scan of u`` with fused readout; see module docstring."""

    @staticmethod
    def forward(ctx, u: Tensor, log_a: Tensor, w: Tensor, d: Tensor, reverse: bool) -> Tensor:
        y = torch.empty_like(u)
        _launch_forward(u, y, log_a, w, d, reverse)
        ctx.save_for_backward(u, log_a, w, d)
        ctx.reverse = reverse
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        u, log_a, w, d = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_u = grad_log_a = grad_w = grad_d = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.empty_like(u)
            _launch_forward(grad_y, grad_u, log_a, w, d, not ctx.reverse)
        if any(ctx.needs_input_grad[1:4]):
            triton, _, param_grad_kernel = _kernels()
            bsz, ch, n = u.shape
            k = log_a.shape[-1]
            gw = u.new_empty(bsz, ch, k, dtype=torch.float32)
            gl = torch.empty_like(gw)
            gd = u.new_empty(bsz, ch, dtype=torch.float32)
            grid = (bsz, triton.cdiv(ch, BLOCK_C))
            param_grad_kernel[grid](u, grad_y, log_a, w, gw, gl, gd, n, ch, k,
                                    REVERSE=ctx.reverse, BLOCK_C=BLOCK_C,
                                    K=max(2, triton.next_power_of_2(k)), BLOCK_N=BLOCK_N,
                                    num_warps=NUM_WARPS)
            grad_log_a, grad_w, grad_d = gl.sum(0), gw.sum(0), gd.sum(0)
        return grad_u, grad_log_a, grad_w, grad_d, None


def triton_scan(u: Tensor, log_a: Tensor, w: Tensor, d: Tensor, reverse: bool = False) -> Tensor:
    """Dendritic dynamics on CUDA with the fused Triton kernels (differentiable).

    Args:
        u (Tensor): ``[B, C, N]`` CUDA tensor (fp32, fp16 or bf16).
        log_a (Tensor): ``[C, k]`` fp32 log modal decays (≤ 0).
        w (Tensor): ``[C, k]`` fp32 modal weights.
        d (Tensor): ``[C]`` fp32 skip.
        reverse (bool): run anti-causally (token N first).

    Returns:
        Tensor: ``[B, C, N]`` in ``u``'s dtype.
    """
    if not (u.is_cuda and triton_available()):
        raise RuntimeError("mode='triton' needs a CUDA input and an installed triton; "
                           "use mode='auto' to fall back to the PyTorch scan")
    return _TritonDynamics.apply(u.contiguous(), log_a.contiguous(), w.contiguous(),
                                 d.contiguous(), reverse)
