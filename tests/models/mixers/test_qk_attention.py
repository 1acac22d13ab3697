"""QK token attention (QKFormer's QKTA) against a hand-computed token mask."""
import pytest
import torch

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)

from attention_reference import (C, HEADS, build_mixer, check_builds_from_config,
                                 check_invalid, qkv)


def test_qk_token_attention_matches_hand_mask():
    q, k, _ = qkv(t=1)
    # Default mask neuron: LIF, tau=2, V_th=0.5; in one step it spikes iff Σq / 2 >= 0.5.
    mixer = build_mixer(dict(type='QKTokenAttention'))
    t, b, c, h, w = q.shape
    head_sum = q.reshape(t, b, HEADS, c // HEADS, h, w).sum(3)
    assert 0 < (head_sum >= 1).float().mean() < 1  # the mask is not trivial
    ref = torch.cat([(head_sum[:, :, i:i + 1] >= 1) * k[:, :, i * 4:(i + 1) * 4]
                     for i in range(HEADS)], dim=2)
    out = mixer(q, k, None, None)
    assert mixer.requires == ('q', 'k') and mixer.out_channels == C
    torch.testing.assert_close(out, ref.to(out.dtype))


def test_builds_from_config():
    check_builds_from_config(dict(type='QKTokenAttention'), C)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='QKTokenAttention', neuron=dict(type='IF')), 'neuron type'),
])
def test_invalid_arguments(cfg, name):
    check_invalid(cfg, name)
