"""Test helper: spike inputs of token mixers and a naive attention reference (explicit loops
over tokens)."""
import torch
from mmseg.registry import MODELS

#: Heads, Q/K channels and V channels of the test mixers.
HEADS, C, CV = 2, 8, 8


def spikes(*shape, seed=0, p=0.5):
    """Binary float64 spikes with firing probability ``p``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(torch.float64)


def qkv(t=2, b=2, h=3, w=5, cv=CV, seed=0):
    """Q, K ``[t, b, C, h, w]`` and V ``[t, b, cv, h, w]`` spikes."""
    return (spikes(t, b, C, h, w, seed=seed), spikes(t, b, C, h, w, seed=seed + 1),
            spikes(t, b, cv, h, w, seed=seed + 2))


def naive_attention(q, k, v, heads, weight):
    """``out[n] = Σ_j weight(h, n, j) (q_n · k_j) v_j`` per head, by explicit loops over tokens.

    Heads are contiguous channel blocks and tokens are row-major (h, w) positions.
    """
    t, b, c, hh, ww = q.shape
    cv = v.shape[2]
    d, dv, n_tok = c // heads, cv // heads, hh * ww
    qf, kf, vf = q.flatten(3), k.flatten(3), v.flatten(3)  # [T, B, C, N]
    out = torch.zeros(t, b, cv, n_tok, dtype=q.dtype)
    for h in range(heads):
        qk, vs = slice(h * d, (h + 1) * d), slice(h * dv, (h + 1) * dv)
        for n in range(n_tok):
            for j in range(n_tok):
                wgt = weight(h, n, j)
                if wgt:
                    score = (qf[:, :, qk, n] * kf[:, :, qk, j]).sum(-1, keepdim=True)
                    out[:, :, vs, n] += wgt * score * vf[:, :, vs, j]
    return out.reshape(t, b, cv, hh, ww)


def build_mixer(cfg, **kwargs):
    """A float64 token mixer built from ``cfg`` with :data:`HEADS`, :data:`C`, :data:`CV`
    (``kwargs`` override them)."""
    return MODELS.build(dict(dict(cfg, num_heads=HEADS, qk_channels=C, v_channels=CV),
                             **kwargs)).double()


def check_invalid(cfg, name):
    """Building ``cfg`` (mixer arguments added) raises a ValueError naming ``name``."""
    import pytest
    cfg = dict(dict(num_heads=HEADS, qk_channels=C, v_channels=CV), **cfg)
    with pytest.raises(ValueError, match=name):
        MODELS.build(cfg)


def check_builds_from_config(cfg, out_channels):
    """``cfg`` builds that mixer type from mmseg's registry; its output has ``out_channels``."""
    mixer = MODELS.build(dict(cfg, num_heads=HEADS, qk_channels=C, v_channels=CV))
    assert type(mixer).__name__ == cfg['type']
    q, k, v = (s.float() for s in qkv(t=1))
    assert mixer(q, k, v, q).shape == (1, 2, out_channels, 3, 5)
