"""SDT-V3 backbone, spiking FPN neck/head, converter and parity tooling.

The reference is the official-code fixture in ``../shared/fixtures/sdtv3`` (override with the
environment variable ``MMLRF_SDTV3_FIXTURE``) and the key/shape listings of its ``keys.json``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import mmlrf  # noqa: F401  (must precede mmseg)
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmlrf.backbones import SDTV3
from mmlrf.backbones.sdt_v3 import drop_path
from mmlrf.convert.parity import check_fixture, load_fixture
from mmlrf.convert.sdtv3 import (SDTV3Segmentor, convert_official_state_dict,
                                 mmlrf_config_from_official)
from mmlrf.heads import SpikingFPN, SpikingFPNHead
from mmlrf.heads.spiking_fpn_neck import nearest_resize
from compiled_graphs import SCATTER_ADDS, backward_ops
from tool_loading import load_tool

DEFAULT_FIXTURE = Path(__file__).resolve().parents[2] / 'shared' / 'fixtures' / 'sdtv3'
FIXTURE = Path(os.environ.get('MMLRF_SDTV3_FIXTURE', DEFAULT_FIXTURE))
TINY_DIMS = [8, 12, 24, 32]


def _fixture_dir() -> Path:
    assert (FIXTURE / 'tiny_model.json').is_file(), (
        f'SDT-V3 parity fixture not found at {FIXTURE}; set MMLRF_SDTV3_FIXTURE')
    return FIXTURE


def _keys_json() -> dict:
    return json.loads((_fixture_dir() / 'keys.json').read_text())


def _tiny_backbone(**kwargs) -> SDTV3:
    return SDTV3(embed_dims=TINY_DIMS, **kwargs)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fixture_parity_all_tensors_and_spike_counts(dtype):
    result = check_fixture(_fixture_dir(), dtype)
    # 3 inputs x (4 backbone + 4 neck + logits), and spike counts compared for each input.
    assert len(result.rows) == 27
    assert result.ok, result.format()
    assert result.worst < 1e-4


def test_fixture_parity_direct_input_c():
    """Independent of the parity module's comparison code: input C (sides not multiples of 16)
    against the official tensors, with the model built from explicit kwargs."""
    cfg, state, inputs, expected = load_fixture(_fixture_dir())
    model = SDTV3Segmentor(
        backbone=dict(embed_dims=TINY_DIMS, num_heads=8, attn=dict(type='SSA', order='qk')),
        neck=dict(in_channels=[4, 8, 12, 32], out_channels=8,
                  neuron=dict(type='MultiSpike', max_value=4, norm=4)),
        decode_head=dict(in_channels=[8] * 4, channels=8, num_classes=5, in_index=[0, 1, 2, 3],
                         feature_strides=(2, 4, 8, 16)))
    converted, report = convert_official_state_dict(state)
    assert report.ok, report.format()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        feats, neck, logits = model.eval().forward_parts(inputs['C'])
    ref = expected['C']
    for got, want in zip(list(feats) + list(neck) + [logits],
                         ref['backbone'] + ref['neck'] + [ref['logits']]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert logits.shape == (1, 5, 20, 28)


def _write_fixture(dst: Path, names=('C',), perturb=None):
    cfg, state, inputs, expected = load_fixture(_fixture_dir())
    dst.mkdir()
    shutil.copy(_fixture_dir() / 'tiny_model.json', dst / 'tiny_model.json')
    shutil.copy(_fixture_dir() / 'tiny_state_dict.pt', dst / 'tiny_state_dict.pt')
    exp = {n: expected[n] for n in names}
    exp['spike_layers'] = expected['spike_layers']
    exp['spike_level_counts'] = {n: expected['spike_level_counts'][n].clone() for n in names}
    if perturb is not None:
        perturb(exp)
    torch.save({n: inputs[n] for n in names}, dst / 'inputs.pt')
    torch.save(exp, dst / 'expected.pt')
    return dst


def test_parity_cli_passes_on_fixture(tmp_path, capsys):
    fixture = _write_fixture(tmp_path / 'fx')
    assert load_tool('check_sdtv3_parity').main([str(fixture)]) == 0
    out = capsys.readouterr().out
    assert 'C logits' in out and 'max|diff|' in out and 'PASS' in out


def test_parity_cli_fails_on_perturbed_tensor(tmp_path, capsys):
    def perturb(exp):
        exp['C']['logits'] = exp['C']['logits'].clone()
        exp['C']['logits'][0, 2, 3, 4] += 0.01

    fixture = _write_fixture(tmp_path / 'fx', perturb=perturb)
    assert load_tool('check_sdtv3_parity').main([str(fixture), '--dtype', 'float64']) == 1
    out = capsys.readouterr().out
    assert 'logits' in out and 'MISMATCH' in out and 'FAIL' in out


def test_parity_cli_fails_on_perturbed_spike_counts(tmp_path, capsys):
    def perturb(exp):
        counts = exp['spike_level_counts']['C']
        counts[50, 1] += 1
        counts[50, 2] -= 1

    fixture = _write_fixture(tmp_path / 'fx', perturb=perturb)
    assert load_tool('check_sdtv3_parity').main([str(fixture)]) == 1
    assert 'neuron #50 backbone.block3.2.attn.attn_spike' in capsys.readouterr().out


def test_parity_builds_other_sizes_from_json(tmp_path):
    """The parity tool reads sizes, class count and input shapes from ``tiny_model.json``."""
    fixture = tmp_path / 'other'
    fixture.mkdir()
    cfg = json.loads((_fixture_dir() / 'tiny_model.json').read_text())
    cfg['backbone']['embed_dim'] = [4, 8, 16, 24]
    cfg['backbone']['num_heads'] = 4
    cfg['neck'].update(in_channels=[2, 4, 8, 24], out_channels=6)
    cfg['decode_head'].update(in_channels=[6] * 4, channels=6, num_classes=3)
    (fixture / 'tiny_model.json').write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = SDTV3Segmentor(
        backbone=dict(embed_dims=[4, 8, 16, 24], num_heads=4),
        neck=dict(in_channels=[2, 4, 8, 24], out_channels=6),
        decode_head=dict(in_channels=[6] * 4, channels=6, num_classes=3, in_index=[0, 1, 2, 3]))
    official = {k: (v.squeeze(-1) if '.mlp.fc' in k and k.endswith('conv.weight') else v)
                for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 24, 40, dtype=torch.float64)
    with torch.no_grad():
        feats, neck, logits = model.double().eval().forward_parts(x)
    torch.save(official, fixture / 'tiny_state_dict.pt')
    torch.save({'D': x.float()}, fixture / 'inputs.pt')
    torch.save({'D': dict(backbone=[f.float() for f in feats], neck=[n.float() for n in neck],
                          logits=logits.float())}, fixture / 'expected.pt')
    result = check_fixture(fixture, torch.float64)
    assert [r[2] for r in result.rows][-1] == (1, 3, 12, 20)
    assert result.ok, result.format()


# --------------------------------------------------------------------------- converter


def test_convert_fixture_state_dict_reshapes_mlp_only():
    _, state, _, _ = load_fixture(_fixture_dir())
    converted, report = convert_official_state_dict(state)
    assert report.ok and report.kind == 'segmentor' and not report.filled
    assert list(converted) == list(state)
    key = 'backbone.block4.1.mlp.fc2_conv.weight'
    assert state[key].shape == (32, 128, 1) and converted[key].shape == (32, 128, 1, 1)
    assert torch.equal(converted[key][..., 0], state[key])


@pytest.mark.parametrize('size', ['official_10M', 'official_19M'])
def test_convert_full_size_official_key_listing(size):
    """Every official 10M/19M key converts onto our model with the right shape (meta tensors)."""
    shapes = _keys_json()[size]
    state = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    converted, report = convert_official_state_dict(state)
    assert report.ok, report.format()
    assert len(converted) == 727


def _imagenet_checkpoint(path: Path, classes: int = 7) -> dict:
    """Synthetic official classification checkpoint for the tiny model, built from keys.json."""
    torch.manual_seed(1)
    model = {}
    for key, shape in _keys_json()['tiny'].items():
        if not key.startswith('backbone.') or 'layer_scale' in key:
            continue
        model[key[len('backbone.'):]] = (torch.zeros(shape, dtype=torch.int64) if not shape
                                         else torch.randn(shape))
    model['head.weight'] = torch.randn(classes, TINY_DIMS[3])
    model['head.bias'] = torch.randn(classes)
    torch.save(dict(model=model, optimizer={}, epoch=3, scaler={},
                    args=argparse.Namespace(model='Efficient_Spiking_Transformer_m', lr=1e-3)),
               path)
    return model


@pytest.mark.parametrize('layer_scale', [None, 1.0])
def test_convert_imagenet_checkpoint(tmp_path, capsys, layer_scale):
    src, dst = tmp_path / 'cls.pth', tmp_path / 'out.pth'
    model = _imagenet_checkpoint(src)
    argv = [str(src), str(dst)] + ([] if layer_scale is None else ['--layer-scale', '1.0'])
    assert load_tool('convert_sdtv3').main(argv) == 0
    out = capsys.readouterr().out
    assert 'filled keys: 24' in out and 'dropped keys: 2' in out and 'missing keys: 0' in out
    saved = torch.load(dst, weights_only=True)['state_dict']
    expected_ls = 1e-6 if layer_scale is None else 1.0
    scales = [k for k in saved if 'layer_scale' in k]
    assert len(scales) == 24
    assert all(torch.all(saved[k] == torch.tensor(expected_ls)) for k in scales)
    assert torch.equal(saved['backbone.downsample2.encode_conv.weight'],
                       model['downsample2.encode_conv.weight'])
    assert saved['backbone.block3.0.mlp.fc1_conv.weight'].shape == (96, 24, 1, 1)
    # Usable as the backbone's init_cfg (mmengine's Pretrained with prefix 'backbone.').
    backbone = _tiny_backbone(
        init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    backbone.init_weights()
    loaded = backbone.state_dict()
    assert loaded.keys() == {k[len('backbone.'):] for k in saved}
    assert all(torch.equal(v, saved['backbone.' + k]) for k, v in loaded.items())


def test_convert_refuses_partial_unless_allowed(tmp_path, capsys):
    _, state, _, _ = load_fixture(_fixture_dir())
    state = dict(state)
    del state['backbone.block3.2.attn.v_conv.1.running_var']
    state['neck.extra.weight'] = torch.zeros(3)
    state['decode_head.conv_seg.bias'] = torch.zeros(6)
    src, dst = tmp_path / 'seg.pth', tmp_path / 'out.pth'
    torch.save(dict(state_dict=state, meta={}), src)
    tool = load_tool('convert_sdtv3')
    assert tool.main([str(src), str(dst)]) == 1
    assert not dst.exists()
    out = capsys.readouterr().out
    assert 'backbone.block3.2.attn.v_conv.1.running_var' in out
    assert 'neck.extra.weight' in out
    assert 'decode_head.conv_seg.bias: source (6,) vs target (5,)' in out
    assert 'PARTIAL' in out
    assert tool.main([str(src), str(dst), '--allow-partial']) == 0
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['complete'] is False
    assert 'backbone.block3.2.attn.v_conv.1.running_var' not in saved['state_dict']
    assert 'backbone.block3.2.attn.v_conv.1.weight' in saved['state_dict']


# --------------------------------------------------------------------------- architecture


@pytest.mark.parametrize('arch,classes_params', [('10M', 11_485_462), ('19M', 20_354_254)])
def test_full_segmentation_model_parameter_counts(arch, classes_params):
    with torch.device('meta'):
        backbone = MODELS.build(dict(type='SDTV3', arch=arch))
        neck = MODELS.build(dict(type='SpikingFPN', in_channels=backbone.out_channels,
                                 out_channels=128))
        head = MODELS.build(dict(type='SpikingFPNHead', in_channels=[128] * 4, channels=128,
                                 num_classes=150, in_index=[0, 1, 2, 3]))
    total = sum(p.numel() for m in (backbone, neck, head) for p in m.parameters())
    assert total == classes_params


def test_5m_arch_matches_paper_classification_size():
    """SDT-V3-S: 5.11 M parameters on ImageNet (backbone without layer scales + 1000-way head)."""
    with torch.device('meta'):
        model = SDTV3(arch='S')
    params = sum(p.numel() for k, p in model.named_parameters() if 'layer_scale' not in k)
    assert model.embed_dims == [32, 64, 128, 192]
    assert round((params + 192 * 1000 + 1000) / 1e6, 2) == 5.11


@pytest.mark.parametrize('size', [(40, 56), (33, 64)])
def test_true_strides_and_channels(size):
    model = _tiny_backbone(out_indices=(1, 3)).eval()
    assert model.strides == (2, 4, 8, 16)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    assert model.out_channels == [8, 32] and [f.shape[1] for f in feats] == [8, 32]
    for f, s in zip(feats, (4, 16)):
        assert tuple(f.shape[-2:]) == (math.ceil(size[0] / s), math.ceil(size[1] / s))


@pytest.mark.parametrize('mixer', ['LRFSSA', 'LRFDyn'])
def test_backbone_with_lrf_mixers_forward_backward(mixer):
    if mixer not in MODELS.module_dict:
        pytest.skip(f'token mixer {mixer!r} is not registered yet (mmlrf/attention)')
    torch.manual_seed(0)
    model = _tiny_backbone(attn=dict(type=mixer), layer_scale_init=1.0).train()
    feats = model(torch.randn(1, 3, 32, 32))
    sum(f.square().mean() for f in feats).backward()
    mixer_params = [p for n, p in model.named_parameters() if '.attn.mixer.' in n]
    assert model.downsample1_1.encode_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mixer_params)


def test_segmentor_loss_backward_and_predict_in_mmseg():
    init_default_scope('mmseg')
    model = MODELS.build(dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32)),
        backbone=dict(type='SDTV3', embed_dims=TINY_DIMS, layer_scale_init=1.0,
                      drop_path_rate=0.1),
        neck=dict(type='SpikingFPN', in_channels=[4, 8, 12, 32], out_channels=8),
        decode_head=dict(type='SpikingFPNHead', in_channels=[8] * 4, channels=8, num_classes=3,
                         in_index=[0, 1, 2, 3], dropout_ratio=0.1),
        test_cfg=ConfigDict(mode='whole')))
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, 30, 30))))
        s.set_metainfo(dict(img_shape=(30, 30), ori_shape=(30, 30), pad_shape=(30, 30)))
        samples.append(s)
    x = torch.randn(2, 3, 30, 30)
    losses = model.loss(x, samples)
    losses['decode.loss_ce'].backward()
    assert model.backbone.block3[0].attn.q_conv[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        pred = model.predict(x, samples)
    assert pred[0].seg_logits.data.shape == (3, 30, 30)


@pytest.mark.parametrize('size', [(6, 10), (5, 9), (7, 10)])
def test_fpn_nearest_resize_is_pytorchs_nearest(size):
    """Values and gradients of ``F.interpolate(mode='nearest')``, for the exact ×2 (a broadcast
    copy) and for other sizes; the ×2's compiled backward has no scatter-add."""
    x = torch.randn(2, 3, 3, 5, requires_grad=True)
    grad = torch.randn(2, 3, *size)
    got = nearest_resize(x, size)
    expect = torch.nn.functional.interpolate(x, size=size, mode='nearest')
    assert torch.equal(got, expect)
    g_got, = torch.autograd.grad(got, x, grad)
    g_expect, = torch.autograd.grad(expect, x, grad)
    assert torch.allclose(g_got, g_expect, rtol=0, atol=1e-6)
    if size == (6, 10):
        ops = backward_ops(lambda t: nearest_resize(t, size), x)
        assert 'sum' in ops and not ops & SCATTER_ADDS, ops
        interpolate = functools.partial(torch.nn.functional.interpolate, size=size,
                                        mode='nearest')
        assert backward_ops(interpolate, x) & SCATTER_ADDS  # what its backward decomposes into


