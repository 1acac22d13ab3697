"""Locality of token mixing (mmlrf.analysis.locality) and its command line."""
import json
import os

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from torch import nn

from mmlrf.analysis import locality
from mmlrf.analysis.benchmark import build_mixer
from mmlrf.models.mixers import LRFBranch
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')


def test_stats_of_a_hand_made_map():
    """1×3 grid, every query's weight on token 0: distances 0, 1, 2 once each."""
    stats = locality.locality_stats(torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [5.0, 0, 0]]), 1, 3)
    assert stats['histogram'] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert stats['radius'] == 1 and stats['local_mass'] == pytest.approx(2 / 3)
    assert stats['entropy'] == 0.0 and stats['mean_distance'] == pytest.approx(1.0)
    # uniform weights on a 2×2 grid: distances 0, 1, 1, 2 from every query; entropy 1
    stats = locality.locality_stats(torch.ones(4, 4), 2, 2)
    assert stats['histogram'] == pytest.approx([0.25, 0.5, 0.25])
    assert stats['entropy'] == pytest.approx(1.0) and stats['mean_distance'] == 1.0


def test_local_radius_follows_the_grid():
    """Uniform weights on a 4×4 grid: radius 2, and by hand 132 of the 256 ordered token pairs
    lie within Manhattan distance 2 (per axis 4, 6, 4, 2 pairs at offsets 0..3). A weight at
    distance 3 of every query counts as local on an 8×8 grid (radius 4), not on a 4×4 one."""
    stats = locality.locality_stats(torch.ones(16, 16), 4, 4)
    assert stats['radius'] == 2 and stats['local_mass'] == pytest.approx(132 / 256)
    for side, local in ((4, 0.0), (8, 1.0)):
        dist = locality.manhattan_distances(side, side)
        stats = locality.locality_stats((dist == 3).float(), side, side)
        assert stats['radius'] == side // 2 and stats['local_mass'] == pytest.approx(local)
    assert locality.locality_stats(torch.ones(6, 6), 2, 3)['radius'] == 1


def test_a_dilated_kernel_weighs_its_taps():
    """One depth-wise 3×3 kernel of dilation 2: weight only at distances 0, 2 and 4, and the
    centre query's row is the channel-mean |kernel| on the dilated taps."""
    torch.manual_seed(0)
    r, h, w = 2, 9, 9
    lrf = LRFBranch(3, dilations=(r,), bn=False).eval()
    weights = locality.token_influence(lrf, (3, h, w))
    hist = torch.tensor(locality.locality_stats(weights, h, w)['histogram'])
    assert hist.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert set(torch.nonzero(hist > 1e-12).flatten().tolist()) == {0, r, 2 * r}
    kern = lrf.branches[0][0].weight.detach().abs().mean(0)[0]      # [3, 3]
    expect = torch.zeros(h, w)
    for i in range(3):
        for j in range(3):
            expect[h // 2 + (i - 1) * r, w // 2 + (j - 1) * r] = kern[i, j]
    assert torch.allclose(weights[(h // 2) * w + w // 2].view(h, w), expect, atol=1e-6)


def test_ssa_weight_is_its_dense_attention_map():
    torch.manual_seed(0)
    mixer = build_mixer('official', 8, 2, 1).eval()
    h, w = 3, 4
    q = torch.randint(0, 5, (1, 1, 8, h, w)) / 4.0
    k = torch.randint(0, 5, (1, 1, 8, h, w)) / 4.0
    weights = locality.mixer_influence(mixer, q, k, torch.zeros(1, 1, 8, h, w), None)
    qf, kf = q[0, 0].flatten(1), k[0, 0].flatten(1)                 # [C, N]
    ref = torch.stack([(qf[4 * i:4 * i + 4].T @ kf[4 * i:4 * i + 4]).abs() * mixer.scale
                       for i in range(2)]).mean(0)                  # per head, mean over C
    assert torch.allclose(weights, ref, atol=1e-6)


class _Mixers(nn.Module):
    """A 'segmentor' of two SSA mixers on fixed spikes, the second silent (K = 0)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = build_mixer('official', 4, 1, 1), build_mixer('official', 4, 1, 1)

    def forward(self, images, mode):
        q = torch.ones(1, 1, 4, 2, 3)
        return self.a(q, q, q, None) + self.b(q, torch.zeros_like(q), q, None)


def test_analyse_model_skips_silent_and_large_maps():
    """Uniform Q = K = 1 on a 2×3 grid: every query weighs all 6 tokens alike (hand: distance
    histogram [6, 14, 12, 4] / 36 over the grid); a silent mixer or one above max_tokens is
    skipped and left out of the mean."""
    report = locality.analyse_model(_Mixers(), torch.zeros(1, 3, 2, 3))
    a, b = report['layers']
    assert a['histogram'] == pytest.approx([6 / 36, 14 / 36, 12 / 36, 4 / 36])
    assert a['entropy'] == pytest.approx(1.0) and 'silent' in b['skipped']
    assert report['mean']['histogram'] == a['histogram'] and report['erf'] is None
    report = locality.analyse_model(_Mixers(), torch.zeros(1, 3, 2, 3), max_tokens=5)
    assert all('max_tokens=5' in r['skipped'] for r in report['layers'])
    assert report['mean'] is None


def test_locality_cli_on_the_toy_config(tmp_path, capsys):
    tool = load_tool('analysis/locality')
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(['--help'])
    assert exit_.value.code == 0 and '--max-tokens' in capsys.readouterr().out
    out = str(tmp_path / 'l')
    report = tool.main([TOY, '--size', '32', '32', '--data-root', str(tmp_path / 'toy'),
                        '--num-images', '1', '--device', 'cpu', '--out', out,
                        '--variant', 'lrf_ssa', '--cfg-options', 'model.backbone.depths=(1,1)'])
    with open(out + '.json') as f:
        assert json.load(f) == json.loads(json.dumps(report))
    with open(out + '.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert {r['mixer'] for r in report['layers']} == {'LRFSSA'} and len(report['layers']) == 2
    assert report['images_source'] == 'dataset:ToyTextureDataset' and report['seed'] == 0
    erf = torch.tensor(report['erf'])  # over the toy data set's 64×64 images
    assert erf.shape == (64, 64) and erf.max() == 1.0 and report['variant'] == 'lrf_ssa'
