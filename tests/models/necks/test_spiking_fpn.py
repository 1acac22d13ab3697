"""Spiking FPN neck: the computation written out (lateral spike → conv → BN, top-down nearest
sums, output spike → conv → BN) at sizes that are and are not multiples of two, its nearest
resize against PyTorch's, layer configs, option validation."""
import functools

import pytest
import torch
from torch import nn

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.necks import SpikingFPN
from mmlrf.models.necks.spiking_fpn import nearest_resize, spike_map
from mmlrf.models.neurons import MultiSpike, MultiStepLIF

from compiled_graphs import SCATTER_ADDS, backward_ops
from fpn_reference import IN_CHANNELS, build, features, plain_neck


@pytest.mark.parametrize('size', [(32, 48), (25, 35)], ids=['multiple', 'odd'])
@pytest.mark.parametrize('neuron', [dict(type='MultiSpike', max_value=4, norm=4),
                                    dict(type='MultiStepLIF')], ids=['multispike', 'lif'])
def test_neck_equals_the_written_out_computation(size, neuron):
    neck, _ = build(lean=False, neuron=neuron)
    feats = features(size)
    with torch.no_grad():
        got = neck([f.clone() for f in feats])
        expected = plain_neck(neck, feats)
    assert [tuple(t.shape) for t in got] == [(2, 8, *f.shape[-2:]) for f in feats]
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_neck_trains_with_gradients_to_every_parameter():
    neck, _ = build(lean=False)
    neck.train()
    feats = [f.requires_grad_() for f in features((16, 24))]
    sum(o.square().sum() for o in neck(feats)).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    assert all(p.grad is not None for p in neck.parameters())


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


def test_spike_map_is_one_step_of_the_neuron():
    x = torch.randn(2, 3, 4, 5) * 3
    assert torch.equal(spike_map(MultiSpike(), x), torch.round(torch.clamp(x, 0, 4)) / 4)
    lif = spike_map(MultiStepLIF(), x)
    assert lif.shape == x.shape and torch.equal(lif, (x / 2 >= 1).float())
    y = x.clone()
    with torch.no_grad():
        assert spike_map(MultiSpike(), y, inplace=True).data_ptr() == y.data_ptr()


def test_layers_follow_conv_cfg_and_norm_cfg():
    neck = SpikingFPN(IN_CHANNELS, 8, conv_cfg=dict(type='RoutedConv2d'),
                      norm_cfg=dict(type='SyncBN', requires_grad=True))
    convs = [m for m in neck.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and all(type(m) is RoutedConv2d for m in convs)
    assert all(isinstance(m, nn.SyncBatchNorm) for m in neck.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert all(type(m) is nn.Conv2d for m in SpikingFPN(IN_CHANNELS, 8).modules()
               if isinstance(m, nn.Conv2d))
    # the official names: lateral_convs.i.{0,1}, fpn_convs.i.{0,1}
    assert {'lateral_convs.3.0.bias', 'fpn_convs.0.1.running_var'} <= set(neck.state_dict())


def test_lean_inference_is_off_by_default():
    assert not SpikingFPN(IN_CHANNELS, 8).lean_inference
    assert SpikingFPN(IN_CHANNELS, 8, lean_inference=True).lean_inference


@pytest.mark.parametrize('build_neck, match', [
    (lambda: SpikingFPN([4, 8, 12, 32], 8, num_outs=5), 'num_outs'),
    (lambda: SpikingFPN([], 8), 'in_channels'),
])
def test_invalid_options_raise(build_neck, match):
    with pytest.raises(ValueError, match=match):
        build_neck()


def test_wrong_number_of_levels_is_refused():
    with pytest.raises(ValueError, match='expects 4 levels'):
        SpikingFPN(IN_CHANNELS, 8)(features((16, 16))[:3])
