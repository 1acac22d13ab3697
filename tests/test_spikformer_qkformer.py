"""Spikformer and QKFormer backbones: shapes, strides, gradients, attention switch, parameter
counts against the papers, eval determinism, option validation, registries."""
from __future__ import annotations

import math

import pytest
import torch

import mmlrf  # noqa: F401  (registers modules; must precede mmseg.models)
from mmlrf.backbones.qkformer import QKFormer
from mmlrf.backbones.spiking_blocks import LIFTransformerBlock
from mmlrf.backbones.spikformer import SpikingDeconv, Spikformer
from mmseg.registry import MODELS

TINY_SPK = dict(arch=dict(embed_dims=32, depth=2, num_heads=2), T=2, out_indices=(0, 0, 1, 1))
TINY_QK = dict(arch=dict(embed_dims=32, depths=(1, 1, 1), num_heads=2), T=2)
SIZES = [(32, 32), (50, 70), (17, 33)]


def _image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _calibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every BN's running statistics to those of one training-mode pass on ``x`` and switch
    to eval: at PyTorch's default init (mean 0, var 1) almost no neuron fires in eval mode, which
    would make value and determinism checks vacuous."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives that batch's statistics
    with torch.no_grad():
        model.train()(x)
    return model.eval()


# --------------------------------------------------------------------------- shapes / strides
@pytest.mark.parametrize('h, w', SIZES)
def test_spikformer_multiscale_shapes(h, w):
    model = Spikformer(**TINY_SPK).eval()
    assert model.strides == (4, 8, 16, 32) and model.out_channels == [32] * 4
    g_h, g_w = -(-h // 16), -(-w // 16)  # token grid ceil(H/16)
    expected = [(4 * g_h, 4 * g_w), (2 * g_h, 2 * g_w), (g_h, g_w),
                (-(-g_h // 2), -(-g_w // 2))]
    with torch.no_grad():
        outs = model(_image(2, h, w))
    assert [tuple(o.shape) for o in outs] == [(2, 32) + e for e in expected]
    for out, s in zip(outs, model.strides):  # never smaller than the stride-s grid
        assert out.shape[-2] >= math.ceil(h / s) and out.shape[-1] >= math.ceil(w / s)


@pytest.mark.parametrize('h, w', SIZES)
def test_spikformer_single_scale_shapes(h, w):
    model = Spikformer(**{**TINY_SPK, 'out_indices': (0, -1)}, multi_scale=False,
                       patch_size=4).eval()
    assert model.strides == (4, 4) and model.out_indices == (0, 1)
    with torch.no_grad():
        outs = model(_image(1, h, w))
    assert [tuple(o.shape) for o in outs] == [(1, 32, -(-h // 4), -(-w // 4))] * 2


@pytest.mark.parametrize('h, w', SIZES)
def test_qkformer_shapes(h, w):
    model = QKFormer(**TINY_QK).eval()
    assert model.strides == (4, 8, 16) and model.out_channels == [8, 16, 32]
    with torch.no_grad():
        outs = model(_image(2, h, w))
    assert [tuple(o.shape) for o in outs] == [
        (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip((8, 16, 32), (4, 8, 16))]
    sub = QKFormer(**TINY_QK, out_indices=(-1, 1)).eval()
    assert sub.strides == (16, 8) and sub.out_channels == [32, 16]
    with torch.no_grad():
        assert [o.shape[1] for o in sub(_image(1, h, w))] == [32, 16]


# --------------------------------------------------------------------------- spike values
def test_conv_inputs_are_spike_counts():
    """SPS / SPEDS outputs are sums of two spike maps ({0,1,2}); every deconv reads spikes."""
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, []).append(out if name != 'deconv' else args[0])
        return hook

    x = _image(2, 40, 40)
    spk = _calibrated(Spikformer(**TINY_SPK), x)
    spk.patch_embed.register_forward_hook(record('sps'))
    for m in spk.modules():
        if isinstance(m, SpikingDeconv):
            m.deconv.register_forward_hook(record('deconv'))
    qk = _calibrated(QKFormer(**TINY_QK), x)
    for i in (1, 2, 3):
        getattr(qk, f'patch_embed{i}').register_forward_hook(record('speds'))
    with torch.no_grad():
        spk(x)
        qk(x)
    assert len(seen['deconv']) == 3 and len(seen['speds']) == 3
    for name, allowed in (('sps', (0, 1, 2)), ('speds', (0, 1, 2)), ('deconv', (0, 1))):
        values = torch.cat([t.flatten() for t in seen[name]]).unique().tolist()
        assert set(values) <= set(allowed), (name, values)
        assert len(values) > 1, f'{name}: no spikes at all, test is vacuous'


# --------------------------------------------------------------------------- block reference
def _lif(x, tau=2.0, v_th=1.0):
    v, out = torch.zeros_like(x[0]), []
    for xt in x:
        h = v + (xt - v) / tau
        s = (h >= v_th).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def _conv_bn(x, conv_bn):
    conv, bn = conv_bn[0], conv_bn[1]
    y = torch.einsum('oi,tbihw->tbohw', conv.weight[:, :, 0, 0], x)
    if conv.bias is not None:
        y = y + conv.bias.view(-1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean.view(-1, 1, 1)) * scale.view(-1, 1, 1) + bn.bias.view(-1, 1, 1)


def _reference_block(blk, x, heads, kind):
    """Spikformer / QKFormer block written out from the papers' equations, head by head."""
    a = blk.attn
    t, b, c, h, w = x.shape
    q = _lif(_conv_bn(x, a.q_conv)).reshape(t, b, heads, c // heads, h * w)
    k = _lif(_conv_bn(x, a.k_conv)).reshape(t, b, heads, c // heads, h * w)
    if kind == 'ssa':
        v = _lif(_conv_bn(x, a.v_conv)).reshape(t, b, heads, c // heads, h * w)
        y = torch.zeros_like(q)
        for i in range(heads):  # (Q K^T) V per head, tokens as rows
            qi, ki, vi = (z[:, :, i].transpose(-1, -2) for z in (q, k, v))
            y[:, :, i] = ((qi @ ki.transpose(-1, -2) @ vi) * 0.125).transpose(-1, -2)
        y = _lif(y.reshape(t, b, c, h, w), v_th=0.5)
    else:  # QKTA: token mask from the per-head channel sum of Q gates K; no further neuron
        mask = _lif(q.sum(3), v_th=0.5)
        y = (mask.unsqueeze(3) * k).reshape(t, b, c, h, w)
    x = x + _lif(_conv_bn(y, a.proj_conv))
    hidden = _lif(_conv_bn(x, blk.mlp.fc1_conv))
    return x + _lif(_conv_bn(hidden, blk.mlp.fc2_conv))


@pytest.mark.parametrize('kind', ['ssa', 'qk'])
def test_block_matches_reference(kind):
    torch.manual_seed(0)
    mixer = dict(type='SSA', order='kv', scale=0.125) if kind == 'ssa' else \
        dict(type='QKTokenAttention', neuron=dict(type='MultiStepLIF', v_threshold=0.5))
    blk = LIFTransformerBlock(16, 2, mixer, dict(type='MultiStepLIF', tau=2.0)).double().eval()
    for m in blk.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(0.0, 1.0)
    for name in ('q_conv', 'k_conv', 'v_conv'):  # ~30% firing: the attention neuron is active
        if hasattr(blk.attn, name):
            getattr(blk.attn, name)[1].bias.data.uniform_(1.0, 1.5)
    rates = []
    blk.attn.attn_spike.register_forward_hook(lambda m, i, o: rates.append(o.mean().item()))
    x = torch.randint(0, 3, (3, 2, 16, 4, 5)).double()
    with torch.no_grad():
        out, ref = blk(x), _reference_block(blk, x, 2, kind)
    assert 0.05 < rates[0] < 0.95, rates  # neither silent nor saturated
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)


def test_attention_neuron_is_identity_on_binary_input():
    """QKFormer stages: the block's threshold-0.5 LIF (τ = 2) passes QKTA's binary output."""
    blk = QKFormer(**TINY_QK).stage1[0]
    assert type(blk.attn.mixer).__name__ == 'QKTokenAttention'
    s = torch.randint(0, 2, (4, 2, 8, 3, 3)).float()
    assert torch.equal(blk.attn.attn_spike(s), s)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize('cls, cfg', [(Spikformer, TINY_SPK), (QKFormer, TINY_QK)])
def test_gradients_reach_every_parameter(cls, cfg):
    torch.manual_seed(0)
    model = cls(**cfg).train()
    outs = model(_image(2, 192, 192))  # 144 tokens at stride 16: attention neurons fire
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- attn switch
def _mixer_types(model):
    from mmlrf.attention import SpikingAttention
    return [type(m.mixer).__name__ for m in model.modules() if isinstance(m, SpikingAttention)]


@pytest.mark.parametrize('attn', [dict(type='SSA', order='qk', scale=0.125),
                                  dict(type='LRFSSA', scale=0.125), dict(type='LRFDyn')])
def test_attn_switch(attn):
    if attn['type'] not in MODELS.module_dict:
        pytest.skip(f"token mixer {attn['type']} is not registered yet (mmlrf.attention)")
    spk = Spikformer(**TINY_SPK, attn=attn)
    qk = QKFormer(**TINY_QK, attn=attn)
    assert _mixer_types(spk) == [attn['type']] * 2
    assert _mixer_types(qk) == ['QKTokenAttention'] * 2 + [attn['type']]
    x = _image(1, 36, 40)
    outs = spk(x) + qk(x)
    sum(o.sum() for o in outs).backward()
    assert [tuple(o.shape[-2:]) for o in outs] == [(12, 12), (6, 6), (3, 3), (2, 2),
                                                   (9, 10), (5, 5), (3, 3)]


# --------------------------------------------------------------------------- parameter counts
def _classifier_params(cls, **kwargs) -> int:
    """Backbone (built on the meta device: no memory, no forward) + 1000-class linear head."""
    with torch.device('meta'):
        model = cls(**kwargs)
    dims = model.embed_dims
    return sum(p.numel() for p in model.parameters()) + dims * 1000 + 1000


@pytest.mark.parametrize('cls, arch, paper_m', [
    (Spikformer, '8-384', 16.81), (Spikformer, '8-512', 29.68), (Spikformer, '8-768', 66.34),
    (QKFormer, '10-384', 16.47), (QKFormer, '10-512', 29.08), (QKFormer, '10-768', 64.96)])
def test_parameter_count_matches_paper(cls, arch, paper_m):
    kwargs = dict(arch=arch, multi_scale=False) if cls is Spikformer else dict(arch=arch)
    count = _classifier_params(cls, **kwargs)
    assert abs(count / 1e6 - paper_m) <= 0.01 * paper_m, count


def test_spikformer_8_512_hand_count():
    """Hand count of the official model: SPS + 8 × (SSA + MLP) + head."""
    d, h = 512, 2048
    sps = sum(9 * a * b + 2 * b for a, b in [(3, 64), (64, 128), (128, 256), (256, 512),
                                              (512, 512)])
    attn = 4 * (d * d + 2 * d) + d  # q, k, v, proj convs + BNs, proj conv bias
    mlp = (d * h + h + 2 * h) + (h * d + d + 2 * d)
    assert _classifier_params(Spikformer, arch='8-512', multi_scale=False) == \
        sps + 8 * (attn + mlp) + d * 1000 + 1000


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize('cls, cfg', [(Spikformer, TINY_SPK), (QKFormer, TINY_QK)])
def test_eval_alone_equals_in_batch(cls, cfg):
    torch.manual_seed(0)
    batch = _image(3, 40, 48).double()
    model = _calibrated(cls(**cfg).double(), batch)
    with torch.no_grad():
        alone = model(batch[1:2])
        again = model(batch[1:2])
        in_batch = model(batch)
    for a, b, c in zip(alone, again, in_batch):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c[1:2], rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize('kwargs, option', [
    (dict(arch='8-1000'), 'arch'),
    (dict(arch=dict(embed_dims=32, depth=2)), 'arch'),
    (dict(arch=dict(embed_dims=36, depth=2, num_heads=2)), "arch['embed_dims']"),
    (dict(arch=dict(embed_dims=32, depth=2, num_heads=3)), "arch['embed_dims']"),
    (dict(arch=dict(embed_dims=32, depth=0, num_heads=2)), "arch['depth']"),
    (dict(T=0), 'T'), (dict(T=1.5), 'T'), (dict(in_channels=0), 'in_channels'),
    (dict(patch_size=3), 'patch_size'), (dict(patch_size=2), 'multi_scale'),
    (dict(out_indices=(0, 1)), 'out_indices'), (dict(out_indices=(0, 1, 2, 9)), 'out_indices'),
    (dict(out_indices=()), 'out_indices'), (dict(mlp_ratio=0), 'mlp_ratio'),
    (dict(multi_scale='yes'), 'multi_scale'), (dict(attn='ssa'), 'attn'),
    (dict(neuron=dict(type='MultiSpike')), 'neuron'),
])
def test_spikformer_invalid_options(kwargs, option):
    cfg = {**TINY_SPK, **kwargs}
    with pytest.raises(ValueError, match=option.replace('[', r'\[').replace(']', r'\]')):
        Spikformer(**cfg)


@pytest.mark.parametrize('kwargs, option', [
    (dict(arch='10-999'), 'arch'),
    (dict(arch=dict(embed_dims=32, depths=(1, 1), num_heads=2)), "arch['depths']"),
    (dict(arch=dict(embed_dims=32, depths=(1, 0, 1), num_heads=2)), "arch['depths']"),
    (dict(arch=dict(embed_dims=36, depths=(1, 1, 1), num_heads=2)), "arch['embed_dims']"),
    (dict(arch=dict(embed_dims=32, depths=(1, 1, 1), num_heads=3)), "arch['embed_dims']"),
    (dict(T=0), 'T'), (dict(out_indices=(3,)), 'out_indices'), (dict(mlp_ratio=-1), 'mlp_ratio'),
    (dict(attn=dict(order='kv')), 'attn'), (dict(neuron=dict(type='LIF')), 'neuron'),
])
def test_qkformer_invalid_options(kwargs, option):
    cfg = {**TINY_QK, **kwargs}
    with pytest.raises(ValueError, match=option.replace('[', r'\[').replace(']', r'\]')):
        QKFormer(**cfg)


@pytest.mark.parametrize('cls, cfg', [(Spikformer, TINY_SPK), (QKFormer, TINY_QK)])
def test_wrong_input_layout_is_refused(cls, cfg):
    model = cls(**cfg)
    for bad in (torch.zeros(3, 16, 16), torch.zeros(1, 4, 16, 16), torch.zeros(2, 1, 3, 16, 16)):
        with pytest.raises(ValueError, match='in_channels=3'):
            model(bad)


def test_unknown_mixer_fails_at_build_time():
    with pytest.raises(KeyError, match='NoSuchMixer'):
        Spikformer(**TINY_SPK, attn=dict(type='NoSuchMixer'))


# --------------------------------------------------------------------------- registries
@pytest.mark.parametrize('cls, cfg', [(Spikformer, TINY_SPK), (QKFormer, TINY_QK)])
def test_registries_build(cls, cfg, monkeypatch):
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert isinstance(MODELS.build(dict(type=cls.__name__, **cfg)), cls)
    # mmpretrain's registry imports mmpretrain.models (which needs torchvision) before its first
    # build; our registration must not rely on that import, so it is skipped here.
    monkeypatch.setattr(PRETRAIN_MODELS, '_imported', True)
    model = PRETRAIN_MODELS.build(dict(type=cls.__name__, **cfg))
    assert isinstance(model, cls)
    assert PRETRAIN_MODELS.module_dict[cls.__name__] is cls
