"""Causal spiking self-attention over raster tokens (the causal-SSA baseline of method.md §4, §7.2).

Convention (**inclusive**): ``o_n = s · q_n Σ_{j≤n} w(n, j) k_jᵀ v_j``, tokens ``n = 0..N-1`` in
row-major (h, w) order. method.md writes ``j < n`` for linear attention; the inclusive sum is used
here because it is the lower-triangular (diagonal included) masked QK-first product, and it matches
the dendritic dynamics ``y_n = C s_n + D u_n`` of LRF-Dyn, whose state ``s_n`` already contains
token n. With ``j < n`` the first token would always output zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils import check_positive_int
from ..layers import merge_heads, split_heads
from .base import TokenMixer
from .ssa import SSA_ORDERS

ACCUMULATIONS = ('plain', 'normalised', 'decayed')


def _decay_weights(log_gamma: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``γ^(rows-cols)`` where ``rows >= cols`` and 0 elsewhere, per head.

    Args:
        log_gamma (Tensor): ``[heads]``, ``log γ <= 0``.
        rows, cols (Tensor): integer positions, broadcastable to each other.

    Returns:
        Tensor: ``[heads, *broadcast(rows, cols).shape]``.
    """
    diff = rows - cols
    # Clamp before exp so masked entries never evaluate γ^(negative) (overflow → NaN gradients).
    exponent = diff.clamp(min=0).to(log_gamma.dtype)
    weights = torch.exp(exponent * log_gamma.reshape(-1, *([1] * diff.dim())))
    return torch.where(diff >= 0, weights, torch.zeros_like(weights))


def causal_ssa_product(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor,
                       order: str = 'kv', chunk_size: int = 64) -> Tensor:
    """``o_n = q_n Σ_{j≤n} γ^(n-j) k_jᵀ v_j`` per head (γ = 1 gives the plain causal sum).

    Args:
        q, k (Tensor): ``[..., heads, N, d]``.
        v (Tensor): ``[..., heads, N, dv]``.
        log_gamma (Tensor): ``[heads]``, ``log γ`` per head (0 for no decay).
        order (str): 'kv': chunked cumulative-state evaluation — within a chunk of ``chunk_size``
            tokens a masked ``L×L`` product, across chunks a carried ``d×dv`` state per head
            (memory O(N·L + (N/L)·d·dv), no N×N map); 'qk': the masked N×N QK-first product.
        chunk_size (int): chunk length L of the 'kv' path.

    Returns:
        Tensor: ``[..., heads, N, dv]`` (unscaled).
    """
    n = q.shape[-2]
    if order == 'qk':
        pos = torch.arange(n, device=q.device)
        mask = _decay_weights(log_gamma, pos[:, None], pos[None, :])
        return ((q @ k.transpose(-1, -2)) * mask) @ v
    if order != 'kv':
        raise ValueError(f'order must be one of {SSA_ORDERS}, got {order!r}')
    length = min(chunk_size, n)
    chunks = math.ceil(n / length)
    pad = chunks * length - n
    if pad:  # zero k, v tokens add nothing to the state; outputs of padded q are dropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.reshape(*t.shape[:-2], chunks, length, t.shape[-1]) for t in (q, k, v))
    lg = log_gamma.reshape(-1, 1)  # [heads, 1]
    pos = torch.arange(length, device=q.device)
    # Inside a chunk: masked product with weights γ^(i-j).
    intra = ((q @ k.transpose(-1, -2)) * _decay_weights(log_gamma, pos[:, None], pos[None, :])
             .unsqueeze(1)) @ v
    # Increment of chunk z to the state at its last token: Σ_j γ^(L-1-j) k_jᵀ v_j.
    k_weight = torch.exp((length - 1 - pos).to(lg.dtype) * lg)  # [heads, L]
    increments = (k * k_weight[:, None, :, None]).transpose(-1, -2) @ v  # [..., heads, C, d, dv]
    # State before chunk c: Σ_{z<c} γ^(L(c-1-z)) increment_z.
    idx = torch.arange(chunks, device=q.device)
    carry = _decay_weights(log_gamma * length, idx[:, None] - 1, idx[None, :])  # [heads, C, C]
    states = torch.einsum('hcz,...hzde->...hcde', carry, increments)
    # Contribution of the carried state to position i of a chunk: γ^(i+1) q_i S.
    q_weight = torch.exp((pos + 1).to(lg.dtype) * lg)  # [heads, L]
    inter = (q * q_weight[:, None, :, None]) @ states
    out = intra + inter
    return out.reshape(*out.shape[:-3], chunks * length, out.shape[-1])[..., :n, :]


