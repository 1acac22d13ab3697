"""Multi-step leaky integrate-and-fire neuron."""
from __future__ import annotations

import torch
from mmseg.registry import MODELS
from torch import Tensor, nn

from .layout import check_multistep
from .surrogate import SURROGATES, spike


@MODELS.register_module()
class MultiStepLIF(nn.Module):
    """Multi-step LIF neuron over ``[T, B, ...]`` (spikingjelly's ``LIFNode`` in step mode 'm').

    ``H[t] = V[t-1] + (X[t] - (V[t-1] - v_reset)) / tau``, ``S[t] = Θ(H[t] - v_threshold)``,
    then hard reset (``V = v_reset`` where spiking) or soft reset (``V = H - v_threshold·S``).

    The membrane starts at ``v_reset`` on every call unless ``stateful=True`` (streaming use), in
    which case it carries over between calls until :meth:`reset` — the reset hook calls it.

    Args:
        tau (float): membrane time constant, > 1.
        v_threshold (float): firing threshold.
        v_reset (float): reset potential (hard reset) and resting potential.
        reset (str): 'hard' or 'soft'.
        detach_reset (bool): do not back-propagate through the reset.
        surrogate (str): surrogate gradient, 'sigmoid' or 'atan'.
        alpha (float): surrogate sharpness.
        ndim (int | None): expected input rank (5 for ``[T, B, C, H, W]``); None accepts any.
        stateful (bool): keep the membrane between calls.
    """

    def __init__(self,
                 tau: float = 2.0,
                 v_threshold: float = 1.0,
                 v_reset: float = 0.0,
                 reset: str = 'hard',
                 detach_reset: bool = True,
                 surrogate: str = 'sigmoid',
                 alpha: float = 4.0,
                 ndim: int | None = 5,
                 stateful: bool = False) -> None:
        super().__init__()
        if not tau > 1.0:
            raise ValueError(f'tau must be > 1, got {tau}')
        if reset not in ('hard', 'soft'):
            raise ValueError(f"reset must be one of ('hard', 'soft'), got {reset!r}")
        if surrogate not in SURROGATES:
            raise ValueError(f'surrogate must be one of {SURROGATES}, got {surrogate!r}')
        if ndim is not None and ndim < 2:
            raise ValueError(f'ndim must be >= 2 or None, got {ndim}')
        self.tau, self.v_threshold, self.v_reset = tau, v_threshold, v_reset
        self.reset_mode, self.detach_reset = reset, detach_reset
        self.surrogate, self.alpha = surrogate, alpha
        self.ndim, self.stateful = ndim, stateful
        self.v: Tensor | None = None

    def reset(self) -> None:
        """Forget the membrane state (only matters with ``stateful=True``)."""
        self.v = None

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """``x``: ``[T, B, ...]`` input current → ``[T, B, ...]`` spikes in {0, 1}. ``inplace``
        is accepted for the common neuron interface; the spikes are always a new tensor."""
        check_multistep(x, self.ndim, 'MultiStepLIF input')
        v = self.v if self.stateful and self.v is not None else torch.full_like(x[0], self.v_reset)
        spikes = []
        for xt in x:
            h = v + (xt - (v - self.v_reset)) / self.tau
            s = spike(h - self.v_threshold, self.surrogate, self.alpha)
            s_r = s.detach() if self.detach_reset else s
            if self.reset_mode == 'hard':
                v = h * (1 - s_r) + self.v_reset * s_r
            else:
                v = h - self.v_threshold * s_r
            spikes.append(s)
        if self.stateful:
            self.v = v.detach()
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return (f'tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}, '
                f'reset={self.reset_mode!r}, surrogate={self.surrogate!r}')
