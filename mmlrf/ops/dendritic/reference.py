"""Reference maths of the dendritic (multi-compartment) operator; imports nothing but torch.

Per channel a k-compartment linear system over the flattened tokens u_1..u_N::

    s_n = Ā s_{n-1} + B̄ u_n,      y_n = Re(C s_n) + d u_n,      s_0 = 0

with zero-order hold ``Ā = exp(M Δ)``, ``B̄ = M⁻¹ (Ā − I) B``. Diagonalised (``M = V Λ V⁻¹``),
every evaluation path works on the *discrete modes* of a channel (:class:`DiscreteModes`):
``log ā_j = λ_j Δ`` and ``w_j = c̃_j b̄_j`` (complex for complex modes) with the unit-input modal
state ``h_{n,j} = ā_j h_{n−1,j} + u_n``, so that ``y_n = Re Σ_j w_j h_{n,j} + d u_n`` and the
impulse response is ``K[m] = Re Σ_j w_j ā_j^m``.

Parameterisations (each maps its raw parameters to ``(log ā, w)``):

- ``'pmsn'`` (PMSN, Chen et al. 2024): complex modes ``λ_j = −exp(log_a_real_j) + i·a_imag_j``,
  complex input ``B`` and readout ``C``, step ``Δ = exp(log_dt)``; every ``|ā_j| =
  exp(−exp(log_a_real_j)·Δ) < 1`` for every parameter value. Initialised from PMSN's coupling
  matrix (:func:`pmsn_init`): the modes of ``−0.5·I`` plus an antisymmetric neighbour coupling,
  so the kernels oscillate while they decay (:func:`pmsn_discretisation`).
- ``'modal'``: real modes, ``λ_j = −(LEAK_MIN + softplus(leak_raw_j))``
  (:func:`modal_discretisation`);
- ``'tridiagonal'``: M symmetric tridiagonal with couplings ``γ_i`` and diagonal
  ``−(ℓ_i + |γ_{i−1}| + |γ_i|)``, ``ℓ_i ≥ LEAK_MIN`` (:func:`tridiagonal_matrix`), strictly
  diagonally dominant, hence (Gershgorin) every eigenvalue ≤ −LEAK_MIN for every parameter
  value; re-diagonalised in float64 (:func:`modal_form`). A symmetric M has real modes only:
  its kernels are sums of k decaying exponentials.

The real parameterisations bound the step size, ``Δ = exp(log dt_min + log(dt_max/dt_min)·
σ(dt_raw)) ∈ [dt_min, dt_max]`` (:func:`step_sizes`), which keeps every ``|ā_j| < 1``.

Evaluation (the references the fast paths are tested against): :func:`fft_conv` (causal
convolution with the materialised kernel, FFT of length 2N) and :func:`recurrent_scan` (token by
token, :func:`recurrent_step`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Smallest leak (floor of ``−Re λ``) of the real parameterisations.
LEAK_MIN = 1e-2
#: Token scan orders over the ``[H, W]`` grid.
SCAN_ORDERS = ('raster', 'snake', 'column')


class DiscreteModes(NamedTuple):
    """The discretised operator of one direction, what every evaluation path takes.

    Attributes:
        log_a (Tensor): ``[C, k]`` log of the modal decays ``λΔ`` (real part ≤ 0), real or
            complex.
        w (Tensor): ``[C, k]`` modal weights ``c̃_j b̄_j``, complex where ``log_a`` is.
        d (Tensor): ``[C]`` skip.
        head (Tensor | None): ``[C, L]`` the first L lags of the kernel (:func:`impulse_kernel`),
            when the caller has it at hand (the Triton path); None otherwise.
    """

    log_a: Tensor
    w: Tensor
    d: Tensor
    head: Tensor | None = None


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a real precision: complex128 for float64, else complex64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def scan_permutation(height: int, width: int, order: str,
                     device: torch.device | None = None) -> Tensor | None:
    """Flat (row-major) token index of the n-th token in scan order.

    Args:
        height (int): H.
        width (int): W.
        order (str): one of :data:`SCAN_ORDERS`: ``'raster'`` (row-major), ``'snake'``
            (every odd row reversed, boustrophedon), ``'column'`` (column-major).
        device (torch.device | None): device of the returned index.

    Returns:
        Tensor | None: ``[H*W]`` long index ``perm`` such that ``x.flatten(-2)[..., perm]`` is the
        sequence in scan order; None for ``'raster'`` (the identity).
    """
    if order not in SCAN_ORDERS:
        raise ValueError(f'order must be one of {SCAN_ORDERS}, got {order!r}')
    if order == 'raster':
        return None
    grid = torch.arange(height * width, device=device).reshape(height, width)
    if order == 'snake':
        grid[1::2] = grid[1::2].flip(-1)
        return grid.flatten()
    return grid.t().flatten()


def softplus_inverse(x: Tensor) -> Tensor:
    """``softplus⁻¹(x) = x + log(−expm1(−x))`` for ``x > 0``."""
    return x + torch.log(-torch.expm1(-x))


def tridiagonal_matrix(leak_raw: Tensor, coupling: Tensor) -> Tensor:
    """The stable symmetric tridiagonal M (float64) from its raw parameters.

    Args:
        leak_raw (Tensor): ``[..., k]``, leaks ``ℓ = LEAK_MIN + softplus(leak_raw)``.
        coupling (Tensor): ``[..., k−1]``, off-diagonal couplings ``γ``.

    Returns:
        Tensor: ``[..., k, k]`` with diagonal ``−(ℓ_i + |γ_{i−1}| + |γ_i|)``.
    """
    gamma = coupling.double()
    mag = gamma.abs()
    diag = -(LEAK_MIN + F.softplus(leak_raw.double()) + F.pad(mag, (1, 0)) + F.pad(mag, (0, 1)))
    return torch.diag_embed(diag) + torch.diag_embed(gamma, 1) + torch.diag_embed(gamma, -1)


def modal_form(leak_raw: Tensor, coupling: Tensor, b: Tensor,
               c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The 'modal' parameters of the same system as the 'tridiagonal' ones (float64).

    With ``M = V Λ Vᵀ`` (:func:`tridiagonal_matrix`): the modal leaks
    ``softplus⁻¹(−λ − LEAK_MIN)`` (λ clamped to ``< −LEAK_MIN`` against round-off), ``Vᵀ b`` and
    ``Vᵀ c``; Δ and d are shared by both forms.

    Args:
        leak_raw, b, c (Tensor): ``[..., k]``.
        coupling (Tensor): ``[..., k−1]``.

    Returns:
        tuple[Tensor, Tensor, Tensor]: modal ``leak_raw``, ``b``, ``c``, each ``[..., k]``.
    """
    lam, vec = torch.linalg.eigh(tridiagonal_matrix(leak_raw, coupling))
    leak = (-lam - LEAK_MIN).clamp(min=1e-12)
    return (softplus_inverse(leak), torch.einsum('...ij,...i->...j', vec, b.double()),
            torch.einsum('...ij,...i->...j', vec, c.double()))


