"""The dendritic operator on CUDA through Triton: the fused scan (forward + backward) and the
fused discretisation of the 'pmsn' parameters, as autograd Functions.

The kernels take complex modes (real ones have zero imaginary parts): ``log ā`` and ``w`` as
contiguous complex64 ``[C, k]`` tensors, read by the kernels through their interleaved real
view (``torch.view_as_real``, no copy).

Forward: the chunked tensor-core scan of :mod:`~mmlrf.ops.dendritic.triton.scan_kernels` (one
program per ``(image, channel)`` sequence, ``[BLOCK_M, CHUNK]`` token tiles, intra-chunk Toeplitz
product, chunk-level modal scan, fused readout and skip), autotuned per ``(N, k, dtype)``. Only
the input is read and only the output written; the extra memory is the ``[C, CHUNK_MAX]`` fp32
kernel head ``K[0..CHUNK_MAX)``: no ``[C, k, N]`` kernel exists. Inputs may be fp32 / fp16 /
bf16; the state and all arithmetic are fp32; the output has the input's dtype.

Autotuning is guarded: before the first autotuned launch for an input dtype and mode count, every
candidate config is compiled and run once on a short sequence (:func:`usable_configs`) and kept
only if it compiles, launches and matches the float64 FFT reference; the autotuner then chooses
among the survivors. A candidate that does not compile on some Triton / GPU version is dropped
with a warning instead of breaking the default path.

Backward (:class:`_TritonScan`), for a real loss with PyTorch's complex gradients
(``∂L/∂Re + i ∂L/∂Im``):

- input gradient: the adjoint of a causal linear recurrence is the same recurrence run
  backwards in time, so ``∂u = `` the forward kernel applied to ``∂y`` in the opposite direction;
- parameter gradients in one more forward-direction pass of the chunked parameter-gradient kernel
  (:data:`~mmlrf.ops.dendritic.triton.scan_kernels.param_grad_kernel`): with
  ``h_{t,j} = Σ_{s≤t} ā_j^{t−s} u_s``, ``∂w_j = conj(Σ_t ∂y_t h_{t,j})``,
  ``∂log ā_j = conj(w_j Σ_{s≤t} ∂y_t (t−s) ā_j^{t−s} u_s)`` and ``∂d = Σ_t ∂y_t u_t``, per
  sequence into ``[B, C, k]`` partials summed over B here. Extra memory: ``∂u`` (the result)
  plus ``O(B·C·k)``.

Triton is probed once, at import (:data:`TRITON_IMPORTS`); without it this module still imports
and :func:`triton_available` is False.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch
from torch import Tensor

from .reference import DiscreteModes, fft_conv, impulse_kernel, pmsn_discretisation

try:
    import triton

    from .triton import discretise_kernels, scan_kernels
    TRITON_IMPORTS = True
except ImportError:  # a machine without Triton: the PyTorch paths only
    TRITON_IMPORTS = False

CHUNK_MAX = 64  # lags of the kernel head, ≥ every CHUNK in the scan kernels' configs


@torch.compiler.assume_constant_result  # under torch.compile: evaluated once, no graph break
def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    return TRITON_IMPORTS and torch.cuda.is_available()


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (the kernels run in the Triton interpreter)."""
    return os.environ.get('TRITON_INTERPRET') == '1'


def modes_padded(num_modes: int) -> int:
    """Mode axis of the kernels: a power of two ≥ 16 (``tl.dot`` needs ≥ 16)."""
    return max(16, 1 << (num_modes - 1).bit_length())


def kernel_head(log_a: Tensor, w: Tensor) -> Tensor:
    """``K[c, m]`` for ``m < CHUNK_MAX``, ``[C, CHUNK_MAX]`` fp32 (computed in float64): the
    intra-chunk Toeplitz of the forward kernel."""
    def wide(t: Tensor) -> Tensor:
        return t.to(torch.complex128 if t.is_complex() else torch.float64)
    return impulse_kernel(wide(log_a), wide(w), CHUNK_MAX).float()


def complex64(x: Tensor) -> Tensor:
    """``x`` as a contiguous complex64 tensor (a real one with zero imaginary parts)."""
    if not x.is_complex():
        x = torch.complex(x.float(), torch.zeros_like(x, dtype=torch.float32))
    return x.to(torch.complex64).contiguous()