@MODELS.register_module()
class CausalSSA(TokenMixer):
    """Causal spiking self-attention over raster tokens, without softmax.

    ``o_n = s · q_n Σ_{j≤n} k_jᵀ v_j`` (inclusive, see the module docstring), then by accumulation:

    - 'plain': as written.
    - 'normalised': divided by the number of accumulated tokens ``n + 1`` (a running mean of
      ``k_jᵀ v_j``; chosen over ``q_n·Σ k_j``, which is 0 for silent spike tokens).
    - 'decayed': ``Σ_{j≤n} γ_h^(n-j) k_jᵀ v_j`` with a per-head decay ``γ_h ∈ (0, 1)``,
      parameterised as ``γ = sigmoid(logit)`` (fixed buffer, or a parameter if ``learn_decay``).

    Args:
        accumulation (str): 'plain', 'normalised' or 'decayed'.
        decay (float | Sequence[float] | None): γ for 'decayed' only, one value or one per head,
            each in (0, 1); None means RetNet's schedule ``γ_h = 1 - 2^(-5-h)``.
        learn_decay (bool): make the decay learnable ('decayed' only).
        order (str): 'kv' (chunked cumulative state, default) or 'qk' (masked N×N product).
        scale (float | None): product scale; None means ``2 / sqrt(d)``, d = qk head size.
        chunk_size (int): chunk length of the 'kv' path (>= 1).
        **kwargs: see :class:`TokenMixer`.

    Shapes: ``q, k``: ``[T, B, C, H, W]``, ``v``: ``[T, B, Cv, H, W]`` → ``[T, B, Cv, H, W]``.
    """

    def __init__(self,
                 accumulation: str = 'plain',
                 decay: float | Sequence[float] | None = None,
                 learn_decay: bool = False,
                 order: str = 'kv',
                 scale: float | None = None,
                 chunk_size: int = 64,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if accumulation not in ACCUMULATIONS:
            raise ValueError(f'accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}')
        if order not in SSA_ORDERS:
            raise ValueError(f'order must be one of {SSA_ORDERS}, got {order!r}')
        chunk_size = check_positive_int(chunk_size, 'chunk_size')
        if accumulation != 'decayed' and (decay is not None or learn_decay):
            raise ValueError("decay and learn_decay apply only to accumulation='decayed', "
                             f'got accumulation={accumulation!r}')
        self.accumulation, self.order, self.chunk_size = accumulation, order, chunk_size
        self.scale = float(scale) if scale is not None else 2.0 / math.sqrt(
            self.qk_channels // self.num_heads)
        if accumulation == 'decayed':
            logit = torch.logit(self._decay_values(decay)).to(torch.get_default_dtype())
            if learn_decay:
                self.decay_logit = nn.Parameter(logit)
            else:
                self.register_buffer('decay_logit', logit)

    def _decay_values(self, decay: float | Sequence[float] | None) -> Tensor:
        """Per-head γ as a float64 ``[heads]`` tensor, validated to lie in (0, 1)."""
        heads = self.num_heads
        if decay is None:
            return 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))
        values = [decay] * heads if isinstance(decay, (int, float)) else list(decay)
        if len(values) != heads or not all(0 < float(g) < 1 for g in values):
            raise ValueError(f'decay must be a float or {heads} floats, each in (0, 1), '
                             f'got {decay!r}')
        return torch.tensor(values, dtype=torch.float64)

    def log_gamma(self, ref: Tensor) -> Tensor:
        """``log γ`` per head (zeros unless 'decayed'), on ``ref``'s device and dtype."""
        if self.accumulation != 'decayed':
            return ref.new_zeros(self.num_heads)
        return F.logsigmoid(self.decay_logit).to(ref)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor | None = None) -> Tensor:
        qh, kh, vh = (split_heads(t, self.num_heads) for t in (q, k, v))
        out = causal_ssa_product(qh, kh, vh, self.log_gamma(qh), self.order, self.chunk_size)
        out = out * self.scale
        if self.accumulation == 'normalised':
            count = torch.arange(1, out.shape[-2] + 1, device=out.device, dtype=out.dtype)
            out = out / count[:, None]
        return merge_heads(out, v.shape[-2:])

    def extra_repr(self) -> str:
        return (f'accumulation={self.accumulation!r}, order={self.order!r}, '
                f'scale={self.scale:.6g}, num_heads={self.num_heads}')
