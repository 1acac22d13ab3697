"""QKFormer backbone: shapes and strides, spike-count inputs of its embeddings, QK token
attention in the first stages, gradients, attention switch, parameter counts against the paper,
eval determinism, layer configs, option validation, registries, mmseg's heads on top."""
from __future__ import annotations

import math

import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

import mmlrf  # noqa: F401  (registers modules; must precede mmseg.models)
from mmlrf.models.backbones import SpikingAttention
from mmlrf.models.backbones.qkformer import QKFormer
from mmlrf.models.layers import RoutedConv2d

from batchnorm_stats import calibrate_batchnorms
from seg_samples import build_segmentor, seg_data_preprocessor, train_two_iterations

TINY = dict(arch=dict(embed_dims=32, depths=(1, 1, 1), num_heads=2), T=2)
SIZES = [(32, 32), (50, 70), (17, 33)]


def _image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('h, w', SIZES)
def test_shapes(h, w):
    model = QKFormer(**TINY).eval()
    assert model.strides == (4, 8, 16) and model.out_channels == [8, 16, 32]
    with torch.no_grad():
        outs = model(_image(2, h, w))
    assert [tuple(o.shape) for o in outs] == [
        (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip((8, 16, 32), (4, 8, 16))]
    sub = QKFormer(**TINY, out_indices=(-1, 1)).eval()
    assert sub.strides == (16, 8) and sub.out_channels == [32, 16]
    with torch.no_grad():
        assert [o.shape[1] for o in sub(_image(1, h, w))] == [32, 16]


def test_conv_inputs_are_spike_counts():
    """SPEDS outputs are sums of two spike maps ({0,1,2})."""
    seen = []
    x = _image(2, 40, 40)
    qk = calibrate_batchnorms(QKFormer(**TINY), x)
    for i in (1, 2, 3):
        getattr(qk, f'patch_embed{i}').register_forward_hook(
            lambda module, args, out: seen.append(out))
    with torch.no_grad():
        qk(x)
    assert len(seen) == 3
    values = torch.cat([t.flatten() for t in seen]).unique().tolist()
    assert set(values) <= {0, 1, 2}, values
    assert len(values) > 1, 'no spikes at all, test is vacuous'


def test_attention_neuron_is_identity_on_binary_input():
    """QKFormer stages: the block's threshold-0.5 LIF (τ = 2) passes QKTA's binary output."""
    blk = QKFormer(**TINY).stage1[0]
    assert type(blk.attn.mixer).__name__ == 'QKTokenAttention'
    s = torch.randint(0, 2, (4, 2, 8, 3, 3)).float()
    assert torch.equal(blk.attn.attn_spike(s), s)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = QKFormer(**TINY).train()
    outs = model(_image(2, 192, 192))  # 144 tokens at stride 16: attention neurons fire
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _mixer_types(model):
    return [type(m.mixer).__name__ for m in model.modules() if isinstance(m, SpikingAttention)]


@pytest.mark.parametrize('attn', [dict(type='SSA', order='qk', scale=0.125),
                                  dict(type='LRFSSA', scale=0.125), dict(type='LRFDyn')])
def test_attn_switch(attn):
    """``attn`` is the last stage's mixer; the first two keep QK token attention."""
    qk = QKFormer(**TINY, attn=attn)
    assert _mixer_types(qk) == ['QKTokenAttention'] * 2 + [attn['type']]
    outs = qk(_image(1, 36, 40))
    sum(o.sum() for o in outs).backward()
    assert [tuple(o.shape[-2:]) for o in outs] == [(9, 10), (5, 5), (3, 3)]


def test_layers_follow_conv_cfg_and_norm_cfg():
    model = QKFormer(**TINY, attn=dict(type='LRFDyn'), conv_cfg=dict(type='RoutedConv2d'),
                     norm_cfg=dict(type='SyncBN', requires_grad=True))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is RoutedConv2d for m in convs)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert all(type(m) is nn.Conv2d for m in QKFormer(**TINY).modules()
               if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize('arch, paper_m', [('10-384', 16.47), ('10-512', 29.08),
                                           ('10-768', 64.96)])
def test_parameter_count_matches_paper(arch, paper_m):
    """Backbone (built on the meta device) + 1000-class linear head."""
    with torch.device('meta'):
        model = QKFormer(arch=arch)
    count = sum(p.numel() for p in model.parameters()) + model.embed_dims * 1000 + 1000
    assert abs(count / 1e6 - paper_m) <= 0.01 * paper_m, count


def test_eval_alone_equals_in_batch():
    """Eval mode: no state carried between calls, no batch-dependent result."""
    torch.manual_seed(0)
    batch = _image(3, 40, 48).double()
    model = calibrate_batchnorms(QKFormer(**TINY).double(), batch)
    with torch.no_grad():
        alone = model(batch[1:2])
        again = model(batch[1:2])
        in_batch = model(batch)
    for a, b, c in zip(alone, again, in_batch):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c[1:2], rtol=0, atol=1e-10)


