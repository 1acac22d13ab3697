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

LRF_DYN_TOKENS = ('k*v', 'v', 'x')


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


def per_head_product(qk: Tensor, v: Tensor) -> Tensor:
    """``qk ⊙ v`` where V is ``r`` times wider than Q/K: channel ``e`` of V meets channel
    ``e // r`` of ``qk``, so each head's Q/K channels meet that head's V channels (heads are
    contiguous channel blocks), without a copy of ``qk``.

    Args:
        qk (Tensor): ``[T, B, C, H, W]``.
        v (Tensor): ``[T, B, r·C, H, W]``.

    Returns:
        Tensor: ``[T, B, r·C, H, W]``.
    """
    return (v.unflatten(2, (qk.shape[2], -1)) * qk.unsqueeze(3)).flatten(2, 3)


@MODELS.register_module()
class LRFDyn(TokenMixer):
    """LRF-Dyn token mixer (method.md §4).

    Causal linear attention (Eq. 11) reads a running state with the query,
    ``o_n = q_n Σ_{j≤n} k_jᵀ v_j``: the keys and values drive a ``d×d`` state per head. LRF-Dyn
    replaces that state by the dendritic neuron of each channel (Eq. 12), driven by the same
    presynaptic product and read out by the same query::

        s = DendriticDynamics(k ⊙ v)            # per channel, over the tokens in scan order
        o = q ⊙ (s + LRFBranch(s))              # the local receptive field on the dynamics

    so no ``N×N`` or ``d×d`` map exists and the host attention's Q, K and V projections (and
    their official weights) are all used. Where V is ``r`` times wider than Q/K (SDT-V3:
    ``r = 4``), V channel ``e`` meets Q/K channel ``e // r``: each head's Q/K channels gate that
    head's V channels (:func:`per_head_product`), with no new parameters. The dynamics act per
    frame on the ``[T*B, Cv, H, W]`` view (each time step of each image is one token sequence).

    Options: ``token`` the dynamics' input, ``'k*v'`` (default), ``'v'`` or ``'x'`` (the block
    input spikes); ``query_gate`` the readout through Q (default on). ``token='v',
    query_gate=False`` is the lighter Q/K-free ablation: it builds no Q or K projection.
    :attr:`requires` follows the options.

    Streaming: the dynamics' evaluation path is ``mode`` ('fft' parallel, 'recurrent' token by
    token, 'scan', 'stream', 'triton', 'auto'; see :class:`DendriticDynamics`); switch it later
    with :meth:`set_dynamics_mode` or, for a whole model, :func:`set_dynamics_mode`. The default
    'auto' is the fused Triton kernel on CUDA and the chunked scan elsewhere.

    Args:
        token (str): dynamics input, one of :data:`LRF_DYN_TOKENS`.
        query_gate (bool): read the dynamics out through the Q spikes.
        num_dendrites (int): compartments k per channel (default 8).
        mode (str): dynamics evaluation path (default 'auto').
        bidirectional (bool): add an anti-causal scan.
        order (str): token scan order: 'raster', 'snake' or 'column'.
        lrf (bool): build the LRF branch; False keeps ``q ⊙ s`` alone (the ablation of the
            local receptive field; ``dilations`` and ``bn`` are then unused).
        dilations (Sequence[int]): dilation set of the LRF branch, default (3, 5).
        bn (bool): a norm layer after each depth-wise conv of the LRF branch.
        dynamics_cfg (dict | None): further :class:`DendriticDynamics` arguments
            (``parameterization``, ``dt_min``, ``dt_max``, ``chunk_size``).
        **kwargs: see :class:`TokenMixer`.

    Shapes: ``q, k, x``: ``[T, B, C, H, W]``, ``v``: ``[T, B, Cv, H, W]`` with ``Cv = r·C`` →
    ``[T, B, Cv, H, W]``.
    """

    pretrained_additions = ('dynamics', 'lrf')

    def __init__(self,
                 token: str = 'k*v',
                 query_gate: bool = True,
                 num_dendrites: int = 8,
                 mode: str = 'auto',
                 bidirectional: bool = False,
                 order: str = 'raster',
                 lrf: bool = True,
                 dilations: Sequence[int] = (3, 5),
                 bn: bool = True,
                 dynamics_cfg: dict | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if token not in LRF_DYN_TOKENS:
            raise ValueError(f'token must be one of {LRF_DYN_TOKENS}, got {token!r}')
        if self.v_channels % self.qk_channels:
            raise ValueError(f'v_channels ({self.v_channels}) must be a multiple of qk_channels '
                             f'({self.qk_channels}): each V channel meets one Q/K channel')
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
        self.lrf = (LRFBranch(self.v_channels, dilations, bn, self.conv_cfg, self.norm_cfg)
                    if lrf else None)

    def set_dynamics_mode(self, mode: str) -> None:
        """Switch the dynamics' evaluation path (e.g. 'fft' ↔ 'recurrent'); weights unchanged."""
        self.dynamics.mode = mode

    def _input(self, k: Tensor | None, v: Tensor | None, x: Tensor | None) -> Tensor:
        """The dynamics' input ``[T, B, Cv, H, W]`` for :attr:`token`."""
        if self.token == 'v':
            return v
        if self.token == 'k*v':
            return per_head_product(k, v)
        ratio = self.v_channels // self.qk_channels
        return x if ratio == 1 else x.repeat_interleave(ratio, dim=2)

    def forward(self, q: Tensor | None, k: Tensor | None, v: Tensor | None,
                x: Tensor | None) -> Tensor:
        y = seq_apply(self.dynamics, self._input(k, v, x))
        if self.lrf is None:
            return per_head_product(q, y) if self.query_gate else y
        local = self.lrf(y)
        local += y  # = y + lrf(y); `local` is a fresh sum nothing saved
        del y
        return per_head_product(q, local) if self.query_gate else local

    def extra_repr(self) -> str:
        return f'token={self.token!r}, query_gate={self.query_gate}, lrf={self.lrf is not None}'
