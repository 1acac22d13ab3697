"""Fused Triton scan of the diagonalised dendritic dynamics (GPU fast path, forward + backward).

One program handles ``BLOCK_C`` channels of one image and walks the tokens in chunks of
``BLOCK_N``; each chunk is loaded once as a ``[BLOCK_C, BLOCK_N]`` tile, broadcast to the k modes
(``[BLOCK_C, K, BLOCK_N]``) and scanned with ``tl.associative_scan`` under the linear-recurrence
combine ``(a₁, x₁) ∘ (a₂, x₂) = (a₁a₂, a₂x₁ + x₂)``; the ``[BLOCK_C, K]`` fp32 state from the
previous chunk is added as ``ā^{t+1}·state``. The readout ``Σ_j w_j h_j + d u`` is fused, so only
the input is read and only the output written: no ``[C, k, N]`` kernel exists. Inputs may be
fp32 / fp16 / bf16; the state and all arithmetic are fp32; the output has the input's dtype.

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


def _launch_forward(u: Tensor, out: Tensor, log_a: Tensor, w: Tensor, d: Tensor,
                    reverse: bool) -> None:
    import triton

    from .scan_triton import forward_kernel
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
