"""Where a pass spends its time (mmlrf.analysis.profile) and its command line."""
import json
import os

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from torch import nn

from mmlrf.analysis.profile import format_profile, profile_pass
from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.neurons import MultiSpike
from devices import needs_cuda
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')


def test_time_goes_to_leaf_module_types():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    grad_enabled = []

    def run():
        grad_enabled.append(torch.is_grad_enabled())
        model(x)
    report = profile_pass(model, run, torch.device('cpu'), iterations=2, warmup=1)
    assert grad_enabled == [False] * 5  # warm-up, timed and profiled passes without autograd
    assert {r['name']: r['calls'] for r in report['modules']} == {
        'Conv2d': 2, 'BatchNorm2d': 1, 'ReLU': 1}  # leaves only, per pass
    assert all(0 < r['share'] <= 1 for r in report['modules'])
    assert sum(r['ms'] for r in report['modules']) <= report['profiled_ms'] + 1e-6
    assert any('conv' in r['name'] for r in report['ops']) and report['op_calls'] > 4
    assert report['backward'] == [] and report['kernels'] == []  # no training, no CUDA
    assert 'outside leaf modules' in format_profile(report)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match='iterations'):
        profile_pass(model, run, torch.device('cpu'), iterations=0)


class _Reentrant(torch.autograd.Function):
    """``2x`` whose backward runs autograd again (as the chunked scan's does)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        with torch.enable_grad():
            x = ctx.saved_tensors[0].detach().requires_grad_()
            return torch.autograd.grad(x * 2, x, grad)[0]


def test_training_step_time_goes_to_backward_nodes():
    """Outermost backward nodes only (what a re-entrant backward evaluates counts for it); the
    leaf-module ranges keep the spike-code path of the routed conv."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), MultiSpike(),
                          RoutedConv2d(8, 4, 3)).train()
    x = torch.randn(2, 3, 16, 16)

    def run():
        model.zero_grad(set_to_none=True)
        _Reentrant.apply(model(x)).sum().backward()
    report = profile_pass(model, run, torch.device('cpu'), iterations=2, warmup=1, train=True)
    calls = {r['name']: r['calls'] for r in report['backward']}
    assert calls['_ReentrantBackward'] == 1 and 'MulBackward0' not in calls
    assert calls['_SpikeCodeConv2dBackward'] == calls['_MultiSpikeSTEBackward'] == 1
    assert calls['ConvolutionBackward0'] == calls['NativeBatchNormBackward0'] == 1
    rows = report['modules'] + report['backward']
    assert all(r['ms'] >= 0 for r in rows)
    assert sum(r['ms'] for r in rows) <= report['profiled_ms'] + 1e-6
    assert 'backward: _SpikeCodeConv2dBackward' in format_profile(report)


@needs_cuda
def test_cuda_rows_are_device_time_and_kernels_are_listed():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).cuda().train()
    x = torch.randn(2, 3, 32, 32, device='cuda')

    def run():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    report = profile_pass(model, run, torch.device('cuda'), iterations=2, warmup=1, train=True)
    assert report['basis'] == 'device'
    assert report['kernels'] and all(r['ms'] > 0 for r in report['kernels'])
    backward = {r['name']: r['ms'] for r in report['backward']}
    (bn,) = [ms for name, ms in backward.items() if name.endswith('BatchNormBackward0')]
    assert backward['ConvolutionBackward0'] > 0 and bn > 0


def test_profile_cli_on_the_toy_config(tmp_path, capsys):
    tool = load_tool('analysis/profile_model')
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(['--help'])
    usage = capsys.readouterr().out
    assert exit_.value.code == 0 and '--fuse-conv-bn' in usage and '--compile' not in usage
    out = str(tmp_path / 'p')
    common = [TOY, '--variant', 'lrf_dyn', '--resolution', '32x32', '--iterations', '1',
              '--warmup', '0', '--device', 'cpu', '--out', out]
    report = tool.main(common + ['--fuse-conv-bn', '--plain-inference'])
    names = {r['name'] for r in report['modules']}
    assert {'RoutedConv2d', 'MultiSpike', 'DendriticDynamics'} <= names
    assert 'BatchNorm2d' not in names
    with open(out + '.json') as f:
        saved = json.load(f)
    assert saved['options'] == ['fuse_conv_bn'] and saved['lean'] is False
    report = tool.main(common + ['--batch', '2', '--mode', 'train'])
    assert 'BatchNorm2d' in {r['name'] for r in report['modules']}
    calls = {r['name']: r['calls'] for r in report['backward']}
    assert calls['_ChunkedScanBackward'] == 8 and calls['_SpikeCodeConv2dBackward'] > 0
    with pytest.raises(SystemExit, match='infer mode only'):
        tool.main(common + ['--mode', 'train', '--fuse-conv-bn'])