def step_sizes(dt_raw: Tensor, dt_min: float, dt_max: float) -> Tensor:
    """``Δ = exp(log dt_min + log(dt_max/dt_min)·sigmoid(dt_raw)) ∈ [dt_min, dt_max]``, in the
    dtype of ``dt_raw`` (any shape)."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    return torch.exp(lo + (hi - lo) * torch.sigmoid(dt_raw))


def zero_order_hold(lam: Tensor, step: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(log ā = λΔ, b̄ = expm1(λΔ)/λ · b)`` of real modes λ ``[..., k]`` (float64), step
    sizes Δ ``[...]`` and modal inputs b ``[..., k]``."""
    lam_dt = lam * step.double()[..., None]
    return lam_dt, torch.expm1(lam_dt) / lam * b


def modal_discretisation(leak_raw: Tensor, dt_raw: Tensor, b: Tensor, c: Tensor, dt_min: float,
                         dt_max: float) -> tuple[Tensor, Tensor]:
    """Discrete modes ``(log ā, w)`` of the 'modal' parameters (float64, differentiable).

    ``λ = −(LEAK_MIN + softplus(leak_raw))``, Δ from :func:`step_sizes`,
    ``log ā = λΔ``, ``w = expm1(λΔ)/λ · b · c``.

    Args:
        leak_raw, b, c (Tensor): ``[..., k]``.
        dt_raw (Tensor): ``[...]``.
        dt_min, dt_max (float): the step-size range.

    Returns:
        tuple[Tensor, Tensor]: ``log ā`` and ``w``, each ``[..., k]`` float64.
    """
    lam = -(LEAK_MIN + F.softplus(leak_raw.double()))
    log_a, b_bar = zero_order_hold(lam, step_sizes(dt_raw, dt_min, dt_max), b.double())
    return log_a, b_bar * c.double()


