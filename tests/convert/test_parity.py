"""Parity with the official SDT-V3 segmentation code: every backbone, neck and logits tensor and
every neuron's spike counts of the fixture (``tests/data/sdtv3``), independently of the parity
module for one input, and the parity command-line tool passing, failing on perturbed numbers
and reading other sizes from the fixture's model description."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.convert.parity import check_fixture, load_fixture
from mmlrf.convert.sdtv3 import SDTV3Segmentor, convert_official_state_dict

from fixture_sdtv3 import TINY_DIMS, fixture_dir
from tool_loading import load_tool


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fixture_parity_all_tensors_and_spike_counts(dtype):
    result = check_fixture(fixture_dir(), dtype)
    # 3 inputs x (4 backbone + 4 neck + logits), and spike counts compared for each input.
    assert len(result.rows) == 27
    assert result.ok, result.format()
    assert result.worst < 1e-4


def test_fixture_parity_direct_input_c():
    """Independent of the parity module's comparison code: input C (sides not multiples of 16)
    against the official tensors, with the model built from explicit kwargs."""
    cfg, state, inputs, expected = load_fixture(fixture_dir())
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
    cfg, state, inputs, expected = load_fixture(fixture_dir())
    dst.mkdir()
    shutil.copy(fixture_dir() / 'tiny_model.json', dst / 'tiny_model.json')
    shutil.copy(fixture_dir() / 'tiny_state_dict.pt', dst / 'tiny_state_dict.pt')
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
    cfg = json.loads((fixture_dir() / 'tiny_model.json').read_text())
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
