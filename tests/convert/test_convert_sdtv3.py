"""Official SDT-V3 checkpoints converted onto mmlrf's model: the fixture's segmentor (only the
MLP weights reshaped), every key of the full-size official listings, ImageNet classification
checkpoints (layer scales filled, head dropped) through the command-line tool, partial
conversions refused unless allowed, official configs mapped."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.convert.parity import load_fixture
from mmlrf.convert.sdtv3 import convert_official_state_dict, mmlrf_config_from_official
from mmlrf.models.backbones import SDTV3

from fixture_sdtv3 import TINY_DIMS, fixture_dir, keys_json
from tool_loading import load_tool


def test_convert_fixture_state_dict_reshapes_mlp_only():
    _, state, _, _ = load_fixture(fixture_dir())
    converted, report = convert_official_state_dict(state)
    assert report.ok and report.kind == 'segmentor' and not report.filled
    assert list(converted) == list(state)
    key = 'backbone.block4.1.mlp.fc2_conv.weight'
    assert state[key].shape == (32, 128, 1) and converted[key].shape == (32, 128, 1, 1)
    assert torch.equal(converted[key][..., 0], state[key])


@pytest.mark.parametrize('size', ['official_10M', 'official_19M'])
def test_convert_full_size_official_key_listing(size):
    """Every official 10M/19M key converts onto our model with the right shape (meta tensors)."""
    shapes = keys_json()[size]
    state = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    converted, report = convert_official_state_dict(state)
    assert report.ok, report.format()
    assert len(converted) == 727


def _imagenet_checkpoint(path: Path, classes: int = 7) -> dict:
    """Synthetic official classification checkpoint for the tiny model, built from keys.json."""
    torch.manual_seed(1)
    model = {}
    for key, shape in keys_json()['tiny'].items():
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
    backbone = SDTV3(embed_dims=TINY_DIMS,
                     init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    backbone.init_weights()
    loaded = backbone.state_dict()
    assert loaded.keys() == {k[len('backbone.'):] for k in saved}
    assert all(torch.equal(v, saved['backbone.' + k]) for k, v in loaded.items())


def test_convert_refuses_partial_unless_allowed(tmp_path, capsys):
    _, state, _, _ = load_fixture(fixture_dir())
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


def test_official_config_with_unknown_decode_mode_is_refused():
    with pytest.raises(ValueError, match='decode_mode'):
        mmlrf_config_from_official(dict(backbone=dict(decode_mode='x'), neck={}, decode_head={}))


def _official_imagenet_19m(path: Path) -> dict:
    """A random official-format SDT-V3-19M ImageNet checkpoint, from keys.json's full
    segmentation listing mapped as the fixture README says (``'backbone.' + key``, no layer
    scales, a 1000-class ``head``)."""
    listing = keys_json()
    mapping = listing['imagenet_classification_checkpoints']['19M']
    absent = set(mapping['model_keys_absent_from_checkpoint'])
    gen = torch.Generator().manual_seed(5)
    model = {}
    for key, shape in listing['official_19M'].items():
        if key.startswith('backbone.') and key not in absent:
            model[key[len('backbone.'):]] = (torch.zeros(shape, dtype=torch.int64) if not shape
                                             else torch.randn(shape, generator=gen))
    for key, shape in mapping['checkpoint_keys_without_model_key'].items():
        model[key] = torch.randn(shape, generator=gen)
    assert len(model) == mapping['keys_in_checkpoint']
    torch.save(dict(model=model, args=argparse.Namespace(model='Efficient_Spiking_Transformer_l')),
               path)
    return model


def test_official_19m_imagenet_weights_initialise_the_flagship(tmp_path, monkeypatch):
    """The flagship config's model (SDT-V3-19M, LRF-Dyn) initialised from a converted official
    ImageNet checkpoint: every official tensor lands where its name says, the layer scales take
    the official fine-tuning value, and the load report names only the LRF branches and the
    dynamics as new (an INFO line, not a warning); nothing is missing."""
    import logging

    import mmlrf.interop.pretrained as pretrained
    from mmengine.config import Config
    from mmseg.registry import MODELS
    official = _official_imagenet_19m(tmp_path / 'official.pth')
    converted = tmp_path / 'sdtv3-19m_in1k.pth'
    assert load_tool('convert_sdtv3').main([str(tmp_path / 'official.pth'), str(converted)]) == 0
    monkeypatch.setenv('MMLRF_PRETRAINED', str(converted))
    cfg = Config.fromfile('configs/lrfdyn_ade20k.py')
    assert cfg.model.backbone.init_cfg.checkpoint == str(converted)
    model = MODELS.build(cfg.model)
    messages = []
    monkeypatch.setattr(pretrained, 'print_log', lambda msg, logger=None, level=logging.INFO:
                        messages.append((level, msg)))
    model.backbone.init_weights()
    state = model.backbone.state_dict()
    for key, value in official.items():
        if not key.startswith('head.'):
            expect = value.unsqueeze(-1) if '.mlp.fc' in key and value.dim() == 3 else value
            assert torch.equal(state[key], expect), key
    assert all(torch.all(state[k] == 1e-6) for k in state if 'layer_scale' in k)
    new = [k for k in state if k not in official and 'layer_scale' not in k]
    assert new and all('.attn.mixer.lrf.' in k or '.attn.mixer.dynamics.' in k for k in new)
    report = next(msg for level, msg in messages if 'new in this model' in msg)
    assert all(level == logging.INFO for level, _ in messages), messages
    for owner in {k.rsplit('.', 1)[0] for k in new}:
        assert owner in report, owner
    assert 'missing' not in report


def test_other_missing_keys_are_still_an_error(tmp_path):
    """Loading into LRF-Dyn is lenient only for the variant's additions: a checkpoint without
    a Q projection of the host attention is refused, naming the key."""
    from mmlrf.interop import CheckpointMismatchError, load_pretrained
    backbone = SDTV3(embed_dims=TINY_DIMS, num_heads=4, attn=dict(type='LRFDyn'))
    state = {f'backbone.{k}': v for k, v in SDTV3(
        embed_dims=TINY_DIMS, num_heads=4).state_dict().items() if 'block3.0.attn.q_conv' not in k}
    torch.save(dict(state_dict=state), tmp_path / 'ckpt.pth')
    with pytest.raises(CheckpointMismatchError, match=r'block3\.0\.attn\.q_conv\.0\.weight'):
        load_pretrained(backbone, str(tmp_path / 'ckpt.pth'))
