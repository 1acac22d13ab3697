"""Causal SSA (plain, normalised and decayed accumulation) against a masked naive reference."""
import pytest
import torch

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)

from attention_reference import (CV, HEADS, build_mixer, check_builds_from_config,
                                 check_invalid, naive_attention, qkv)


@pytest.mark.parametrize('accumulation', ['plain', 'normalised', 'decayed'])
@pytest.mark.parametrize('order, chunk_size', [('kv', 4), ('kv', 64), ('kv', 1), ('qk', 64)])
def test_causal_ssa_matches_masked_reference(accumulation, order, chunk_size):
    q, k, v = qkv(h=3, w=5)  # N = 15, not a multiple of the chunk size 4
    gammas = [0.8, 0.6]
    decay = dict(decay=gammas) if accumulation == 'decayed' else {}
    mixer = build_mixer(dict(type='CausalSSA', accumulation=accumulation, order=order,
                             scale=0.5, chunk_size=chunk_size, **decay))
    if accumulation == 'decayed':  # the decay is stored as a float32 logit: use its exact value
        gammas = torch.sigmoid(mixer.decay_logit).tolist()
        assert gammas == pytest.approx([0.8, 0.6], abs=1e-7)

    def weight(h, n, j):
        if j > n:
            return 0.0
        if accumulation == 'decayed':
            return gammas[h] ** (n - j)
        return 1.0 / (n + 1) if accumulation == 'normalised' else 1.0

    ref = naive_attention(q, k, v, HEADS, weight) * 0.5
    torch.testing.assert_close(mixer(q, k, v, None), ref, rtol=1e-10, atol=1e-10)


def test_causal_ssa_is_causal_and_default_decay():
    q, k, v = qkv(h=4, w=4)
    mixer = build_mixer(dict(type='CausalSSA', accumulation='decayed', chunk_size=3))
    gamma = torch.sigmoid(mixer.decay_logit)
    torch.testing.assert_close(gamma, torch.tensor([1 - 2 ** -5, 1 - 2 ** -6],
                                                   dtype=gamma.dtype))
    out = mixer(q, k, v, None).flatten(3)
    k2, v2 = k.clone().flatten(3), v.clone().flatten(3)
    k2[..., 9:], v2[..., 9:] = 1 - k2[..., 9:], 1 - v2[..., 9:]
    out2 = mixer(q, k2.reshape(k.shape), v2.reshape(v.shape), None).flatten(3)
    torch.testing.assert_close(out2[..., :9], out[..., :9])
    assert not torch.allclose(out2[..., 9:], out[..., 9:])


def test_builds_from_config():
    check_builds_from_config(dict(type='CausalSSA', accumulation='decayed'), CV)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='CausalSSA', accumulation='sum'), 'accumulation'),
    (dict(type='CausalSSA', order='raster'), 'order'),
    (dict(type='CausalSSA', chunk_size=0), 'chunk_size'),
    (dict(type='CausalSSA', accumulation='decayed', decay=1.0), 'decay'),
    (dict(type='CausalSSA', accumulation='decayed', decay=[0.5, 0.5, 0.5]), 'decay'),
    (dict(type='CausalSSA', decay=0.5), 'decay'),
])
def test_invalid_arguments(cfg, name):
    check_invalid(cfg, name)
