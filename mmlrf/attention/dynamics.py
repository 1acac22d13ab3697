"""The dendritic dynamics operator of LRF-Dyn (method.md §4, paper Eq. 11-15).

Per channel a k-compartment (dendrite) linear system over the flattened tokens u_1..u_N::

    s_n = Ā s_{n-1} + B̄ u_n,      y_n = cᵀ s_n + d u_n,      s_0 = 0

with a tridiagonal state matrix M (k×k, leaks on the diagonal, neighbour couplings off it) and
zero-order hold: ``Ā = exp(M Δ)``, ``B̄ = M⁻¹ (Ā − I) b``.

Stable parameterisation (holds for every parameter value): M is symmetric tridiagonal with
off-diagonal couplings ``γ_i`` and diagonal ``−(ℓ_i + |γ_{i−1}| + |γ_i|)``, leak
``ℓ_i = LEAK_MIN + softplus(leak_raw_i) ≥ LEAK_MIN > 0``. M is strictly diagonally dominant with
a negative diagonal, so (Gershgorin) its real spectrum lies in ``(−∞, −LEAK_MIN]``; the step size
``Δ = exp(log dt_min + (log dt_max − log dt_min)·sigmoid(dt_raw)) ∈ [dt_min, dt_max]`` is
log-parameterised and bounded, hence every eigenvalue of Ā lies in
``(0, exp(−LEAK_MIN·dt_min)] ⊂ (0, 1)``. With ``M = V Λ Vᵀ``, in modal coordinates
``z = Vᵀ s`` the system is k decoupled scalar recurrences (as in PMSN)::

    z_{n,j} = ā_j z_{n-1,j} + b̄_j u_n,   ā_j = exp(λ_j Δ),   b̄_j = expm1(λ_j Δ)/λ_j · (Vᵀ b)_j
    y_n = Σ_j c̃_j z_{n,j} + d u_n,      c̃ = Vᵀ c

so the impulse response is ``K[m] = Σ_j w_j ā_j^m`` with ``w_j = c̃_j b̄_j``. Every evaluation
path below works on ``(log ā, w, d)`` per channel.

Two parameterisations of this system (``parameterization``):

- ``'modal'`` (default; the paper's "following PMSN": diagonalise M, learn the modes): M is
  built and diagonalised once, at initialisation; the learnable parameters are then the modal
  ones: ``λ_j = −(LEAK_MIN + softplus(leak_raw_j))`` (PMSN keeps ``log(−λ)``; softplus keeps
  the floor above and cannot overflow), ``Vᵀ b``, ``Vᵀ c`` and Δ. No eigen-decomposition runs while
  training or inferring. It reaches exactly the kernels the tridiagonal form reaches (any
  ``λ_j ≤ −LEAK_MIN``, any ``w_j``); only the optimisation geometry differs.
- ``'tridiagonal'``: leaks and couplings stay the parameters and M is re-diagonalised
  (``torch.linalg.eigh`` in float64, on the CPU; eigenvalues clamped to ``≤ −LEAK_MIN``, a no-op
  except for round-off) whenever the parameters change; on a GPU that costs a host round trip
  per call in training (see docs/benchmarks.md). For coupling ablations.

Under the same random seed both start as the same operator, and a checkpoint of either form
loads into a module of the other as the same operator (:func:`modal_form` on load).

Evaluation modes of the same operator (attribute :attr:`DendriticDynamics.mode`, changeable
after construction):

- ``'fft'``: causal convolution with the kernel K (materialised as ``[C, k, N]``), FFT of length
  2N. The reference parallel mode.
- ``'recurrent'``: token-by-token scan with ``[B, C, k]`` state (:meth:`~DendriticDynamics.step`
  in a loop). The reference sequential mode; slow in Python.
- ``'scan'``: chunked scan, all chunks at once
  (:func:`mmlrf.attention.dynamics_scan.chunked_scan`), exact, never materialises a
  ``[C, k, N]`` kernel; the fastest CPU path.
- ``'stream'``: the same chunks one after another
  (:func:`~mmlrf.attention.dynamics_scan.streaming_scan`) carrying a ``[B, C, k]`` state: extra
  memory independent of N (the memory floor on CPU; a bidirectional module also holds the
  reversed copy of the input).
- ``'triton'``: fused GPU kernel (:mod:`mmlrf.attention.dynamics_triton`), CUDA only.
- ``'auto'``: ``'triton'`` for CUDA inputs when Triton imports, otherwise ``'scan'``.

Bidirectional (``bidirectional=True``): the output is the sum of a causal scan and an
anti-causal scan (the reversed token order). The reverse direction has its OWN parameters
(M, Δ, b, c): with shared ones the two-sided kernel would be forced to be symmetric. The skip
``d`` is applied once.

Scan orders flatten ``[H, W]`` tokens: ``'raster'`` (row-major), ``'snake'`` (row-major with
every odd row reversed, boustrophedon), ``'column'`` (column-major).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..layers import check_positive_int
from .dynamics_scan import chunk_length, chunked_scan, streaming_scan

DYNAMICS_MODES = ('fft', 'recurrent', 'scan', 'stream', 'triton', 'auto')
PARAMETERIZATIONS = ('modal', 'tridiagonal')
SCAN_ORDERS = ('raster', 'snake', 'column')
LEAK_MIN = 1e-2


def scan_permutation(height: int, width: int, order: str,
                     device: torch.device | None = None) -> Tensor | None:
    """Flat (row-major) token index of the n-th token in scan order.

    Args:
        height (int): H.
        width (int): W.
        order (str): one of :data:`SCAN_ORDERS`.
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


