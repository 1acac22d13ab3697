"""Attention operators against independent references (naive loops, hand-built convolutions)."""
import math

import pytest
import torch
import torch.nn.functional as F

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)
from mmseg.registry import MODELS

from mmlrf.attention import (DendriticDynamics, LRFBranch, LRFSSA, SpikingAttention,
                             set_dynamics_mode)

HEADS, C, CV = 2, 8, 8


def _spikes(*shape, seed=0, p=0.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).to(torch.float64)


def _qkv(t=2, b=2, h=3, w=5, cv=CV, seed=0):
    return (_spikes(t, b, C, h, w, seed=seed), _spikes(t, b, C, h, w, seed=seed + 1),
            _spikes(t, b, cv, h, w, seed=seed + 2))


def _naive_attention(q, k, v, heads, weight):
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


def _mixer(cfg, **kwargs):
    return MODELS.build(dict(cfg, num_heads=HEADS, qk_channels=C, v_channels=CV, **kwargs)).double()


# --------------------------------------------------------------------------- SSA
def test_ssa_orders_agree_with_naive_reference():
    q, k, v = _qkv()
    ref = _naive_attention(q, k, v, HEADS, lambda h, n, j: 1.0) * 0.125
    for order in ('kv', 'qk'):
        out = _mixer(dict(type='SSA', order=order, scale=0.125))(q, k, v, None)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_ssa_default_scale():
    assert _mixer(dict(type='SSA')).scale == pytest.approx(2 / math.sqrt(C // HEADS))


# --------------------------------------------------------------------------- causal SSA
@pytest.mark.parametrize('accumulation', ['plain', 'normalised', 'decayed'])
@pytest.mark.parametrize('order, chunk_size', [('kv', 4), ('kv', 64), ('kv', 1), ('qk', 64)])
def test_causal_ssa_matches_masked_reference(accumulation, order, chunk_size):
    q, k, v = _qkv(h=3, w=5)  # N = 15, not a multiple of the chunk size 4
    gammas = [0.8, 0.6]
    decay = dict(decay=gammas) if accumulation == 'decayed' else {}
    mixer = _mixer(dict(type='CausalSSA', accumulation=accumulation, order=order, scale=0.5,
                        chunk_size=chunk_size, **decay))
    if accumulation == 'decayed':  # the decay is stored as a float32 logit: use its exact value
        gammas = torch.sigmoid(mixer.decay_logit).tolist()
        assert gammas == pytest.approx([0.8, 0.6], abs=1e-7)

    def weight(h, n, j):
        if j > n:
            return 0.0
        if accumulation == 'decayed':
            return gammas[h] ** (n - j)
        return 1.0 / (n + 1) if accumulation == 'normalised' else 1.0

    ref = _naive_attention(q, k, v, HEADS, weight) * 0.5
    torch.testing.assert_close(mixer(q, k, v, None), ref, rtol=1e-10, atol=1e-10)


def test_causal_ssa_is_causal_and_default_decay():
    q, k, v = _qkv(h=4, w=4)
    mixer = _mixer(dict(type='CausalSSA', accumulation='decayed', chunk_size=3))
    gamma = torch.sigmoid(mixer.decay_logit)
    torch.testing.assert_close(gamma, torch.tensor([1 - 2 ** -5, 1 - 2 ** -6], dtype=gamma.dtype))
    out = mixer(q, k, v, None).flatten(3)
    k2, v2 = k.clone().flatten(3), v.clone().flatten(3)
    k2[..., 9:], v2[..., 9:] = 1 - k2[..., 9:], 1 - v2[..., 9:]
    out2 = mixer(q, k2.reshape(k.shape), v2.reshape(v.shape), None).flatten(3)
    torch.testing.assert_close(out2[..., :9], out[..., :9])
    assert not torch.allclose(out2[..., 9:], out[..., 9:])


# --------------------------------------------------------------------------- QK token attention
def test_qk_token_attention_matches_hand_mask():
    q, k, _ = _qkv(t=1)
    # Default mask neuron: LIF, tau=2, V_th=0.5; in one step it spikes iff Σq / 2 >= 0.5.
    mixer = _mixer(dict(type='QKTokenAttention'))
    t, b, c, h, w = q.shape
    head_sum = q.reshape(t, b, HEADS, c // HEADS, h, w).sum(3)
    assert 0 < (head_sum >= 1).float().mean() < 1  # the mask is not trivial
    ref = torch.cat([(head_sum[:, :, i:i + 1] >= 1) * k[:, :, i * 4:(i + 1) * 4]
                     for i in range(HEADS)], dim=2)
    out = mixer(q, k, None, None)
    assert mixer.requires == ('q', 'k') and mixer.out_channels == C
    torch.testing.assert_close(out, ref.to(out.dtype))


# --------------------------------------------------------------------------- LRF
def _shifted_dwconv(x, weight, r):
    """Depth-wise 3×3 conv with dilation r and zero padding r, as a sum of 9 shifted copies."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (r, r, r, r))
    out = torch.zeros_like(x)
    for a in range(3):
        for b in range(3):
            out += weight[:, 0, a, b].reshape(-1, 1, 1) * xp[..., a * r:a * r + h, b * r:b * r + w]
    return out


@pytest.mark.parametrize('bn', [True, False])
def test_lrf_branch_equals_shifted_sum(bn):
    torch.manual_seed(0)
    lrf = LRFBranch(CV, dilations=(1, 3, 5), bn=bn).double()
    for branch in lrf.branches:
        if bn:
            branch[1].running_mean.uniform_(-1, 1)
            branch[1].running_var.uniform_(0.5, 2)
            branch[1].weight.data.uniform_(0.5, 2)
            branch[1].bias.data.uniform_(-1, 1)
    lrf.eval()
    x = torch.randn(2, 3, CV, 7, 6, dtype=torch.float64)
    ref = torch.zeros_like(x)
    for r, branch in zip((1, 3, 5), lrf.branches):
        y = _shifted_dwconv(x, branch[0].weight, r)
        if bn:
            norm = branch[1]
            shape = (-1, 1, 1)
            y = ((y - norm.running_mean.reshape(shape)) /
                 torch.sqrt(norm.running_var.reshape(shape) + norm.eps) *
                 norm.weight.reshape(shape) + norm.bias.reshape(shape))
        ref += y
    out = lrf(x)
    assert out.shape == x.shape  # 'same' padding keeps H, W even when the dilation exceeds them
    torch.testing.assert_close(out, ref)
    params = sum(p.numel() for p in lrf.parameters())
    assert params == 3 * CV * (9 + (2 if bn else 0))


@pytest.mark.parametrize('inside', [False, True])
def test_lrf_ssa_is_global_plus_local(inside):
    q, k, v = _qkv()
    mixer = _mixer(dict(type='LRFSSA', order='qk', scale=0.25, local_inside_scale=inside)).eval()
    local = mixer.lrf(v) * (0.25 if inside else 1.0)
    ref = _naive_attention(q, k, v, HEADS, lambda h, n, j: 1.0) * 0.25 + local
    torch.testing.assert_close(mixer(q, k, v, None), ref)
    overhead = sum(p.numel() for p in mixer.parameters())
    assert overhead == 2 * CV * 11


# --------------------------------------------------------------------------- LRF-Dyn
@pytest.mark.parametrize('token, gate, requires', [
    ('v', False, ('v',)), ('k*v', False, ('k', 'v')), ('x', True, ('q', 'x')),
])
def test_lrf_dyn_composition(token, gate, requires):
    q, k, v = _qkv(t=2, h=3, w=4)
    x = _spikes(*q.shape, seed=7)
    mixer = _mixer(dict(type='LRFDyn', token=token, query_gate=gate, num_dendrites=3)).eval()
    assert mixer.requires == requires
    u = {'v': v, 'k*v': k * v, 'x': x}[token]
    y = torch.stack([mixer.dynamics(frame) for frame in u])  # per time step
    y = y + mixer.lrf(y)
    torch.testing.assert_close(mixer(q, k, v, x), q * y if gate else y)


@pytest.mark.parametrize('bidirectional, order', [(False, 'raster'), (True, 'snake')])
def test_lrf_dyn_fft_matches_recurrent(bidirectional, order):
    q, k, v = _qkv(t=2, h=4, w=5)
    mixer = _mixer(dict(type='LRFDyn', num_dendrites=4, bidirectional=bidirectional,
                        order=order)).eval()
    fft = mixer(q, k, v, None)
    mixer.set_dynamics_mode('recurrent')
    assert mixer.dynamics.mode == 'recurrent'
    torch.testing.assert_close(mixer(q, k, v, None), fft, rtol=1e-10, atol=1e-10)


def test_set_dynamics_mode_switches_whole_model():
    blocks = torch.nn.Sequential(
        *(SpikingAttention(C, HEADS, mixer=dict(type='LRFDyn', mode='fft')) for _ in range(2)))
    assert set_dynamics_mode(blocks, 'recurrent') == 2
    assert all(m.mode == 'recurrent' for m in blocks.modules()
               if isinstance(m, DendriticDynamics))
    with pytest.raises(ValueError, match='mode'):
        set_dynamics_mode(blocks, 'parallel')


# --------------------------------------------------------------------------- block-level checks
# Scales are large because the test blocks are tiny (d = 4, N = 20): the attention neuron must
# fire for gradients to reach the output projection.
MIXERS = [
    dict(type='SSA', order='kv', scale=4),
    dict(type='SSA', order='qk', scale=4),
    dict(type='CausalSSA', accumulation='plain', scale=4, chunk_size=5),
    dict(type='CausalSSA', accumulation='normalised', scale=16, chunk_size=5),
    dict(type='CausalSSA', accumulation='decayed', learn_decay=True, decay=0.9, scale=4),
    dict(type='QKTokenAttention'),
    dict(type='LRFSSA', scale=4),
    dict(type='LRFSSA', order='qk', scale=4, local_inside_scale=True, bn=False),
    dict(type='LRFDyn', num_dendrites=4),
    dict(type='LRFDyn', token='k*v', query_gate=True, num_dendrites=2, mode='scan'),
    dict(type='LRFDyn', token='x', bidirectional=True, order='column', num_dendrites=2),
]
NEURONS = {  # block neuron, attention neuron, T, QKTokenAttention's mask neuron
    'lif': (dict(type='MultiStepLIF', v_threshold=0.5), dict(type='MultiStepLIF', v_threshold=0.25),
            2, dict(type='MultiStepLIF', v_threshold=0.5)),
    'multispike': (dict(type='MultiSpike'), None, 1, dict(type='MultiSpike', max_value=1, norm=1)),
}


def _check_block_gradients(mixer, neuron_name):
    neuron, attn_neuron, t, mask_neuron = NEURONS[neuron_name]
    if mixer['type'] == 'QKTokenAttention':
        mixer = dict(mixer, neuron=mask_neuron)
    torch.manual_seed(0)
    block = SpikingAttention(C, HEADS, mixer=mixer, neuron=neuron, attn_neuron=attn_neuron)
    block(torch.randn(t, 2, C, 5, 4)).square().sum().backward()
    missing = [name for name, p in block.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'no gradient reaches {missing}'


@pytest.mark.parametrize('neuron_name', list(NEURONS))
@pytest.mark.parametrize('mixer', MIXERS, ids=lambda m: '-'.join(map(str, m.values())))
def test_gradients_reach_every_parameter(mixer, neuron_name):
    _check_block_gradients(mixer, neuron_name)


@pytest.mark.parametrize('cfg, out_channels', [
    (dict(type='SSA'), CV), (dict(type='CausalSSA', accumulation='decayed'), CV),
    (dict(type='QKTokenAttention'), C), (dict(type='LRFSSA', dilations=(1,)), CV),
    (dict(type='LRFDyn', token='x', order='snake'), CV),
])
def test_build_mixers_from_config(cfg, out_channels):
    mixer = MODELS.build(dict(cfg, num_heads=HEADS, qk_channels=C, v_channels=CV))
    assert type(mixer).__name__ == cfg['type']
    q, k, v = (s.float() for s in _qkv(t=1))
    assert mixer(q, k, v, q).shape == (1, 2, out_channels, 3, 5)


def test_build_lrf_branch_dynamics_and_block_from_config():
    lrf = MODELS.build(dict(type='LRFBranch', channels=4, dilations=[2]))
    assert isinstance(lrf, LRFBranch) and lrf.dilations == (2,)
    dyn = MODELS.build(dict(type='DendriticDynamics', channels=4, num_dendrites=2))
    assert isinstance(dyn, DendriticDynamics) and dyn(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)
    block = MODELS.build(dict(type='SpikingAttention', embed_dims=C, num_heads=HEADS,
                              mixer=dict(type='LRFSSA'), v_ratio=2))
    assert isinstance(block.mixer, LRFSSA) and block.mixer.v_channels == 2 * C
    assert block(torch.randn(1, 1, C, 4, 4)).shape == (1, 1, C, 4, 4)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='LRFBranch', channels=4, dilations=(3, 0)), 'dilations'),
    (dict(type='LRFBranch', channels=4, dilations=()), 'dilations'),
    (dict(type='LRFBranch', channels=4, dilations=3), 'dilations'),
    (dict(type='LRFBranch', channels=4, dilations=(1.5,)), 'dilations'),
    (dict(type='LRFSSA', dilations=(-1,)), 'dilations'),
    (dict(type='LRFSSA', order='vk'), 'order'),
    (dict(type='SSA', order='kk'), 'order'),
    (dict(type='CausalSSA', accumulation='sum'), 'accumulation'),
    (dict(type='CausalSSA', order='raster'), 'order'),
    (dict(type='CausalSSA', chunk_size=0), 'chunk_size'),
    (dict(type='CausalSSA', accumulation='decayed', decay=1.0), 'decay'),
    (dict(type='CausalSSA', accumulation='decayed', decay=[0.5, 0.5, 0.5]), 'decay'),
    (dict(type='CausalSSA', decay=0.5), 'decay'),
    (dict(type='QKTokenAttention', neuron=dict(type='IF')), 'neuron type'),
    (dict(type='LRFDyn', token='q'), 'token'),
    (dict(type='LRFDyn', mode='parallel'), 'mode'),
    (dict(type='LRFDyn', order='spiral'), 'order'),
    (dict(type='LRFDyn', num_dendrites=0), 'num_dendrites'),
    (dict(type='LRFDyn', dilations=(0, 3)), 'dilations'),
    (dict(type='LRFDyn', token='x', v_channels=2 * CV), 'token'),
    (dict(type='LRFDyn', query_gate=True, v_channels=2 * CV), 'query_gate'),
    (dict(type='LRFDyn', dynamics_cfg=dict(mode='fft')), 'dynamics_cfg'),
])
def test_invalid_arguments(cfg, name):
    if cfg['type'] != 'LRFBranch':
        cfg = dict(dict(num_heads=HEADS, qk_channels=C, v_channels=CV), **cfg)
    with pytest.raises(ValueError, match=name):
        MODELS.build(cfg)
