"""The dendritic operator as a module: parameters, their discretisation, evaluation, streaming."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils import check_positive_int
from .backends import BACKENDS, DYNAMICS_MODES, cast_modes, resolve_mode
from .reference import (LEAK_MIN, SCAN_ORDERS, DiscreteModes, complex_dtype, impulse_kernel,
                        modal_discretisation, modal_form, pmsn_discretisation, pmsn_init,
                        recurrent_step, scan_permutation, softplus_inverse, step_sizes,
                        tridiagonal_discretisation, tridiagonal_matrix)
from .triton_ops import CHUNK_MAX, complex64, discretise, fused_discretisation_works, kernel_head

#: 'pmsn': complex modes as PMSN learns them (the default); 'modal' and 'tridiagonal': real
#: modes (ablations).
PARAMETERIZATIONS = ('pmsn', 'modal', 'tridiagonal')


@MODELS.register_module()
class DendriticDynamics(BaseModule):
    """Dendritic (multi-compartment) state-space operator, ``[B, C, H, W] → [B, C, H, W]``.

    Per channel a k-compartment linear system scanned over the H·W tokens in :attr:`order`
    (maths, parameterisations and stability: :mod:`~mmlrf.ops.dendritic.reference`). The
    evaluation path is :attr:`mode`, one of :data:`DYNAMICS_MODES` (table and signature:
    :mod:`~mmlrf.ops.dendritic.backends`), changeable after construction; all give the same
    operator.

    ``parameterization``:

    - ``'pmsn'`` (default, the paper's "following PMSN"): per channel k complex modes
      initialised from PMSN's coupling matrix
      (:func:`~mmlrf.ops.dendritic.reference.pmsn_init`); learnable ``log_a_real`` and
      ``a_imag`` (``λ = −exp(log_a_real) + i·a_imag``), the complex input ``b`` and readout
      ``c`` and ``log_dt`` (``Δ = exp(log_dt)``, initialised log-uniform in
      ``[dt_min, dt_max]``, then free, as in PMSN); the skip ``d`` starts standard normal, as
      PMSN's. The kernels oscillate while they decay; ``|ā| < 1`` for every parameter value.
    - ``'modal'``: real modes; M (a stable symmetric tridiagonal matrix) is diagonalised once,
      at initialisation, and its modes are the parameters; Δ is bounded to
      ``[dt_min, dt_max]``.
    - ``'tridiagonal'``: leaks and couplings are the parameters and M is re-diagonalised
      whenever they change (for coupling ablations; on a GPU a host round trip per training
      call). Under the same seed it starts as the 'modal' operator, and a checkpoint of either
      real form loads into a module of the other as the same operator.

    Bidirectional (``bidirectional=True``): the output is the sum of a causal scan and an
    anti-causal scan (the reversed token order), each with its own parameters (shared ones would
    force a symmetric two-sided kernel); the skip ``d`` is applied once.

    Args:
        channels (int): C, one independent k-compartment system per channel.
        num_dendrites (int): k, compartments per channel (default 8).
        mode (str): evaluation path (default 'fft', the reference path).
        bidirectional (bool): add an anti-causal scan with its own parameters.
        order (str): token scan order, one of :data:`SCAN_ORDERS`.
        parameterization (str): one of :data:`PARAMETERIZATIONS`.
        dt_min (float): smallest step size Δ (> 0; for 'pmsn' of the initialisation).
        dt_max (float): largest step size Δ (≥ dt_min; for 'pmsn' of the initialisation).
        chunk_size (int): the longest chunk of the ``'scan'`` and ``'stream'`` paths.
        init_cfg (dict | None): mmengine init config.

    Learnable parameters (``D`` = 2 directions if bidirectional else 1), ``d`` ``[C]`` (skip)
    and for 'pmsn' ``log_a_real``, ``a_imag`` ``[D, C, k]``, ``b``, ``c`` ``[D, C, k, 2]``
    (complex, as real and imaginary parts), ``log_dt`` ``[D, C]``; for the real forms
    ``leak_raw`` ``[D, C, k]``, ``dt_raw`` ``[D, C]``, ``b`` ``[D, C, k]`` (input vector),
    ``c`` ``[D, C, k]`` (soma readout), and for 'tridiagonal' ``coupling`` ``[D, C, k−1]``
    ('modal': ``leak_raw``, ``b`` and ``c`` in the modal basis).
    """

    def __init__(self, channels: int, num_dendrites: int = 8, mode: str = 'fft',
                 bidirectional: bool = False, order: str = 'raster',
                 parameterization: str = 'pmsn', dt_min: float = 1e-3,
                 dt_max: float = 1e-1, chunk_size: int = 32,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        channels = check_positive_int(channels, 'channels')
        k = check_positive_int(num_dendrites, 'num_dendrites')
        self.chunk_size = check_positive_int(chunk_size, 'chunk_size')
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
        self.mode = mode
        self.parameterization = parameterization
        ndir = 2 if bidirectional else 1
        if parameterization == 'pmsn':
            self._init_pmsn(ndir)
        else:
            self._init_real(ndir)
        self._cache: dict[str, tuple] = {}

    def _init_pmsn(self, ndir: int) -> None:
        """PMSN's modes for every channel, ``log_dt`` log-uniform in ``[dt_min, dt_max]``,
        skip ``d ~ N(0, 1)``."""
        shape = (ndir, self.channels, self.num_dendrites)
        log_a_real, a_imag, b, c = pmsn_init(self.num_dendrites)
        self.log_a_real = nn.Parameter(log_a_real.float().expand(shape).clone())
        self.a_imag = nn.Parameter(a_imag.float().expand(shape).clone())
        self.b = nn.Parameter(torch.view_as_real(b).float().expand(*shape, 2).clone())
        self.c = nn.Parameter(torch.view_as_real(c).float().expand(*shape, 2).clone())
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        self.log_dt = nn.Parameter(lo + (hi - lo) * torch.rand(ndir, self.channels))
        self.d = nn.Parameter(torch.randn(self.channels))

    def _init_real(self, ndir: int) -> None:
        """Leaks 1..k (distinct: eigh's gradient needs distinct eigenvalues), weak coupling,
        step sizes log-uniform in [dt_min, dt_max], unit input, random readout, unit skip."""
        k, channels = self.num_dendrites, self.channels
        leak = torch.arange(1, k + 1, dtype=torch.float32) - LEAK_MIN
        leak_raw = softplus_inverse(leak).expand(ndir, channels, k).clone()
        coupling = torch.full((ndir, channels, k - 1), 0.5)
        self.dt_raw = nn.Parameter(torch.logit(torch.rand(ndir, channels).clamp(1e-3, 1 - 1e-3)))
        b = torch.ones(ndir, channels, k)
        c = torch.randn(ndir, channels, k) / math.sqrt(k)
        if self.parameterization == 'modal':
            # Diagonalise the initial M once; from here on the modes are the parameters.
            leak_raw, b, c = (t.float() for t in modal_form(leak_raw, coupling, b, c))
        else:
            self.coupling = nn.Parameter(coupling)
        self.leak_raw = nn.Parameter(leak_raw)
        self.b = nn.Parameter(b)
        self.c = nn.Parameter(c)
        self.d = nn.Parameter(torch.ones(channels))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Checkpoints of the other parameterisation load as the same operator: a 'tridiagonal'
        one (it has ``coupling``) into a 'modal' module through
        :func:`~mmlrf.ops.dendritic.reference.modal_form`; a 'modal' one into a 'tridiagonal'
        module as the diagonal M it is (zero couplings)."""
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
        """Δ per direction and channel, ``[D, C]`` (real forms: in ``[dt_min, dt_max]``)."""
        if self.parameterization == 'pmsn':
            return torch.exp(self.log_dt)
        return step_sizes(self.dt_raw, self.dt_min, self.dt_max)

    def state_matrix(self) -> Tensor:
        """Continuous state matrix M in the parameters' basis, ``[D, C, k, k]`` (float64, or
        complex128 for 'pmsn'): tridiagonal, or diagonal (the modes)."""
        if self.parameterization == 'pmsn':
            return torch.diag_embed(torch.complex(-torch.exp(self.log_a_real.double()),
                                                  self.a_imag.double()))
        if self.parameterization == 'modal':
            return torch.diag_embed(-(LEAK_MIN + F.softplus(self.leak_raw.double())))
        return tridiagonal_matrix(self.leak_raw, self.coupling)

    def _cached(self, name: str, compute: Callable[[], list[DiscreteModes]]
                ) -> list[DiscreteModes]:
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

    def _skip(self, direction: int) -> Tensor:
        """The skip ``d`` of a direction, ``[C]``: the anti-causal direction has none (zeros)."""
        return self.d if direction == 0 else torch.zeros_like(self.d)

    def _discretise(self) -> tuple[Tensor, Tensor]:
        """``(log ā, w)`` of every direction, ``[D, C, k]`` float64 or complex128
        (differentiable)."""
        if self.parameterization == 'pmsn':
            # contiguous: a channels-last model (ChannelsLastHook) permutes 4-D parameters too
            return pmsn_discretisation(self.log_a_real, self.a_imag,
                                       torch.view_as_complex(self.b.contiguous()),
                                       torch.view_as_complex(self.c.contiguous()), self.log_dt)
        if self.parameterization == 'modal':
            return modal_discretisation(self.leak_raw, self.dt_raw, self.b, self.c,
                                        self.dt_min, self.dt_max)
        return tridiagonal_discretisation(self.leak_raw, self.coupling, self.dt_raw, self.b,
                                          self.c, self.dt_min, self.dt_max)

    def discrete_modes(self) -> list[DiscreteModes]:
        """The discretised operator per direction (float64; cached with autograd off)."""
        def compute() -> list[DiscreteModes]:
            log_a, w = self._discretise()
            return [DiscreteModes(log_a[i], w[i], self._skip(i)) for i in range(len(log_a))]
        return self._cached('modes', compute)

    def _triton_modes(self) -> list[DiscreteModes]:
        """complex64 modes with their kernel head per direction for the Triton backend: for
        'pmsn' from the fused discretisation (one launch forward and one backward) where
        :func:`~mmlrf.ops.dendritic.triton_ops.fused_discretisation_works` on this device."""
        def compute() -> list[DiscreteModes]:
            if self.parameterization == 'pmsn' and fused_discretisation_works(self.d.device):
                fused = discretise(self.log_a_real, self.a_imag, self.b, self.c, self.log_dt,
                                   CHUNK_MAX)
                # per direction as views whose backward launches nothing for one direction
                log_a, w, head = ([t.squeeze(0)] if len(t) == 1 else t.unbind(0) for t in fused)
                return [DiscreteModes(log_a[i], w[i], self._skip(i).float(), head[i])
                        for i in range(len(log_a))]
            return [DiscreteModes(complex64(m.log_a), complex64(m.w), m.d.float(),
                                  kernel_head(m.log_a.detach(), m.w.detach()))
                    for m in self.discrete_modes()]
        return self._cached('triton', compute)

    def discrete_state_matrix(self, direction: int = 0) -> Tensor:
        """``Ā = exp(M Δ)`` of one direction, ``[C, k, k]`` (float64; complex128 for 'pmsn').

        Args:
            direction (int): 0 (causal) or 1 (anti-causal, only if bidirectional).
        """
        if self.parameterization == 'pmsn':
            return torch.diag_embed(torch.exp(self.discrete_modes()[direction].log_a))
        lam, vec = torch.linalg.eigh(self.state_matrix()[direction])
        lam_dt = lam.clamp(max=-LEAK_MIN) * self.step_size().double()[direction, :, None]
        return vec @ torch.diag_embed(torch.exp(lam_dt)) @ vec.transpose(-1, -2)

    def impulse_response(self, n: int, direction: int = 0) -> Tensor:
        """Kernel ``K[m] = Re(C Ā^m B̄)`` (without the skip d), ``[C, n]`` (float64).

        Args:
            n (int): number of lags.
            direction (int): 0 (causal) or 1 (anti-causal, only if bidirectional).
        """
        modes = self.discrete_modes()[direction]
        return impulse_kernel(modes.log_a, modes.w, n)

    # ------------------------------------------------------------------ streaming
    def init_state(self, batch: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
        """Zero modal state for :meth:`step`, ``[B, C, k]`` (complex for 'pmsn').

        Args:
            batch (int): B.
            device (torch.device | None): of the state (default: the parameters').
            dtype (torch.dtype | None): the real precision (default: the parameters').
        """
        dtype = dtype or self.d.dtype
        if self.parameterization == 'pmsn':
            dtype = complex_dtype(dtype)
        return torch.zeros(batch, self.channels, self.num_dendrites,
                           device=device or self.d.device, dtype=dtype)

    def step(self, u_n: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Stream one token (causal operator only): O(C·k) state per image.

        Tokens must be fed in the scan order
        (:func:`~mmlrf.ops.dendritic.reference.scan_permutation`).

        Args:
            u_n (Tensor): ``[B, C]`` the next token.
            state (Tensor): ``[B, C, k]`` from :meth:`init_state` or a previous step.

        Returns:
            tuple[Tensor, Tensor]: ``y_n`` ``[B, C]`` and the new state ``[B, C, k]``.
        """
        if self.bidirectional:
            raise RuntimeError('step() streams the causal operator; it needs bidirectional=False')
        return recurrent_step(u_n, state, cast_modes(self.discrete_modes()[0], u_n.dtype))

    # ------------------------------------------------------------------ forward
    def resolved_mode(self, x: Tensor) -> str:
        """The concrete path ``forward(x)`` takes (resolves ``'auto'``)."""
        return resolve_mode(self.mode, x)

    def forward(self, x: Tensor) -> Tensor:
        """Run the operator over the tokens of ``x`` in :attr:`order`.

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
        backend = BACKENDS[mode]
        perm = scan_permutation(height, width, self.order, x.device)
        # token sequences contiguous: a channels-last x would make every matmul of the scan
        # copy its operands (no copy for the usual contiguous layout)
        u = x.contiguous().flatten(2)
        if perm is not None:
            u = u.index_select(-1, perm)
        # once per call, both directions (in training nothing is cached)
        modes = self._triton_modes() if mode == 'triton' else self.discrete_modes()
        y = backend(u, modes[0], False, self.chunk_size)
        if self.bidirectional:
            y = y.add_(backend(u, modes[1], True, self.chunk_size))
        if perm is not None:
            y = torch.empty_like(y).index_copy_(-1, perm, y)
        return y.reshape(bsz, ch, height, width)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, num_dendrites={self.num_dendrites}, '
                f'mode={self.mode!r}, bidirectional={self.bidirectional}, order={self.order!r}, '
                f'parameterization={self.parameterization!r}, '
                f'dt=[{self.dt_min:g}, {self.dt_max:g}]')