@functools.lru_cache(maxsize=None)
@torch.inference_mode(False)  # the first call may come from inference: the check needs autograd
@torch.enable_grad()
def _fused_discretisation_check(device: torch.device) -> bool:
    gen = torch.Generator(device='cpu').manual_seed(0)
    shapes = [(2, 3, 5), (2, 3, 5), (2, 3, 5, 2), (2, 3, 5, 2), (2, 3)]
    raw = [torch.randn(s, generator=gen).double() for s in shapes]
    raw[4] = raw[4] - 4.0  # Δ around e^-4
    grads = [torch.randn(2, 3, 5, generator=gen, dtype=torch.complex128) for _ in range(2)]
    ref_in = [t.requires_grad_() for t in raw]
    ref = list(pmsn_discretisation(ref_in[0], ref_in[1], torch.view_as_complex(ref_in[2]),
                                   torch.view_as_complex(ref_in[3]), ref_in[4]))
    ref_grads = torch.autograd.grad(sum((r * g.conj()).real.sum() for r, g in zip(ref, grads)),
                                    ref_in)
    ref.append(kernel_head(ref[0].detach(), ref[1].detach()))
    try:
        got_in = [t.detach().float().to(device).requires_grad_() for t in ref_in]
        got = discretise(*got_in, CHUNK_MAX)
        got_grads = torch.autograd.grad(
            sum((r * g.to(device).conj()).real.sum() for r, g in zip(got, grads)), got_in)
        errs = [((a.cpu().to(b.dtype) - b).abs().max() / b.abs().max()).item()
                for a, b in zip(got + got_grads, ref + list(ref_grads))]
    except Exception as exc:  # the kernels do not compile or launch on this Triton / GPU
        warnings.warn(f'fused discretisation unavailable, using the PyTorch path: '
                      f'{type(exc).__name__}: {exc}'[:500])
        return False
    if max(errs) > 1e-5:
        warnings.warn(f'fused discretisation inaccurate (relative errors {errs}), using the '
                      'PyTorch path')
        return False
    return True


@torch.compiler.assume_constant_result  # under torch.compile: evaluated once, no graph break
def fused_discretisation_works(device: torch.device) -> bool:
    """True when the fused discretisation (:func:`discretise`) compiles, runs and matches
    :func:`~mmlrf.ops.dendritic.reference.pmsn_discretisation` (values, kernel head and every
    gradient, relative error ≤ 1e-5, fp32 inputs) on a random ``[2, 3, 5]`` case on ``device``;
    checked once per device. Otherwise it warns once and returns False, and the module keeps
    the PyTorch path."""
    return triton_available() and device.type == 'cuda' and _fused_discretisation_check(device)


def precision_kind(dtype: torch.dtype) -> str:
    """``'fp32'`` for fp32 inputs, ``'lowp'`` for 16-bit ones (selects the config lists)."""
    return 'fp32' if dtype == torch.float32 else 'lowp'


def forward_configs(dtype: torch.dtype) -> list:
    """Autotune candidates of the forward kernel for inputs of ``dtype``."""
    return scan_kernels.FP32_CONFIGS if precision_kind(dtype) == 'fp32' \
        else scan_kernels.LOWP_CONFIGS


def _launch(u: Tensor, out: Tensor, log_a: Tensor, w: Tensor, d: Tensor, kern: Tensor,
            reverse: bool, kernel, meta: dict) -> None:
    bsz, ch, n = u.shape
    k = log_a.shape[-1]
    kernel[(bsz * ch,)](u, out, torch.view_as_real(log_a), torch.view_as_real(w), d, kern, n, ch,
                        k, REVERSE=reverse, K=modes_padded(k), KERN_STRIDE=CHUNK_MAX, **meta)


@functools.lru_cache(maxsize=None)
def usable_configs(dtype: torch.dtype, num_modes: int, device: torch.device) -> tuple:
    """The forward candidates for ``dtype`` that compile, run and are accurate on ``device``.

    Each candidate runs once (causal) on a ``[1, 2, 8208]`` sequence (longer than two token
    groups of every config) with ``num_modes`` modes and is compared to the float64 FFT reference.
    Compiled binaries are cached by Triton, so this adds little to the autotuning that follows.

    Raises:
        RuntimeError: if no candidate survives.
    """
    gen = torch.Generator(device='cpu').manual_seed(0)
    u = torch.randn(1, 2, 8208, generator=gen, dtype=torch.float64)
    log_a = torch.complex(-torch.rand(2, num_modes, generator=gen, dtype=torch.float64) * 0.2,
                          torch.randn(2, num_modes, generator=gen, dtype=torch.float64))
    w = torch.randn(2, num_modes, generator=gen, dtype=torch.complex128)
    d = torch.randn(2, generator=gen, dtype=torch.float64)
    u = u.to(dtype).double()
    ref = fft_conv(u, DiscreteModes(log_a, w, d))
    tol = 1e-4 if precision_kind(dtype) == 'fp32' else 2e-2
    args = [u.to(dtype), complex64(log_a), complex64(w), d.float()]
    args = [t.to(device) for t in args]
    kern = kernel_head(log_a, w).to(device)
    good = []
    for config in forward_configs(dtype):
        out = torch.full_like(args[0], float('nan'))
        try:
            launch_forward(args[0], out, *args[1:], kern, False, config)
            err = ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()
        except Exception as exc:  # a config this Triton / GPU cannot compile or launch
            warnings.warn(f'dropping Triton config {config}: {type(exc).__name__}: {exc}'[:500])
            continue
        if err < tol:
            good.append(config)
        else:
            warnings.warn(f'dropping Triton config {config}: relative error {err:.1e}')
    if not good:
        raise RuntimeError(f'no Triton forward config works for {dtype} on {device}')
    return tuple(good)