def _softplus_inverse(x: Tensor) -> Tensor:
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
    return (_softplus_inverse(leak), torch.einsum('...ij,...i->...j', vec, b.double()),
            torch.einsum('...ij,...i->...j', vec, c.double()))


def step_sizes(dt_raw: Tensor, dt_min: float, dt_max: float) -> Tensor:
    """``Δ = exp(log dt_min + log(dt_max/dt_min)·sigmoid(dt_raw)) ∈ [dt_min, dt_max]``, in the
    dtype of ``dt_raw`` (any shape)."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    return torch.exp(lo + (hi - lo) * torch.sigmoid(dt_raw))


def modal_discretisation(leak_raw: Tensor, dt_raw: Tensor, b: Tensor, c: Tensor, dt_min: float,
                         dt_max: float) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-order-hold discretisation of the 'modal' parameters (float64, differentiable).

    ``λ = −(LEAK_MIN + softplus(leak_raw))``, Δ from :func:`step_sizes` (in the parameters'
    dtype), ``log ā = λΔ``, ``b̄ = expm1(λΔ)/λ · b``, ``c̃ = c``. The reference of the fused
    Triton kernels (:mod:`~mmlrf.attention.discretise_triton`).

    Args:
        leak_raw, b, c (Tensor): ``[..., k]``.
        dt_raw (Tensor): ``[...]``.
        dt_min, dt_max (float): the step-size range.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``log ā``, ``b̄``, ``c̃``, each ``[..., k]`` float64.
    """
    lam = -(LEAK_MIN + F.softplus(leak_raw.double()))
    return (*zero_order_hold(lam, step_sizes(dt_raw, dt_min, dt_max), b.double()), c.double())


