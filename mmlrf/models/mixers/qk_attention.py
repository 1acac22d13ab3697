"""QKFormer's Q-K token attention (QKTA): a binary token mask from Q gates K."""
from __future__ import annotations

from mmseg.registry import MODELS
from torch import Tensor

from ..neurons import build_neuron
from .base import TokenMixer


@MODELS.register_module()
class QKTokenAttention(TokenMixer):
    """Q-K token attention of QKFormer (Zhou et al., 2024), linear in the token count.

    Per head h and token n: ``a[h, n] = SN(Σ_{i ∈ head h} Q[i, n])`` (a token mask), then
    ``out[i, n] = a[h(i), n] · K[i, n]``. No V: ``requires = ('q', 'k')`` and the output has
    ``qk_channels`` channels.

    Args:
        neuron (dict): config of the mask neuron SN, applied to ``[T, B, heads, H, W]``;
            QKFormer uses a multi-step LIF with threshold 0.5 (the default).
        **kwargs: see :class:`TokenMixer`.

    Shapes: ``q, k``: ``[T, B, C, H, W]`` → ``[T, B, C, H, W]``.
    """

    requires = ('q', 'k')

    def __init__(self, neuron: dict = dict(type='MultiStepLIF', v_threshold=0.5),
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.token_spike = build_neuron(neuron)

    @property
    def out_channels(self) -> int:
        """Channels of the output: those of K."""
        return self.qk_channels

    def forward(self, q: Tensor, k: Tensor, v: Tensor | None = None,
                x: Tensor | None = None) -> Tensor:
        t, b, c, h, w = q.shape
        heads = self.num_heads
        mask = self.token_spike(q.reshape(t, b, heads, c // heads, h, w).sum(3))
        return (mask.unsqueeze(3) * k.reshape(t, b, heads, c // heads, h, w)).reshape(k.shape)
