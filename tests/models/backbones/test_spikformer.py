"""Spikformer backbone: shapes and strides (multi-scale and single-scale), spike-count inputs of
its convs, gradients, attention switch, parameter counts against the paper, eval determinism,
layer configs, option validation, registries, mmseg's necks and heads on top."""
from __future__ import annotations

import math

import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

import mmlrf  # noqa: F401  (registers modules; must precede mmseg.models)
from mmlrf.models.backbones import SpikingAttention
from mmlrf.models.backbones.spikformer import SpikingDeconv, Spikformer
from mmlrf.models.layers import RoutedConv2d

from batchnorm_stats import calibrate_batchnorms
from seg_samples import build_segmentor, seg_data_preprocessor, train_two_iterations

TINY = dict(arch=dict(embed_dims=32, depth=2, num_heads=2), T=2, out_indices=(0, 0, 1, 1))
SIZES = [(32, 32), (50, 70), (17, 33)]


def _image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- shapes / strides
@pytest.mark.parametrize('h, w', SIZES)
def test_multiscale_shapes(h, w):
    model = Spikformer(**TINY).eval()
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
def test_single_scale_shapes(h, w):
    model = Spikformer(**{**TINY, 'out_indices': (0, -1)}, multi_scale=False,
                       patch_size=4).eval()
    assert model.strides == (4, 4) and model.out_indices == (0, 1)
    with torch.no_grad():
        outs = model(_image(1, h, w))
    assert [tuple(o.shape) for o in outs] == [(1, 32, -(-h // 4), -(-w // 4))] * 2


# --------------------------------------------------------------------------- spike values
def test_conv_inputs_are_spike_counts():
    """SPS outputs are sums of two spike maps ({0,1,2}); every deconv reads spikes."""
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, []).append(out if name != 'deconv' else args[0])
        return hook

    x = _image(2, 40, 40)
    spk = calibrate_batchnorms(Spikformer(**TINY), x)
    spk.patch_embed.register_forward_hook(record('sps'))
    for m in spk.modules():
        if isinstance(m, SpikingDeconv):
            m.deconv.register_forward_hook(record('deconv'))
    with torch.no_grad():
        spk(x)
    assert len(seen['deconv']) == 3
    for name, allowed in (('sps', (0, 1, 2)), ('deconv', (0, 1))):
        values = torch.cat([t.flatten() for t in seen[name]]).unique().tolist()
        assert set(values) <= set(allowed), (name, values)
        assert len(values) > 1, f'{name}: no spikes at all, test is vacuous'


# --------------------------------------------------------------------------- gradients
def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Spikformer(**TINY).train()
    outs = model(_image(2, 192, 192))  # 144 tokens at stride 16: attention neurons fire
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- attn switch
def _mixer_types(model):
    return [type(m.mixer).__name__ for m in model.modules() if isinstance(m, SpikingAttention)]


@pytest.mark.parametrize('attn', [dict(type='SSA', order='qk', scale=0.125),
                                  dict(type='LRFSSA', scale=0.125), dict(type='LRFDyn')])
def test_attn_switch(attn):
    spk = Spikformer(**TINY, attn=attn)
    assert _mixer_types(spk) == [attn['type']] * 2
    outs = spk(_image(1, 36, 40))
    sum(o.sum() for o in outs).backward()
    assert [tuple(o.shape[-2:]) for o in outs] == [(12, 12), (6, 6), (3, 3), (2, 2)]


def test_layers_follow_conv_cfg_and_norm_cfg():
    """Every conv (attention and mixer included) is built from ``conv_cfg``, every norm from
    ``norm_cfg``; the multi-scale deconvs stay transposed convs."""
    model = Spikformer(**TINY, attn=dict(type='LRFSSA', scale=0.125),
                       conv_cfg=dict(type='RoutedConv2d'),
                       norm_cfg=dict(type='SyncBN', requires_grad=True))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is RoutedConv2d for m in convs)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 3
    assert all(type(m) is nn.Conv2d for m in Spikformer(**TINY).modules()
               if isinstance(m, nn.Conv2d))


# --------------------------------------------------------------------------- parameter counts
def _classifier_params(**kwargs) -> int:
    """Backbone (built on the meta device: no memory, no forward) + 1000-class linear head."""
    with torch.device('meta'):
        model = Spikformer(**kwargs)
    dims = model.embed_dims
    return sum(p.numel() for p in model.parameters()) + dims * 1000 + 1000


@pytest.mark.parametrize('arch, paper_m', [('8-384', 16.81), ('8-512', 29.68), ('8-768', 66.34)])
def test_parameter_count_matches_paper(arch, paper_m):
    count = _classifier_params(arch=arch, multi_scale=False)
    assert abs(count / 1e6 - paper_m) <= 0.01 * paper_m, count


def test_8_512_hand_count():
    """Hand count of the official model: SPS + 8 × (SSA + MLP) + head."""
    d, h = 512, 2048
    sps = sum(9 * a * b + 2 * b for a, b in [(3, 64), (64, 128), (128, 256), (256, 512),
                                              (512, 512)])
    attn = 4 * (d * d + 2 * d) + d  # q, k, v, proj convs + BNs, proj conv bias
    mlp = (d * h + h + 2 * h) + (h * d + d + 2 * d)
    assert _classifier_params(arch='8-512', multi_scale=False) == \
        sps + 8 * (attn + mlp) + d * 1000 + 1000


# --------------------------------------------------------------------------- determinism
def test_eval_alone_equals_in_batch():
    """Eval mode: no state carried between calls, no batch-dependent result."""
    torch.manual_seed(0)
    batch = _image(3, 40, 48).double()
    model = calibrate_batchnorms(Spikformer(**TINY).double(), batch)
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
    (dict(arch='8-999'), 'arch'),
    (dict(arch=dict(embed_dims=32, depth=2)), 'arch'),
    (dict(arch=dict(embed_dims=36, depth=2, num_heads=2)), "arch['embed_dims']"),
    (dict(arch=dict(embed_dims=32, depth=2, num_heads=3)), "arch['embed_dims']"),
    (dict(arch=dict(embed_dims=32, depth=0, num_heads=2)), "arch['depth']"),
    (dict(T=0), 'T'), (dict(T=1.5), 'T'), (dict(in_channels=0), 'in_channels'),
    (dict(patch_size=3), 'patch_size'), (dict(patch_size=5), 'patch_size'),
    (dict(patch_size=2), 'multi_scale'),
    (dict(out_indices=(0, 1)), 'out_indices'), (dict(out_indices=(0, 1, 2, 9)), 'out_indices'),
    (dict(out_indices=()), 'out_indices'), (dict(mlp_ratio=0), 'mlp_ratio'),
    (dict(multi_scale='yes'), 'multi_scale'), (dict(attn='ssa'), 'attn'),
    (dict(neuron=dict(type='MultiSpike')), 'neuron'),
])
def test_invalid_options(kwargs, option):
    """Refused at build time (from the registry too), naming the option."""
    cfg = {**TINY, **kwargs}
    match = option.replace('[', r'\[').replace(']', r'\]')
    with pytest.raises(ValueError, match=match):
        Spikformer(**cfg)
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='Spikformer', **cfg))