def zero_order_hold(lam: Tensor, step: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(log ā = λΔ, b̄ = expm1(λΔ)/λ · b)`` of modes λ ``[..., k]`` (float64), step sizes Δ
    ``[...]`` and modal inputs b ``[..., k]``."""
    lam_dt = lam * step.double()[..., None]
    return lam_dt, torch.expm1(lam_dt) / lam * b


def fft_conv(u: Tensor, log_a: Tensor, w: Tensor, d: Tensor) -> Tensor:
    """Causal convolution with ``K[m] = Σ_j w_j exp(m log_a_j)`` plus the skip, via FFT.

    Args:
        u (Tensor): ``[B, C, N]`` input sequence.
        log_a (Tensor): ``[C, k]`` log of the modal decays (real, negative).
        w (Tensor): ``[C, k]`` modal weights ``c̃_j b̄_j``.
        d (Tensor): ``[C]`` skip.

    Returns:
        Tensor: ``[B, C, N]``, ``y_n = Σ_{m≤n} K[n−m] u_m + d u_n``.
    """
    n = u.shape[-1]
    kernel = impulse_kernel(log_a, w, n)
    size = 2 * n
    y = torch.fft.irfft(torch.fft.rfft(u, n=size) * torch.fft.rfft(kernel, n=size), n=size)
    return y[..., :n] + d[:, None] * u


def impulse_kernel(log_a: Tensor, w: Tensor, n: int) -> Tensor:
    """``K[c, m] = Σ_j w[c, j] exp(m log_a[c, j])`` for m = 0..n−1 (materialises ``[C, k, n]``).

    Args:
        log_a (Tensor): ``[C, k]``.
        w (Tensor): ``[C, k]``.
        n (int): kernel length.

    Returns:
        Tensor: ``[C, n]``.
    """
    steps = torch.arange(n, device=log_a.device, dtype=log_a.dtype)
    return (w[..., None] * torch.exp(log_a[..., None] * steps)).sum(-2)


def recurrent_step(u_n: Tensor, state: Tensor, a: Tensor, b: Tensor, c: Tensor,
                   d: Tensor) -> tuple[Tensor, Tensor]:
    """One token of the modal recurrence.

    Args:
        u_n (Tensor): ``[B, C]`` token.
        state (Tensor): ``[B, C, k]`` modal state ``z_{n−1}``.
        a, b, c (Tensor): ``[C, k]`` decays ``ā``, inputs ``b̄``, readouts ``c̃``.
        d (Tensor): ``[C]`` skip.

    Returns:
        tuple[Tensor, Tensor]: ``y_n`` ``[B, C]`` and the new state ``[B, C, k]``.
    """
    state = a * state + b * u_n[..., None]
    return (state * c).sum(-1) + d * u_n, state


def recurrent_scan(u: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Token-by-token scan (Python loop over N) of :func:`recurrent_step` from a zero state.

    The output is written in place token by token, so the extra memory is the ``[B, C, k]``
    state (the reference sequential evaluation; use ``'stream'`` for speed).

    Args:
        u (Tensor): ``[B, C, N]``.
        a, b, c (Tensor): ``[C, k]``.
        d (Tensor): ``[C]``.

    Returns:
        Tensor: ``[B, C, N]``.
    """
    state = u.new_zeros(*u.shape[:2], a.shape[-1])
    out = torch.empty_like(u)
    for n in range(u.shape[-1]):
        out[..., n], state = recurrent_step(u[..., n], state, a, b, c, d)
    return out


@MODELS.register_module()
class DendriticDynamics(BaseModule):
    """Dendritic (multi-compartment) state-space operator, ``[B, C, H, W] → [B, C, H, W]``.

    See the module docstring for the maths, the stability argument and the modes.

    Args:
        channels (int): C, one independent k-compartment system per channel.
        num_dendrites (int): k, compartments per channel (default 8).
        mode (str): one of :data:`DYNAMICS_MODES` (default 'fft', the reference path;
            :class:`~mmlrf.attention.LRFDyn` passes 'auto'); may be changed later via
            :attr:`mode`.
        bidirectional (bool): add an anti-causal scan with its own parameters.
        order (str): token scan order, one of :data:`SCAN_ORDERS`.
        parameterization (str): 'modal' (default, learn the modes of M; no eigen-decomposition
            after initialisation) or 'tridiagonal' (learn leaks and couplings; re-diagonalise).
        dt_min (float): smallest step size Δ (> 0).
        dt_max (float): largest step size Δ (≥ dt_min).
        chunk_size (int): the longest chunk L of the ``'scan'`` and ``'stream'`` modes (shorter
            sequences take shorter chunks: :func:`~.dynamics_scan.chunk_length`).
        init_cfg (dict | None): mmengine init config.

    Learnable parameters (``D`` = 2 directions if bidirectional else 1):
        ``leak_raw`` ``[D, C, k]``, ``dt_raw`` ``[D, C]``, ``b`` ``[D, C, k]`` (input vector),
        ``c`` ``[D, C, k]`` (soma readout), ``d`` ``[C]`` (skip), and for 'tridiagonal'
        ``coupling`` ``[D, C, k−1]``. For 'modal', ``leak_raw``, ``b`` and ``c`` are in the modal
        basis (the state matrix is diagonal).
    """

    def __init__(self, channels: int, num_dendrites: int = 8, mode: str = 'fft',
                 bidirectional: bool = False, order: str = 'raster',
                 parameterization: str = 'modal', dt_min: float = 1e-3,
                 dt_max: float = 1e-1, chunk_size: int = 32,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        channels = check_positive_int(channels, 'channels')
        k = check_positive_int(num_dendrites, 'num_dendrites')
        chunk_size = check_positive_int(chunk_size, 'chunk_size')
        if order not in SCAN_ORDERS:
            raise ValueError(f'order must be one of {SCAN_ORDERS}, got {order!r}')
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f'parameterization must be one of {PARAMETERIZATIONS}, '
                             f'got {parameterization!r}')
        if not (dt_min > 0 and dt_max >= dt_min and math.isfinite(dt_max)):
            raise ValueError('dt_min and dt_max must satisfy 0 < dt_min <= dt_max < inf, got '
                             f'dt_min={dt_min!r}, dt_max={dt_max!r}')
        self.channels = channels
        self.num_dendrites = k
        self.bidirectional = bool(bidirectional)
        self.order = order
        self.dt_min = float(dt_min)
        self.dt_max = float(dt_max)
        self.chunk_size = chunk_size
        self.mode = mode
        ndir = 2 if bidirectional else 1
        self.parameterization = parameterization
        # Leaks 1..k (distinct: eigh's gradient needs distinct eigenvalues), weak coupling,
        # step sizes log-uniform in [dt_min, dt_max], unit input, random readout, unit skip.
        leak = torch.arange(1, k + 1, dtype=torch.float32) - LEAK_MIN
        leak_raw = _softplus_inverse(leak).expand(ndir, channels, k).clone()
        coupling = torch.full((ndir, channels, k - 1), 0.5)
        self.dt_raw = nn.Parameter(torch.logit(torch.rand(ndir, channels).clamp(1e-3, 1 - 1e-3)))
        b = torch.ones(ndir, channels, k)
        c = torch.randn(ndir, channels, k) / math.sqrt(k)
        if parameterization == 'modal':
            # Diagonalise the initial M once; from here on the modes are the parameters.
            leak_raw, b, c = (t.float() for t in modal_form(leak_raw, coupling, b, c))
        else:
            self.coupling = nn.Parameter(coupling)
        self.leak_raw = nn.Parameter(leak_raw)
        self.b = nn.Parameter(b)
        self.c = nn.Parameter(c)
        self.d = nn.Parameter(torch.ones(channels))
        self._cache: dict[str, tuple] = {}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Checkpoints of the other parameterisation load as the same operator: a 'tridiagonal'
        one (it has ``coupling``) into a 'modal' module through :func:`modal_form`; a 'modal'
        one into a 'tridiagonal' module as the diagonal M it is (zero couplings)."""
        keys = [prefix + n for n in ('leak_raw', 'coupling', 'b', 'c')]
        leak_key, coupling_key, b_key, c_key = keys
        present = [k in state_dict for k in keys]
        if self.parameterization == 'modal' and all(present):
            modal = modal_form(*(state_dict[k] for k in keys))
            del state_dict[coupling_key]
            for key, value in zip((leak_key, b_key, c_key), modal):
                state_dict[key] = value.to(state_dict[key].dtype)
        elif self.parameterization == 'tridiagonal' and present == [True, False, True, True]:
            leak_raw = state_dict[leak_key]
            state_dict[coupling_key] = leak_raw.new_zeros(*leak_raw.shape[:-1],
                                                          leak_raw.shape[-1] - 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def mode(self) -> str:
        """Evaluation path, one of :data:`DYNAMICS_MODES` (settable)."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in DYNAMICS_MODES:
            raise ValueError(f'mode must be one of {DYNAMICS_MODES}, got {value!r}')
        self._mode = value

    # ------------------------------------------------------------------ parameters
    def step_size(self) -> Tensor:
        """Δ per direction and channel, ``[D, C]``, in ``[dt_min, dt_max]``."""
        return step_sizes(self.dt_raw, self.dt_min, self.dt_max)

    def state_matrix(self) -> Tensor:
        """Continuous state matrix M in the parameters' basis, ``[D, C, k, k]`` (float64):
        tridiagonal, or diagonal (the modes) for 'modal'."""
        if self.parameterization == 'modal':
            return torch.diag_embed(-(LEAK_MIN + F.softplus(self.leak_raw.double())))
        return tridiagonal_matrix(self.leak_raw, self.coupling)

    def _cached(self, name: str, compute):
        """``compute()``, memoised while autograd is disabled until a parameter changes (new
        storage, dtype or an in-place update, tracked by the tensors' version counters).
        Under ``torch.compile`` it is traced into the graph instead (the cache key's data
        pointers would break the graph)."""
        if torch.compiler.is_compiling():
            return compute()
        if torch.is_grad_enabled():
            self._cache.pop(name, None)
            return compute()
        key = tuple((p.data_ptr(), p.dtype, p._version) for p in self.parameters())
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._cache[name] = (key, value)
        return value

    def modal_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """Diagonalised, discretised system (float64).

        With autograd disabled the result is cached until a parameter changes, so inference and
        :meth:`step` do not re-diagonalise M for every call.

        Returns:
            tuple[Tensor, Tensor, Tensor]: ``log ā = λΔ``, ``b̄``, ``c̃``, each ``[D, C, k]``.
        """
        return self._cached('modal', self._diagonalise)

    def _diagonalise(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.parameterization == 'modal':
            return modal_discretisation(self.leak_raw, self.dt_raw, self.b, self.c,
                                        self.dt_min, self.dt_max)
        matrix = self.state_matrix()
        # The [D, C, k, k] matrices are tiny, but on an H200 every training-mode call showed a
        # fixed ~0.8 GiB extra peak whatever the batch (cuSOLVER's batched eigh workspace), so
        # diagonalise on the CPU and move the ~1 MB result back (autograd follows the moves).
        lam, vec = torch.linalg.eigh(matrix.cpu())
        lam, vec = lam.to(matrix.device).clamp(max=-LEAK_MIN), vec.to(matrix.device)
        b_mode = torch.einsum('dcij,dci->dcj', vec, self.b.double())
        c_mode = torch.einsum('dcij,dci->dcj', vec, self.c.double())
        return (*zero_order_hold(lam, self.step_size(), b_mode), c_mode)

    def _direction_parameters(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``(log ā, b̄, c̃, d)`` per direction, each ``[C, k]`` / ``[C]`` (float64 modal
        parameters; the anti-causal direction has no skip)."""
        log_a, b, c = self.modal_parameters()
        return [(log_a[i], b[i], c[i], self._skip(i)) for i in range(log_a.shape[0])]

    def _skip(self, direction: int) -> Tensor:
        """The skip ``d`` of a direction, ``[C]``: the anti-causal direction has none (zeros)."""
        return self.d if direction == 0 else torch.zeros_like(self.d)

    def _triton_parameters(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """fp32 ``(log ā, w, d, kernel head)`` per direction for the Triton kernels. 'modal'
        takes the fused discretisation (one launch forward and one backward instead of ~55 ATen
        operators) where :func:`~.dynamics_triton.fused_discretisation_works` on this device."""
        from .dynamics_triton import CHUNK_MAX, fused_discretisation_works, kernel_head
        if self.parameterization == 'modal' and fused_discretisation_works(self.d.device):
            from .discretise_triton import discretise
            fused = discretise(self.leak_raw, self.dt_raw, self.b, self.c, self.dt_min,
                               self.dt_max, CHUNK_MAX)
            if not self.bidirectional:  # squeeze: a view whose backward launches nothing
                log_a, w, kern = (t.squeeze(0) for t in fused)
                return [(log_a, w, self._skip(0).float(), kern)]
            log_a, w, kern = (t.unbind(0) for t in fused)
            return [(log_a[i], w[i], self._skip(i).float(), kern[i]) for i in range(2)]
        out = []
        for log_a, b, c, d in self._direction_parameters():
            w = b * c
            out.append((log_a.float(), w.float(), d.float(),
                        kernel_head(log_a.detach(), w.detach())))
        return out

    def discrete_state_matrix(self, direction: int = 0) -> Tensor:
        """``Ā = exp(M Δ)`` of one direction, ``[C, k, k]`` (float64).

        Args:
            direction (int): 0 (causal) or 1 (anti-causal, only if bidirectional).
        """
        lam, vec = torch.linalg.eigh(self.state_matrix()[direction])
        lam_dt = lam.clamp(max=-LEAK_MIN) * self.step_size().double()[direction, :, None]
        return vec @ torch.diag_embed(torch.exp(lam_dt)) @ vec.transpose(-1, -2)

    def impulse_response(self, n: int, direction: int = 0) -> Tensor:
        """Kernel ``K[m] = cᵀ Ā^m B̄`` (without the skip d), ``[C, n]`` (float64).

        Args:
            n (int): number of lags.
            direction (int): 0 (causal) or 1 (anti-causal, only if bidirectional).
        """
        log_a, b, c = (p[direction] for p in self.modal_parameters())
        return impulse_kernel(log_a, b * c, n)

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
        """Zero modal state for :meth:`step`, ``[B, C, k]``.

        Args:
            batch (int): B.
            device, dtype: of the state (default: the parameters').
        """
        return torch.zeros(batch, self.channels, self.num_dendrites,
                           device=device or self.d.device, dtype=dtype or self.d.dtype)

    def step(self, u_n: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Stream one token (causal operator only): O(C·k) state per image.

        Tokens must be fed in the scan order (:func:`scan_permutation`).

        Args:
            u_n (Tensor): ``[B, C]`` the next token.
            state (Tensor): ``[B, C, k]`` from :meth:`init_state` or a previous step.

        Returns:
            tuple[Tensor, Tensor]: ``y_n`` ``[B, C]`` and the new state ``[B, C, k]``.
        """
        if self.bidirectional:
            raise RuntimeError('step() streams the causal operator; it needs bidirectional=False')
        log_a, b, c = (p[0].to(state.dtype) for p in self.modal_parameters())
        return recurrent_step(u_n, state, torch.exp(log_a), b, c, self.d.to(state.dtype))

    # ------------------------------------------------------------------ forward
    def resolved_mode(self, x: Tensor) -> str:
        """The concrete path ``forward(x)`` takes (resolves ``'auto'``)."""
        if self.mode != 'auto':
            return self.mode
        if x.is_cuda:
            from .dynamics_triton import triton_available
            if triton_available():
                return 'triton'
        return 'scan'

    def _sequence(self, u: Tensor, params: tuple[Tensor, ...], reverse: bool, mode: str) -> Tensor:
        """One direction on ``[B, C, N]`` with its parameters from :meth:`_triton_parameters`
        (mode 'triton') or :meth:`_direction_parameters` (the others)."""
        if mode == 'triton':
            from .dynamics_triton import triton_scan
            log_a, w, d, kern = params
            return triton_scan(u, log_a, w, d, reverse=reverse, kern=kern)
        dtype = torch.promote_types(u.dtype, torch.float32)
        log_a, b, c, d = (p.to(dtype) for p in params)
        seq = u.to(dtype).flip(-1) if reverse else u.to(dtype)
        if mode == 'fft':
            y = fft_conv(seq, log_a, b * c, d)
        elif mode == 'recurrent':
            y = recurrent_scan(seq, torch.exp(log_a), b, c, d)
        else:
            scan = chunked_scan if mode == 'scan' else streaming_scan
            y = scan(seq, log_a, b * c, d, chunk_length(seq.shape[-1], self.chunk_size))
        return (y.flip(-1) if reverse else y).to(u.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Run the dynamics over the tokens of ``x`` in :attr:`order`.

        In ``'raster'`` order the tokens are a free view of ``x``; the other orders gather them
        (one input-sized copy) and scatter the result back. A bidirectional module adds the
        anti-causal scan in place.

        Args:
            x (Tensor): ``[B, C, H, W]``.

        Returns:
            Tensor: ``[B, C, H, W]``, same dtype as ``x``.
        """
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f'expected [B, {self.channels}, H, W], got {tuple(x.shape)}')
        bsz, ch, height, width = x.shape
        mode = self.resolved_mode(x)
        perm = scan_permutation(height, width, self.order, x.device)
        # token sequences contiguous: a channels-last x would make every matmul of the scan
        # copy its operands (no copy for the usual contiguous layout)
        u = x.contiguous().flatten(2)
        if perm is not None:
            u = u.index_select(-1, perm)
        # once per call, both directions (in training nothing is cached)
        params = (self._cached('triton', self._triton_parameters) if mode == 'triton'
                  else self._direction_parameters())
        y = self._sequence(u, params[0], False, mode)
        if self.bidirectional:
            y = y.add_(self._sequence(u, params[1], True, mode))
        if perm is not None:
            y = torch.empty_like(y).index_copy_(-1, perm, y)
        return y.reshape(bsz, ch, height, width)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, num_dendrites={self.num_dendrites}, '
                f'mode={self.mode!r}, bidirectional={self.bidirectional}, order={self.order!r}, '
                f'parameterization={self.parameterization!r}, '
                f'dt=[{self.dt_min:g}, {self.dt_max:g}]')
