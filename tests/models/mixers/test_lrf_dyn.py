"""LRF-Dyn: dendritic dynamics plus the local branch, composed as specified for each token
input; evaluation paths switched for a mixer or a whole model; numerics of long high-lr training
and of bf16."""
import time

import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)
from mmlrf.models.backbones import SpikingAttention
from mmlrf.models.mixers import LRFDyn, set_dynamics_mode
from mmlrf.ops.dendritic import DendriticDynamics

from attention_reference import (C, CV, HEADS, build_mixer, check_builds_from_config,
                                 check_invalid, qkv, spikes)


def widen(t, ratio):
    """Each channel repeated ``ratio`` times, in place order (channel e of the wide tensor is
    channel e // ratio of ``t``), by an explicit index."""
    index = torch.tensor([e // ratio for e in range(t.shape[2] * ratio)])
    return t.index_select(2, index)


@pytest.mark.parametrize('ratio', [1, 4])
@pytest.mark.parametrize('token, gate, requires', [
    ('k*v', True, ('q', 'k', 'v')), ('v', False, ('v',)), ('k*v', False, ('k', 'v')),
    ('x', True, ('q', 'x')),
])
def test_lrf_dyn_composition(token, gate, requires, ratio):
    """``o = q ⊙ (s + LRF(s))``, ``s = Dyn(k ⊙ v)`` by default; where V is ``ratio`` times wider
    than Q/K, V channel e meets Q/K channel e // ratio (the head of both is the same)."""
    q, k, v = qkv(t=2, h=3, w=4, cv=C * ratio)
    x = spikes(*q.shape, seed=7)
    mixer = build_mixer(dict(type='LRFDyn', token=token, query_gate=gate, num_dendrites=3),
                        v_channels=C * ratio).eval()
    assert mixer.requires == requires
    u = {'v': v, 'k*v': widen(k, ratio) * v, 'x': widen(x, ratio)}[token]
    y = torch.stack([mixer.dynamics(frame) for frame in u])  # per time step
    y = y + mixer.lrf(y)
    torch.testing.assert_close(mixer(q, k, v, x), widen(q, ratio) * y if gate else y)


def test_lrf_dyn_without_lrf_branch():
    """``lrf=False``: no local branch and no parameter of it, ``o = q ⊙ Dyn(k ⊙ v)``; every
    parameter of the dynamics and of the Q, K, V projections receives a gradient (through the
    STE: without the branch's norm layers the output is small at initialisation, so the spikes
    into ``proj_conv`` are silent and the loss is random-weighted)."""
    q, k, v = qkv(t=2, h=3, w=4, cv=C * 4)
    mixer = build_mixer(dict(type='LRFDyn', lrf=False, num_dendrites=3), v_channels=C * 4).eval()
    assert mixer.lrf is None and not any('lrf' in n for n, _ in mixer.named_parameters())
    y = torch.stack([mixer.dynamics(frame) for frame in widen(k, 4) * v])
    torch.testing.assert_close(mixer(q, k, v, None), widen(q, 4) * y)
    block = SpikingAttention(C, HEADS, mixer=dict(type='LRFDyn', lrf=False), v_ratio=4).double()
    out = block(spikes(2, 2, C, 3, 5, seed=3) * 4)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weight).sum().backward()
    dead = [n for n, p in block.named_parameters() if not n.startswith('proj_conv')
            and (p.grad is None or not p.grad.abs().sum())]
    assert not dead, dead


def test_lrf_dyn_default_is_the_paper_model():
    """The default reads Q, K and V, the dynamics are PMSN's complex modes, and every weight of
    the block takes part in the output (no dead projection)."""
    block = SpikingAttention(C, HEADS, mixer=dict(type='LRFDyn'), v_ratio=4).double()
    assert block.mixer.requires == ('q', 'k', 'v')
    assert block.mixer.dynamics.parameterization == 'pmsn'
    x = spikes(2, 2, C, 3, 5, seed=3) * 4
    block(x).square().sum().backward()
    dead = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, dead
    assert {'q_conv.0.weight', 'k_conv.0.weight', 'v_conv.0.weight'} <= {
        n for n, _ in block.named_parameters()}


@pytest.mark.parametrize('bidirectional, order', [(False, 'raster'), (True, 'snake')])
def test_lrf_dyn_fft_matches_recurrent(bidirectional, order):
    q, k, v = qkv(t=2, h=4, w=5)
    mixer = build_mixer(dict(type='LRFDyn', num_dendrites=4, bidirectional=bidirectional,
                             order=order, mode='fft')).eval()
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
    assert set_dynamics_mode(torch.nn.Linear(2, 2), 'recurrent') == 0
    with pytest.raises(ValueError, match='mode'):
        set_dynamics_mode(blocks, 'parallel')


def test_lrf_dyn_default_mode_is_auto():
    mixer = LRFDyn(num_heads=2, qk_channels=8, v_channels=8)
    assert mixer.dynamics.mode == 'auto'
    assert mixer.dynamics.resolved_mode(torch.zeros(1, 8, 2, 2)) == 'scan'


def test_builds_from_config():
    check_builds_from_config(dict(type='LRFDyn', token='x', order='snake'), CV)
    dyn = MODELS.build(dict(type='DendriticDynamics', channels=4, num_dendrites=2))
    assert isinstance(dyn, DendriticDynamics)
    assert dyn(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='LRFDyn', token='q'), 'token'),
    (dict(type='LRFDyn', mode='parallel'), 'mode'),
    (dict(type='LRFDyn', order='spiral'), 'order'),
    (dict(type='LRFDyn', num_dendrites=0), 'num_dendrites'),
    (dict(type='LRFDyn', dilations=(0, 3)), 'dilations'),
    (dict(type='LRFDyn', v_channels=12), 'v_channels'),
    (dict(type='LRFDyn', dynamics_cfg=dict(mode='fft')), 'dynamics_cfg'),
])
def test_invalid_arguments(cfg, name):
    check_invalid(cfg, name)