#: Autotuned forward kernels by ``(dtype, k, device)``; ``.cache`` holds the choice per key.
TUNED_FORWARD: dict = {}


def tuned_forward(dtype: torch.dtype, num_modes: int, device: torch.device):
    """The autotuned forward kernel over :func:`usable_configs` (built once per key)."""
    key = (dtype, num_modes, device)
    if key not in TUNED_FORWARD:
        configs = list(usable_configs(dtype, num_modes, device))
        TUNED_FORWARD[key] = triton.autotune(configs, key=['n_tokens', 'num_modes'])(
            scan_kernels.forward_kernel)
    return TUNED_FORWARD[key]


def chosen_configs() -> dict[str, str]:
    """The forward config the autotuner picked, per ``(dtype, k, device)`` and tuning key
    (empty before the first autotuned launch)."""
    return {str((key, tuned_key)): str(config) for key, tuned in TUNED_FORWARD.items()
            for tuned_key, config in tuned.cache.items()}


def launch_forward(u: Tensor, out: Tensor, log_a: Tensor, w: Tensor, d: Tensor, kern: Tensor,
                   reverse: bool, config=None) -> None:
    """Run the forward kernel: ``out = scan(u)`` (``[B, C, N]``, contiguous).

    Args:
        u, out (Tensor): ``[B, C, N]`` input and preallocated output.
        log_a, w (Tensor): ``[C, k]`` contiguous complex64.
        d (Tensor): ``[C]`` fp32.
        kern (Tensor): :func:`kernel_head` ``[C, CHUNK_MAX]``.
        reverse (bool): anti-causal.
        config (triton.Config | None): a fixed tile config (tests); None = autotuned on the GPU
            over :func:`usable_configs`, ``scan_kernels.INTERPRETER_CONFIG`` under
            ``TRITON_INTERPRET=1``.
    """
    if config is None and interpreting():
        config = scan_kernels.INTERPRETER_CONFIG
    if config is None:
        _launch(u, out, log_a, w, d, kern, reverse,
                tuned_forward(u.dtype, log_a.shape[-1], u.device), {})
    else:
        _launch(u, out, log_a, w, d, kern, reverse, scan_kernels.forward_kernel,
                config.all_kwargs())