def tridiagonal_discretisation(leak_raw: Tensor, coupling: Tensor, dt_raw: Tensor, b: Tensor,
                               c: Tensor, dt_min: float, dt_max: float) -> tuple[Tensor, Tensor]:
    """Discrete modes ``(log ā, w)`` of the 'tridiagonal' parameters (float64, differentiable).

    M is diagonalised with ``torch.linalg.eigh`` on the CPU (the matrices are tiny; on a GPU
    cuSOLVER's batched workspace would dwarf them) and the result moved back; eigenvalues are
    clamped to ``≤ −LEAK_MIN`` against round-off.

    Args:
        leak_raw, b, c (Tensor): ``[..., k]``.
        coupling (Tensor): ``[..., k−1]``.
        dt_raw (Tensor): ``[...]``.
        dt_min, dt_max (float): the step-size range.
    """
    matrix = tridiagonal_matrix(leak_raw, coupling)
    lam, vec = torch.linalg.eigh(matrix.cpu())
    lam, vec = lam.to(matrix.device).clamp(max=-LEAK_MIN), vec.to(matrix.device)
    b_mode = torch.einsum('...ij,...i->...j', vec, b.double())
    c_mode = torch.einsum('...ij,...i->...j', vec, c.double())
    log_a, b_bar = zero_order_hold(lam, step_sizes(dt_raw, dt_min, dt_max), b_mode)
    return log_a, b_bar * c_mode


def pmsn_coupling(k: int) -> Tensor:
    """PMSN's k×k dendritic coupling matrix S (float64): diagonal −0.5, neighbour couplings
    ``S[i, i+1] = 5(i+1)`` and ``S[i+1, i] = −5(i+1)`` (antisymmetric)."""
    strength = 5.0 * torch.arange(1, k, dtype=torch.float64)
    return (torch.diag_embed(torch.full((k,), -0.5, dtype=torch.float64))
            + torch.diag_embed(strength, 1) - torch.diag_embed(strength, -1))