def test_depths_set_the_transformer_blocks_and_drop_path_ramp():
    """``depths`` builds that many blocks per stage (default: the official 6 + 2); the
    stochastic-depth rate rises linearly from 0 to ``drop_path_rate`` over all of them."""
    official = _tiny_backbone(drop_path_rate=0.35)
    assert official.depths == (6, 2) and (len(official.block3), len(official.block4)) == (6, 2)
    rates = [b.drop_path_rate for b in (*official.block3, *official.block4)]
    assert rates == pytest.approx([0.05 * j for j in range(8)])
    shallow = _tiny_backbone(depths=[2, 1], drop_path_rate=0.2)
    assert shallow.depths == (2, 1) and (len(shallow.block3), len(shallow.block4)) == (2, 1)
    assert [b.drop_path_rate for b in (*shallow.block3, *shallow.block4)] == \
        pytest.approx([0.0, 0.1, 0.2])
    single = _tiny_backbone(depths=(1, 1), drop_path_rate=0.2)
    assert [b.drop_path_rate for b in (*single.block3, *single.block4)] == [0.0, 0.2]
    with torch.no_grad():
        feats = single.eval()(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == single.out_channels


def test_registered_in_mmpretrain():
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert PRETRAIN_MODELS.module_dict.get('SDTV3') is SDTV3


def test_drop_path_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(1, 64, 3, 2, 2)
    y = drop_path(x, 0.5, training=True)
    per_sample = y.flatten(2).unique(dim=-1)
    assert set(per_sample.flatten().tolist()) <= {0.0, 2.0}
    assert 0 < (y[0, :, 0, 0, 0] == 0).sum() < 64
    assert torch.equal(drop_path(x, 0.5, training=False), x)


@pytest.mark.parametrize('build, match', [
    (lambda: SDTV3(arch='7M'), 'arch'),
    (lambda: SDTV3(embed_dims=[7, 12, 24, 32]), 'embed_dims'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, num_heads=5), 'num_heads'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, out_indices=(4,)), 'out_indices'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, attn='ssa'), 'attn'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, drop_path_rate=1.0), 'drop_path_rate'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, depths=(6,)), 'depths'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, depths=(0, 2)), 'depths'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, depths=(1.5, 2)), 'depths'),
    (lambda: SDTV3(embed_dims=TINY_DIMS, depths=6), 'depths'),
    (lambda: SpikingFPN([4, 8, 12, 32], 8, num_outs=5), 'num_outs'),
    (lambda: SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3,
                            in_index=[0, 1, 2, 3], feature_strides=(2, 4, 12, 16)),
     'feature_strides'),
    (lambda: SpikingFPNHead(in_channels=[8, 8, 8, 16], channels=8, num_classes=3,
                            in_index=[0, 1, 2, 3]), 'in_channels'),
    (lambda: mmlrf_config_from_official(dict(backbone=dict(decode_mode='x'), neck={},
                                             decode_head={})), 'decode_mode'),
])
def test_invalid_options_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