def launch_param_grad(u: Tensor, grad_y: Tensor, log_a: Tensor, w: Tensor, reverse: bool,
                      config=None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``Σ grad_y·scan(u)`` wrt ``log ā``, ``w`` and ``d``.

    Args:
        u, grad_y (Tensor): ``[B, C, N]`` contiguous, same dtype.
        log_a, w (Tensor): ``[C, k]`` contiguous complex64.
        reverse (bool): the direction of the forward scan.
        config (triton.Config | None): tiles; None = ``scan_kernels.GRAD_CONFIG``
            (``INTERPRETER_CONFIG`` under ``TRITON_INTERPRET=1``).

    Returns:
        tuple[Tensor, Tensor, Tensor]: complex64 ``∂log ā`` ``[C, k]`` and ``∂w`` ``[C, k]``,
        fp32 ``∂d`` ``[C]``.
    """
    if config is None:
        config = scan_kernels.INTERPRETER_CONFIG if interpreting() else scan_kernels.GRAD_CONFIG
    bsz, ch, n = u.shape
    k = log_a.shape[-1]
    gw = u.new_empty(bsz, ch, k, 2, dtype=torch.float32)
    gl = torch.empty_like(gw)
    gd = u.new_empty(bsz, ch, dtype=torch.float32)
    scan_kernels.param_grad_kernel[(bsz * ch,)](u, grad_y, torch.view_as_real(log_a),
                                                torch.view_as_real(w), gw, gl, gd, n, ch, k,
                                                REVERSE=reverse, K=modes_padded(k),
                                                **config.all_kwargs())
    return (torch.view_as_complex(gl.sum(0)), torch.view_as_complex(gw.sum(0)), gd.sum(0))


class _TritonScan(torch.autograd.Function):
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
            grad_log_a, grad_w, grad_d = launch_param_grad(u, grad_y, log_a, w, ctx.reverse)
        return grad_u, grad_log_a, grad_w, grad_d, None, None


@torch.compiler.disable  # opaque to torch.compile: the kernels run as they are (a graph break)
def triton_scan(u: Tensor, modes: DiscreteModes, reverse: bool = False) -> Tensor:
    """The dendritic operator on CUDA with the fused Triton kernels (differentiable).

    Args:
        u (Tensor): ``[B, C, N]`` CUDA tensor (fp32, fp16 or bf16); no copy when contiguous.
        modes (DiscreteModes): the operator (cast to fp32); its ``head`` (:func:`kernel_head`)
            when the caller has it, else computed here.
        reverse (bool): run anti-causally (token N first).

    Returns:
        Tensor: ``[B, C, N]`` in ``u``'s dtype.
    """
    if not (u.is_cuda and triton_available()):
        raise RuntimeError("mode='triton' needs a CUDA input and an installed triton; "
                           "use mode='auto' to fall back to the PyTorch scan")
    log_a, w = complex64(modes.log_a), complex64(modes.w)
    head = modes.head if modes.head is not None else kernel_head(log_a.detach(), w.detach())
    return _TritonScan.apply(u.contiguous(), log_a, w, modes.d.float().contiguous(), head,
                             reverse)


class _PMSNDiscretisation(torch.autograd.Function):
    """``(log_a_real, a_imag, B, C, log_dt) → (log ā, w, K)`` (maths and backward formulas:
    :mod:`~mmlrf.ops.dendritic.triton.discretise_kernels`)."""

    @staticmethod
    def forward(ctx, log_a_real: Tensor, a_imag: Tensor, b: Tensor, c: Tensor, log_dt: Tensor,
                head: int) -> tuple[Tensor, Tensor, Tensor]:
        rows, k = log_a_real.shape[:-1].numel(), log_a_real.shape[-1]
        grid = (triton.cdiv(rows, discretise_kernels.BLOCK_ROWS),)
        log_a = torch.empty(log_a_real.shape, device=log_a_real.device, dtype=torch.complex64)
        w = torch.empty_like(log_a)
        kern = log_a_real.new_empty(*log_a_real.shape[:-1], head, dtype=torch.float32)
        discretise_kernels.pmsn_discretise_kernel[grid](
            log_a_real, a_imag, b, c, log_dt, torch.view_as_real(log_a), torch.view_as_real(w),
            kern, rows, k, HEAD=head, BLOCK_R=discretise_kernels.BLOCK_ROWS)
        ctx.save_for_backward(log_a_real, a_imag, b, c, log_dt)
        ctx.launch = (grid, rows, k)  # the backward launch takes the same grid
        ctx.mark_non_differentiable(kern)
        ctx.set_materialize_grads(False)  # no zero gradient is launched for K
        return log_a, w, kern

    @staticmethod
    def backward(ctx, grad_log_a: Tensor | None, grad_w: Tensor | None, _grad_kern: None):
        log_a_real, a_imag, b, c, log_dt = ctx.saved_tensors
        grid, rows, k = ctx.launch
        upstream = [torch.zeros(*log_a_real.shape, 2, device=log_a_real.device) if g is None
                    else torch.view_as_real(g.contiguous()) for g in (grad_log_a, grad_w)]
        grads = [torch.empty_like(t) for t in (log_a_real, a_imag, b, c, log_dt)]
        discretise_kernels.pmsn_discretise_grad_kernel[grid](
            log_a_real, a_imag, b, c, log_dt, *upstream, *grads, rows, k,
            BLOCK_R=discretise_kernels.BLOCK_ROWS)
        return (*grads, None)


@torch.compiler.disable  # opaque to torch.compile, like the scan kernels
def discretise(log_a_real: Tensor, a_imag: Tensor, b: Tensor, c: Tensor, log_dt: Tensor,
               head: int) -> tuple[Tensor, Tensor, Tensor]:
    """PMSN discretisation for the Triton scan in one launch (differentiable, float64 maths).

    Args:
        log_a_real, a_imag (Tensor): ``[D, C, k]`` (CUDA, fp32).
        b, c (Tensor): ``[D, C, k, 2]`` complex input and readout as (real, imaginary) pairs.
        log_dt (Tensor): ``[D, C]``.
        head (int): lags of the kernel head (a power of two).

    Returns:
        tuple[Tensor, Tensor, Tensor]: complex64 ``log ā`` and ``w`` ``[D, C, k]`` and the fp32
        kernel head ``[D, C, head]`` (not differentiable).
    """
    return _PMSNDiscretisation.apply(log_a_real.contiguous(), a_imag.contiguous(),
                                     b.contiguous(), c.contiguous(), log_dt.contiguous(), head)
