"""Spiking self-attention (SSA) against a naive loop reference; the token-mixer base class's
argument checks."""
import math

import pytest
import torch

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)
from mmlrf.models.mixers import SSA, TokenMixer, ssa_product

from attention_reference import (C, CV, HEADS, build_mixer, check_builds_from_config,
                                 check_invalid, naive_attention, qkv)


def test_ssa_orders_agree_with_naive_reference():
    q, k, v = qkv()
    ref = naive_attention(q, k, v, HEADS, lambda h, n, j: 1.0) * 0.125
    for order in ('kv', 'qk'):
        out = build_mixer(dict(type='SSA', order=order, scale=0.125))(q, k, v, None)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_ssa_default_scale():
    assert build_mixer(dict(type='SSA')).scale == pytest.approx(2 / math.sqrt(C // HEADS))


def test_ssa_needs_q_k_v():
    mixer = SSA(num_heads=HEADS, qk_channels=C, v_channels=2 * CV)
    assert mixer.requires == ('q', 'k', 'v') and mixer.out_channels == 2 * CV
    assert isinstance(mixer, TokenMixer) and callable(ssa_product)


def test_builds_from_config():
    check_builds_from_config(dict(type='SSA'), CV)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='SSA', order='kk'), 'order'),
    (dict(type='SSA', qk_channels=9), 'qk_channels'),
    (dict(type='SSA', v_channels=7), 'v_channels'),
    (dict(type='SSA', num_heads=0), 'num_heads'),
])
def test_invalid_arguments(cfg, name):
    check_invalid(cfg, name)