def test_wrong_input_layout_is_refused():
    model = Spikformer(**TINY)
    for bad in (torch.zeros(3, 16, 16), torch.zeros(1, 4, 16, 16), torch.zeros(2, 1, 3, 16, 16)):
        with pytest.raises(ValueError, match='in_channels=3'):
            model(bad)


def test_unknown_mixer_fails_at_build_time():
    with pytest.raises(KeyError, match='NoSuchMixer'):
        Spikformer(**TINY, attn=dict(type='NoSuchMixer'))


# --------------------------------------------------------------------------- registries
def test_registries_build(monkeypatch):
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert isinstance(MODELS.build(dict(type='Spikformer', **TINY)), Spikformer)
    # mmpretrain's registry imports mmpretrain.models (which needs torchvision) before its first
    # build; our registration must not rely on that import, so it is skipped here.
    monkeypatch.setattr(PRETRAIN_MODELS, '_imported', True)
    model = PRETRAIN_MODELS.build(dict(type='Spikformer', **TINY))
    assert isinstance(model, Spikformer)
    assert PRETRAIN_MODELS.module_dict['Spikformer'] is Spikformer


def test_with_mmseg_multilevelneck_and_uperhead():
    """mmseg's own neck and heads (not written for spiking maps) train on top of it."""
    model = build_segmentor(dict(
        type='EncoderDecoder', data_preprocessor=seg_data_preprocessor(),
        backbone=dict(type='Spikformer', arch=dict(embed_dims=16, depth=4, num_heads=2), T=2,
                      patch_size=8, multi_scale=False, out_indices=(0, 1, 2, 3)),
        neck=dict(type='MultiLevelNeck', in_channels=[16] * 4, out_channels=16,
                  scales=[4, 2, 1, 0.5]),
        decode_head=dict(type='UPerHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2), channels=8, num_classes=3),
        auxiliary_head=dict(type='FCNHead', in_channels=16, in_index=3, channels=8, num_convs=1,
                            num_classes=3)))
    train_two_iterations(model)
