"""Fused Triton scan of the diagonalised dendritic dynamics (GPU fast path, forward + backward).

Forward: the chunked tensor-core scan of :mod:`mmlrf.attention.scan_triton` (one program per
``(image, channel)`` sequence, ``[BLOCK_M, CHUNK]`` token tiles, intra-chunk Toeplitz product,
chunk-level modal scan, fused readout and skip), autotuned per ``(N, k, dtype)``. Only the input
is read and only the output written; the extra memory is the ``[C, CHUNK_MAX]`` fp32 kernel head
``K[0..CHUNK_MAX)``: no ``[C, k, N]`` kernel exists. Inputs may be fp32 / fp16 / bf16; the state
and all arithmetic are fp32; the output has the input's dtype.

Backward (a custom ``autograd.Function``):

- input gradient: the adjoint of a causal linear recurrence is the same recurrence run
  backwards in time, so ``∂u = `` the forward kernel applied to ``∂y`` in the opposite direction;
- parameter gradients in one more forward-direction pass (a per-token kernel: ``BLOCK_C``
  channels × ``BLOCK_N`` tokens per step, ``tl.associative_scan`` per mode), with the state
  ``h_j`` and its derivative companion ``q_j`` (``q_t = ā q_{t−1} + h_t``, so
  ``ā·∂h_t/∂ā = q_t − h_t``):
  ``∂w_j = Σ ∂y·h_j``, ``∂log ā_j = w_j Σ ∂y·(q_j − h_j)``, ``∂d = Σ ∂y·u``.

Triton is imported lazily (only GPU machines have it).
"""
from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

# Parameter-gradient kernel tiles; the forward kernel's tiles are autotuned (scan_triton).
BLOCK_C = 2
BLOCK_N = 128
NUM_WARPS = 4
CHUNK_MAX = 64  # lags of the kernel head, ≥ every CHUNK in scan_triton.FORWARD_CONFIGS


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def modes_padded(num_modes: int) -> int:
    """Mode axis of the kernels: a power of two ≥ 16 (``tl.dot`` needs ≥ 16)."""
    return max(16, 1 << (num_modes - 1).bit_length())


def kernel_head(log_a: Tensor, w: Tensor) -> Tensor:
    """``K[c, m] = Σ_j w[c, j] ā[c, j]^m`` for ``m < CHUNK_MAX``, ``[C, CHUNK_MAX]`` fp32 (computed
    in float64): the intra-chunk Toeplitz of the forward kernel."""
    steps = torch.arange(CHUNK_MAX, device=log_a.device, dtype=torch.float64)
    decay = torch.exp(log_a.double()[..., None] * steps)
    return (w.double()[..., None] * decay).sum(-2).float()


def launch_forward(u: Tensor, out: Tensor, log_a: Tensor, w: Tensor, d: Tensor, kern: Tensor,
                   reverse: bool, config=None) -> None:
    """Run the forward kernel: ``out = scan(u)`` (``[B, C, N]``, contiguous).

    Args:
        u, out (Tensor): ``[B, C, N]`` input and preallocated output.
        log_a, w (Tensor): ``[C, k]`` fp32.
        d (Tensor): ``[C]`` fp32.
        kern (Tensor): :func:`kernel_head` ``[C, CHUNK_MAX]``.
        reverse (bool): anti-causal.
        config (triton.Config | None): a fixed tile config (tests); None = autotuned on the GPU,
            ``scan_triton.INTERPRETER_CONFIG`` under ``TRITON_INTERPRET=1``.
    """
    from .scan_triton import INTERPRETER_CONFIG, forward_kernel
    bsz, ch, n = u.shape
    k = log_a.shape[-1]
    kernel = forward_kernel
    if config is None and os.environ.get('TRITON_INTERPRET') == '1':
        config = INTERPRETER_CONFIG
    meta = {}
    if config is not None:
        kernel, meta = forward_kernel.fn, config.all_kwargs()
    precision = 'tf32x3' if u.dtype == torch.float32 else 'tf32'
    kernel[(bsz * ch,)](u, out, log_a, w, d, kern, n, ch, k, REVERSE=reverse, K=modes_padded(k),
                        KERN_STRIDE=CHUNK_MAX, PRECISION=precision, **meta)
class _TritonDynamics(torch.autograd.Function):
    """``y = causal (or anti-causal) modal scan of u`` with fused readout; see module docstring."""

    @staticmethod
    def forward(ctx, u: Tensor, log_a: Tensor, w: Tensor, d: Tensor, kern: Tensor,
                reverse: bool) -> Tensor:
        y = torch.empty_like(u)
        launch_forward(u, y, log_a, w, d, kern, reverse)
        ctx.save_for_backward(u, log_a, w, d, kern)
        ctx.reverse = reverse
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        u, log_a, w, d, kern = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_u = grad_log_a = grad_w = grad_d = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.empty_like(u)
            launch_forward(grad_y, grad_u, log_a, w, d, kern, not ctx.reverse)
        if any(ctx.needs_input_grad[1:4]):
            import triton

            from .scan_triton import param_grad_kernel
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
        return grad_u, grad_log_a, grad_w, grad_d, None, None


def triton_scan(u: Tensor, log_a: Tensor, w: Tensor, d: Tensor, reverse: bool = False,
                kern: Tensor | None = None) -> Tensor:
    """Dendritic dynamics on CUDA with the fused Triton kernels (differentiable).

    Args:
        u (Tensor): ``[B, C, N]`` CUDA tensor (fp32, fp16 or bf16); no copy when contiguous.
        log_a (Tensor): ``[C, k]`` fp32 log modal decays (≤ 0).
        w (Tensor): ``[C, k]`` fp32 modal weights.
        d (Tensor): ``[C]`` fp32 skip.
        reverse (bool): run anti-causally (token N first).
        kern (Tensor | None): :func:`kernel_head` of ``(log_a, w)`` when the caller caches it
            (inference); computed here when None.

    Returns:
        Tensor: ``[B, C, N]`` in ``u``'s dtype.
    """
    if not (u.is_cuda and triton_available()):
        raise RuntimeError("mode='triton' needs a CUDA input and an installed triton; "
                           "use mode='auto' to fall back to the PyTorch scan")
    if kern is None:
        kern = kernel_head(log_a.detach(), w.detach())
    return _TritonDynamics.apply(u.contiguous(), log_a.contiguous(), w.contiguous(),
                                 d.contiguous(), kern, reverse)