@pytest.mark.parametrize('kwargs, option', [
    (dict(arch='10-999'), 'arch'),
    (dict(arch='3-3'), 'arch'),
    (dict(arch=dict(embed_dims=32, depths=(1, 1), num_heads=2)), "arch['depths']"),
    (dict(arch=dict(embed_dims=32, depths=(1, 0, 1), num_heads=2)), "arch['depths']"),
    (dict(arch=dict(embed_dims=36, depths=(1, 1, 1), num_heads=2)), "arch['embed_dims']"),
    (dict(arch=dict(embed_dims=32, depths=(1, 1, 1), num_heads=3)), "arch['embed_dims']"),
    (dict(T=0), 'T'), (dict(T=-1), 'T'), (dict(out_indices=(3,)), 'out_indices'),
    (dict(out_indices=(7,)), 'out_indices'), (dict(mlp_ratio=-1), 'mlp_ratio'),
    (dict(attn=dict(order='kv')), 'attn'), (dict(neuron=dict(type='LIF')), 'neuron'),
])
def test_invalid_options(kwargs, option):
    """Refused at build time (from the registry too), naming the option."""
    cfg = {**TINY, **kwargs}
    match = option.replace('[', r'\[').replace(']', r'\]')
    with pytest.raises(ValueError, match=match):
        QKFormer(**cfg)
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='QKFormer', **cfg))


def test_wrong_input_layout_is_refused():
    model = QKFormer(**TINY)
    for bad in (torch.zeros(3, 16, 16), torch.zeros(1, 4, 16, 16), torch.zeros(2, 1, 3, 16, 16)):
        with pytest.raises(ValueError, match='in_channels=3'):
            model(bad)


def test_registries_build(monkeypatch):
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert isinstance(MODELS.build(dict(type='QKFormer', **TINY)), QKFormer)
    # mmpretrain's registry imports mmpretrain.models (which needs torchvision) before its first
    # build; our registration must not rely on that import, so it is skipped here.
    monkeypatch.setattr(PRETRAIN_MODELS, '_imported', True)
    model = PRETRAIN_MODELS.build(dict(type='QKFormer', **TINY))
    assert isinstance(model, QKFormer)
    assert PRETRAIN_MODELS.module_dict['QKFormer'] is QKFormer


def test_with_mmseg_fcnhead():
    model = build_segmentor(dict(
        type='EncoderDecoder', data_preprocessor=seg_data_preprocessor(),
        backbone=dict(type='QKFormer', arch=dict(embed_dims=16, depths=(1, 1, 1), num_heads=2),
                      T=2, out_indices=(2, )),
        decode_head=dict(type='FCNHead', in_channels=16, in_index=0, channels=8, num_convs=2,
                         num_classes=3)))
    train_two_iterations(model)
