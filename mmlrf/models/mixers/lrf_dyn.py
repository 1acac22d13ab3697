"""LRF-Dyn (paper Eq. 11-15): attention as dendritic neuron dynamics plus a local receptive
field."""
from __future__ import annotations

from collections.abc import Sequence

from mmseg.registry import MODELS
from torch import Tensor, nn

from ...ops.dendritic import DendriticDynamics
from ..layers import seq_apply
from .base import TokenMixer
from .lrf_ssa import LRFBranch

LRF_DYN_TOKENS = ('v', 'k*v', 'x')


def set_dynamics_mode(model: nn.Module, mode: str) -> int:
    """Switch every :class:`DendriticDynamics` inside ``model`` to ``mode``.

    E.g. ``set_dynamics_mode(segmentor, 'recurrent')`` puts a whole model on the token-by-token
    (streaming) path; ``'auto'`` restores :class:`LRFDyn`'s default. The weights are unchanged.

    Args:
        model (nn.Module): any module (itself included in the search).
        mode (str): one of :data:`mmlrf.ops.dendritic.DYNAMICS_MODES`.

    Returns:
        int: how many operators were switched.
    """
    found = [m for m in model.modules() if isinstance(m, DendriticDynamics)]
    for module in found:
        module.mode = mode  # the setter validates the mode
    return len(found)


@MODELS.register_module()
class LRFDyn(TokenMixer):
    """LRF-Dyn token mixer (method.md §4).

    ``u`` = token input by ``token``: 'v' (V spikes), 'k*v' (``K ⊙ V``) or 'x' (the block input
    spikes) → ``y = DendriticDynamics(u)`` per frame on the ``[T*B, C, H, W]`` view (each time
    step of each image is one token sequence) → ``y = y + LRFBranch(y)`` → optionally
    ``y = Q ⊙ y`` (``query_gate``) → output (real-valued, before the block's attention neuron).

    :attr:`requires` follows the options: 'v' for 'v', 'k' and 'v' for 'k*v', 'x' for 'x', plus
    'q' with the query gate. 'k*v', 'x' and the query gate combine C-channel tensors with the
    dynamics' channels, so they need ``v_channels == qk_channels`` (block ``v_ratio=1``).

    Streaming: the dynamics' evaluation path is ``mode`` ('fft' parallel, 'recurrent' token by
    token, 'scan', 'stream', 'triton', 'auto'; see :class:`DendriticDynamics`); switch it later
    with :meth:`set_dynamics_mode` or, for a whole model, :func:`set_dynamics_mode` (in a
    config: ``model.backbone.attn.mode='stream'`` or the backbone's ``dynamics_mode``). The
    default 'auto' is the fused Triton kernel on CUDA and the chunked scan elsewhere: neither
    materialises the ``[C, k, N]`` kernel of 'fft'.

    Args:
        token (str): token input, one of 'v', 'k*v', 'x'.
        num_dendrites (int): compartments k per channel (default 8).
        mode (str): dynamics evaluation path (default 'auto').
        bidirectional (bool): add an anti-causal scan.
        order (str): token scan order: 'raster', 'snake' or 'column'.
        dilations (Sequence[int]): dilation set of the LRF branch, default (3, 5).
        bn (bool): BatchNorm after each depth-wise conv of the LRF branch.
        query_gate (bool): multiply the output by the Q spikes.
        dynamics_cfg (dict | None): further :class:`DendriticDynamics` arguments
            (``parameterization``, ``dt_min``, ``dt_max``, ``chunk_size``).
        **kwargs: see :class:`TokenMixer`.

    Shapes: ``q, k, x``: ``[T, B, C, H, W]``, ``v``: ``[T, B, Cv, H, W]`` →
    ``[T, B, Cv, H, W]``.
    """

    def __init__(self,
                 token: str = 'v',
                 num_dendrites: int = 8,
                 mode: str = 'auto',
                 bidirectional: bool = False,
                 order: str = 'raster',
                 dilations: Sequence[int] = (3, 5),
                 bn: bool = True,
                 query_gate: bool = False,
                 dynamics_cfg: dict | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if token not in LRF_DYN_TOKENS:
            raise ValueError(f'token must be one of {LRF_DYN_TOKENS}, got {token!r}')
        elementwise = [f'token={token!r}'] * (token != 'v') + ['query_gate=True'] * bool(query_gate)
        if elementwise and self.v_channels != self.qk_channels:
            raise ValueError(f'{" and ".join(elementwise)} needs v_channels == qk_channels, got '
                             f'{self.v_channels} and {self.qk_channels} (use v_ratio=1)')
        self.token, self.query_gate = token, bool(query_gate)
        needed = {'v': {'v'}, 'k*v': {'k', 'v'}, 'x': {'x'}}[token]
        if query_gate:
            needed.add('q')
        self.requires = tuple(name for name in ('q', 'k', 'v', 'x') if name in needed)
        clash = set(dynamics_cfg or {}) & {'channels', 'num_dendrites', 'mode', 'bidirectional',
                                           'order'}
        if clash:
            raise ValueError(f'dynamics_cfg must not repeat the LRFDyn arguments {sorted(clash)}; '
                             'set them directly')
        self.dynamics = DendriticDynamics(
            self.v_channels, num_dendrites=num_dendrites, mode=mode,
            bidirectional=bidirectional, order=order, **(dynamics_cfg or {}))
        self.lrf = LRFBranch(self.v_channels, dilations, bn, self.conv_cfg, self.norm_cfg)

    def set_dynamics_mode(self, mode: str) -> None:
        """Switch the dynamics' evaluation path (e.g. 'fft' ↔ 'recurrent'); weights unchanged."""
        self.dynamics.mode = mode

    def forward(self, q: Tensor | None, k: Tensor | None, v: Tensor | None,
                x: Tensor | None) -> Tensor:
        u = {'v': v, 'x': x}.get(self.token)
        if self.token == 'k*v':
            u = k * v
        y = seq_apply(self.dynamics, u)
        local = self.lrf(y)
        local += y  # = y + lrf(y); `local` is a fresh sum nothing saved
        del y
        return q * local if self.query_gate else local

    def extra_repr(self) -> str:
        return f'token={self.token!r}, query_gate={self.query_gate}'