# --------------------------------------------------------------------------- numerics
def _lrf_dyn_block() -> nn.Module:
    return MODELS.build(dict(type='SpikingAttention', embed_dims=8, num_heads=2,
                             mixer=dict(type='LRFDyn', num_dendrites=4)))


def test_lrf_dyn_2000_steps_at_lr_0_1_stay_finite():
    """AdamW lr 1e-1 on random data/labels: the dendritic parameters get large, noisy updates."""
    torch.manual_seed(0)
    block = _lrf_dyn_block()
    head = nn.Conv2d(8, 3, 1)
    params = list(block.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=1e-1)
    dyn = block.mixer.dynamics
    start = {k: v.detach().clone() for k, v in dyn.named_parameters()}
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for step in range(2000):
        x = torch.randn(1, 2, 8, 4, 4, generator=g) * 3
        target = torch.randint(0, 3, (2, 4, 4), generator=g)
        loss = nn.functional.cross_entropy(head(block(x)[0]), target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        assert torch.isfinite(loss), f'loss {loss.item()} at step {step}'
        if step % 250 == 249:
            bad = [n for n, p in dyn.named_parameters() if not torch.isfinite(p).all()]
            assert not bad, f'non-finite dynamics parameters {bad} at step {step}'
    assert time.perf_counter() - t0 < 60
    assert all(torch.isfinite(p).all() for p in params)
    moved = {k: (v - start[k]).abs().max().item() for k, v in dyn.named_parameters()}
    assert min(moved.values()) > 0.1, moved  # the run did push every dynamics parameter
    with torch.no_grad():  # and the trained operator still maps bounded input to finite output
        assert torch.isfinite(dyn(torch.randn(2, 8, 16, 16) * 100)).all()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_bf16_autocast_matches_fp32_where_spikes_cannot_flip():
    """Compared: (1) the dynamics operator on bf16 input, (2) the LRF-Dyn mixer (dynamics + LRF
    depth-wise convs) under CPU bf16 autocast, both on the same spike inputs, relative L2 error
    <= 2e-2. Not compared: whole-model outputs, where a bf16 rounding near a threshold flips a
    spike and the flip propagates (a discrete, not a numerical, difference)."""
    torch.manual_seed(0)
    block = _lrf_dyn_block().eval()
    dyn = block.mixer.dynamics
    u = torch.randn(2, 8, 8, 12)
    with torch.no_grad():
        ref = dyn(u)
        assert _rel(dyn(u.bfloat16()), ref) <= 2e-2
        v = (torch.rand(1, 2, 8, 8, 12) * 4).round() / 4  # MultiSpike-like values, exact in bf16
        q, k = v[:, :, :8], v.flip(2)[:, :, :8]
        ref = block.mixer(q, k, v, None)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = block.mixer(q, k, v, None)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert _rel(low, ref) <= 2e-2