def pmsn_init(k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PMSN's initial modes of :func:`pmsn_coupling` with unit input and a readout from the last
    compartment.

    ``S = −0.5·I + A`` with A real antisymmetric, so ``−iA`` is Hermitian:
    ``−iA = V diag(ω) Vᴴ`` and S has the modes ``λ_j = −0.5 + iω_j``. The input vector
    ``B = Vᴴ 1`` and the readout ``C = e_kᵀ V`` are those of ``(S, 1, e_k)`` in the modal basis.

    Returns:
        tuple[Tensor, Tensor, Tensor, Tensor]: ``log_a_real`` (``log 0.5`` for every mode),
        ``a_imag`` (ω), ``B`` and ``C`` (complex128), each ``[k]``.
    """
    coupling = pmsn_coupling(k)
    antisymmetric = coupling - torch.diag_embed(torch.diagonal(coupling))
    omega, vec = torch.linalg.eigh(-1j * antisymmetric)
    b = vec.conj().transpose(0, 1) @ torch.ones(k, dtype=vec.dtype)
    c = vec[-1]
    log_a_real = torch.log(-torch.diagonal(coupling).mean()).expand(k).clone()
    return log_a_real, omega, b, c


def complex_expm1(x: Tensor) -> Tensor:
    """``exp(x) − 1`` of a complex ``x`` without cancellation for small ``|x|``:
    ``expm1(a)·cos b − 2 sin²(b/2) + i·exp(a) sin b``."""
    re, im = x.real, x.imag
    return torch.complex(torch.expm1(re) * torch.cos(im) - 2 * torch.sin(im / 2) ** 2,
                         torch.exp(re) * torch.sin(im))


def pmsn_discretisation(log_a_real: Tensor, a_imag: Tensor, b: Tensor, c: Tensor,
                        log_dt: Tensor) -> tuple[Tensor, Tensor]:
    """Discrete modes ``(log ā, w)`` of the 'pmsn' parameters (complex128, differentiable).

    ``λ = −exp(log_a_real) + i·a_imag``, ``Δ = exp(log_dt)``, zero-order hold
    ``log ā = λΔ``, ``b̄ = (ā − 1)/λ · B``, ``w = C·b̄``.

    Args:
        log_a_real, a_imag (Tensor): ``[..., k]`` real.
        b, c (Tensor): ``[..., k]`` complex input and readout.
        log_dt (Tensor): ``[...]`` real.

    Returns:
        tuple[Tensor, Tensor]: ``log ā`` and ``w``, each ``[..., k]`` complex128.
    """
    lam = torch.complex(-torch.exp(log_a_real.double()), a_imag.double())
    lam_dt = lam * torch.exp(log_dt.double())[..., None]
    return lam_dt, complex_expm1(lam_dt) / lam * b.to(torch.complex128) * c.to(torch.complex128)


def impulse_kernel(log_a: Tensor, w: Tensor, n: int) -> Tensor:
    """``K[c, m] = Re Σ_j w[c, j] exp(m log_a[c, j])`` for m = 0..n−1 (materialises
    ``[C, k, n]``).

    Args:
        log_a (Tensor): ``[C, k]``, real or complex.
        w (Tensor): ``[C, k]``.
        n (int): kernel length.

    Returns:
        Tensor: ``[C, n]``, real.
    """
    steps = torch.arange(n, device=log_a.device, dtype=log_a.real.dtype)
    kernel = (w[..., None] * torch.exp(log_a[..., None] * steps)).sum(-2)
    return kernel.real if kernel.is_complex() else kernel


def fft_conv(u: Tensor, modes: DiscreteModes) -> Tensor:
    """Causal convolution with ``K`` (:func:`impulse_kernel`) plus the skip, via FFT of length 2N.

    Args:
        u (Tensor): ``[B, C, N]`` input sequence.
        modes (DiscreteModes): the operator, in ``u``'s dtype.

    Returns:
        Tensor: ``[B, C, N]``, ``y_n = Σ_{m≤n} K[n−m] u_m + d u_n``.
    """
    n = u.shape[-1]
    kernel = impulse_kernel(modes.log_a, modes.w, n)
    size = 2 * n
    y = torch.fft.irfft(torch.fft.rfft(u, n=size) * torch.fft.rfft(kernel, n=size), n=size)
    return y[..., :n] + modes.d[:, None] * u


def recurrent_step(u_n: Tensor, state: Tensor, modes: DiscreteModes) -> tuple[Tensor, Tensor]:
    """One token: ``h ← ā h + u_n``, ``y_n = Re Σ_j w_j h_j + d u_n``.

    Args:
        u_n (Tensor): ``[B, C]`` token.
        state (Tensor): ``[B, C, k]`` unit-input modal state ``h_{n−1}`` (complex for complex
            modes).
        modes (DiscreteModes): the operator, in ``u_n``'s precision.

    Returns:
        tuple[Tensor, Tensor]: ``y_n`` ``[B, C]`` and the new state ``[B, C, k]``.
    """
    state = torch.exp(modes.log_a) * state + u_n[..., None]
    readout = (state * modes.w).sum(-1)
    return (readout.real if readout.is_complex() else readout) + modes.d * u_n, state


def recurrent_scan(u: Tensor, modes: DiscreteModes) -> Tensor:
    """Token-by-token scan (Python loop over N) of :func:`recurrent_step` from a zero state.

    The output is written in place token by token, so the extra memory is the ``[B, C, k]``
    state (the reference sequential evaluation; slow in Python).

    Args:
        u (Tensor): ``[B, C, N]``.
        modes (DiscreteModes): the operator, in ``u``'s dtype.

    Returns:
        Tensor: ``[B, C, N]``.
    """
    state = u.new_zeros(*u.shape[:2], modes.log_a.shape[-1], dtype=modes.log_a.dtype)
    out = torch.empty_like(u)
    for n in range(u.shape[-1]):
        out[..., n], state = recurrent_step(u[..., n], state, modes)
    return out
