"""CPU convolution routes (mmlrf/conv.py): 1×1 convs as matrix products and the depth-wise
backward as forward convolutions. Outputs and gradients equal F.conv2d's / autograd's for every
geometry a route accepts, a route is taken exactly where it applies, and RoutedConv2d is a
drop-in nn.Conv2d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlrf import conv as conv_routes
from mmlrf.conv import (RoutedConv2d, conv2d_backward, conv2d_forward, cpu_routes,
                        depthwise_backward_applies, pointwise_applies)

# (kernel (kh, kw), padding, dilation, bias): the LRF branch's dilated 3x3s, SepConv's 7x7,
# a non-square kernel with unequal padding, a 'valid' conv (padding 0) and padding at the reach
GEOMETRIES = [((3, 3), (3, 3), (3, 3), False), ((3, 3), (5, 5), (5, 5), False),
              ((7, 7), (3, 3), (1, 1), False), ((3, 5), (1, 0), (2, 1), True),
              ((3, 3), (0, 0), (1, 1), True), ((3, 3), (4, 4), (2, 2), False)]


def _autograd_reference(x, weight, bias, padding, dilation, grad):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    out = F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return torch.autograd.grad(out, inputs, grad)


@pytest.mark.parametrize('kernel,padding,dilation,bias', GEOMETRIES)
def test_depthwise_grads_equal_autograd(kernel, padding, dilation, bias):
    torch.manual_seed(0)
    c = 5
    x = torch.randn(3, c, 11, 13, dtype=torch.float64)
    weight = torch.randn(c, 1, *kernel, dtype=torch.float64)
    b = torch.randn(c, dtype=torch.float64) if bias else None
    assert depthwise_backward_applies(x, weight, (1, 1), padding, dilation, c)
    out = F.conv2d(x, weight, b, 1, padding, dilation, c)
    grad = torch.randn_like(out)
    got = conv2d_backward(grad, x, weight, None if b is None else b.shape, (1, 1), padding,
                          dilation, c, (True, True, bias))
    want = _autograd_reference(x, weight, b, padding, dilation, grad)
    assert got[0].shape == x.shape and got[1].shape == weight.shape
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    assert (got[2] is None) == (not bias)


def test_mask_skips_gradients():
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    grad = torch.randn(1, 4, 6, 6)
    g_x, g_w, g_b = conv2d_backward(grad, x, weight, None, (1, 1), (1, 1), (1, 1), 4,
                                    (False, True, False))
    assert g_x is None and g_b is None and g_w.shape == weight.shape
    g_x, g_w, _ = conv2d_backward(grad, x, weight, None, (1, 1), (1, 1), (1, 1), 4,
                                  (True, False, False))
    assert g_w is None and g_x.shape == x.shape


@pytest.mark.parametrize('weight_shape,stride,padding,groups', [
    ((4, 1, 3, 3), (2, 2), (1, 1), 4),    # strided
    ((4, 1, 3, 3), (1, 1), (3, 3), 4),    # padding beyond the kernel's reach (2)
    ((8, 1, 3, 3), (1, 1), (1, 1), 4),    # channel multiplier 2
    ((4, 4, 3, 3), (1, 1), (1, 1), 1)])   # dense conv
def test_other_convs_use_autograds_backward(monkeypatch, weight_shape, stride, padding, groups):
    """Outside its conditions the route is not taken, and the fallback still gives autograd's
    gradients."""
    calls = []
    monkeypatch.setattr(conv_routes, '_depthwise_grads',
                        lambda *a: calls.append(a) or pytest.fail('route taken'))
    torch.manual_seed(0)
    x, weight = torch.randn(2, 4, 9, 9), torch.randn(*weight_shape)
    assert not depthwise_backward_applies(x, weight, stride, padding, (1, 1), groups)
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out = F.conv2d(xr, wr, None, stride, padding, 1, groups)
    grad = torch.randn_like(out)
    want = torch.autograd.grad(out, [xr, wr], grad)
    got = conv2d_backward(grad, x, weight, None, stride, padding, (1, 1), groups,
                          (True, True, False))
    assert not calls
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize('args,kwargs,route', [
    ((6, 6, 3), dict(padding=3, dilation=3, groups=6, bias=False), '_depthwise_grads'),
    ((6, 4, 1), dict(), '_pointwise_grads')], ids=['depthwise', 'pointwise'])
def test_routed_conv2d_is_a_drop_in_conv2d(monkeypatch, args, kwargs, route):
    torch.manual_seed(0)
    conv = RoutedConv2d(*args, **kwargs)
    plain = nn.Conv2d(*args, **kwargs)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 10, 10, requires_grad=True)
    xp = x.detach().clone().requires_grad_()
    taken = []
    real = getattr(conv_routes, route)
    monkeypatch.setattr(conv_routes, route, lambda *a: taken.append(1) or real(*a))
    out, ref = conv(x), plain(xp)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert taken == [1]
    torch.testing.assert_close(x.grad, xp.grad)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad)
    if conv.bias is not None:
        torch.testing.assert_close(conv.bias.grad, plain.bias.grad)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), plain(x))
    assert taken == [1]  # no graph, no backward


def test_cpu_routes_switch(monkeypatch):
    """cpu_routes(False) sends both routes to oneDNN inside the block, and restores the
    setting on exit, also on an exception."""
    for name in ('_pointwise_forward', '_pointwise_grads', '_depthwise_grads'):
        monkeypatch.setattr(conv_routes, name, lambda *a: pytest.fail('route taken'))
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    pointwise, depthwise = RoutedConv2d(6, 4, 1), RoutedConv2d(6, 6, 3, padding=1, groups=6)
    with cpu_routes(False):
        assert not pointwise_applies(x, pointwise.weight, (1, 1), (0, 0), 1)
        assert not depthwise_backward_applies(x, depthwise.weight, (1, 1), (1, 1), (1, 1), 6)
        (pointwise(x).sum() + depthwise(x).sum()).backward()
        with torch.no_grad():
            pointwise(x)
    assert x.grad is not None
    with pytest.raises(KeyError):
        with cpu_routes(False):
            raise KeyError
    assert pointwise_applies(x, pointwise.weight, (1, 1), (0, 0), 1)
    assert depthwise_backward_applies(x, depthwise.weight, (1, 1), (1, 1), (1, 1), 6)


def test_convbn_builds_routed_convs():
    from mmlrf.layers import ConvBN
    for conv in (ConvBN(8, 8, 7, groups=8)[0], ConvBN(8, 8, 3, stride=2, groups=8)[0],
                 ConvBN(8, 16, 3)[0], ConvBN(8, 16, 1)[0]):
        assert type(conv) is RoutedConv2d
    assert ConvBN(8, 8, 3, stride=2, groups=8)[0].stride == (2, 2)


@pytest.mark.parametrize('batch,bias', [(1, True), (3, True), (2, False)])
def test_pointwise_equals_conv_and_autograd(batch, bias):
    torch.manual_seed(0)
    x = torch.randn(batch, 5, 7, 9, dtype=torch.float64)
    weight = torch.randn(4, 5, 1, 1, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64) if bias else None
    geometry = ((1, 1), (0, 0), (1, 1), 1)
    assert pointwise_applies(x, weight, (1, 1), (0, 0), 1)
    out = conv2d_forward(x, weight, b, *geometry)
    want = F.conv2d(x, weight, b)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    got = conv2d_backward(grad, x, weight, None if b is None else b.shape, *geometry,
                          (True, True, bias))
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    br = None if b is None else b.clone().requires_grad_()
    ref = torch.autograd.grad(F.conv2d(xr, wr, br), [xr, wr] + ([br] if bias else []), grad)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert (got[2] is None) == (not bias)
    # a non-contiguous output gradient (e.g. from an expand) works too
    g_exp = torch.ones(1, 4, 1, 1, dtype=torch.float64).expand(batch, 4, 7, 9)
    got = conv2d_backward(g_exp, x, weight, None, *geometry, (True, True, False))
    ref = torch.autograd.grad(F.conv2d(xr, wr), [xr, wr], g_exp)
    for g, r in zip(got[:2], ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('x_fn,weight_shape,stride,padding,groups', [
    (lambda x: x, (4, 6, 1, 1), (2, 2), (0, 0), 1),     # strided
    (lambda x: x, (4, 6, 1, 1), (1, 1), (1, 1), 1),     # padded
    (lambda x: x, (4, 3, 1, 1), (1, 1), (0, 0), 2),     # grouped
    (lambda x: x, (4, 6, 3, 3), (1, 1), (1, 1), 1),     # 3x3
    (lambda x: x.contiguous(memory_format=torch.channels_last), (4, 6, 1, 1), (1, 1), (0, 0),
     1),                                                 # channels-last input
    (lambda x: x[..., ::2], (4, 6, 1, 1), (1, 1), (0, 0), 1),  # non-contiguous input
    (lambda x: x, (4, 6, 1, 1, 'channels_last'), (1, 1), (0, 0), 1)])  # channels-last weight
def test_other_convs_are_not_matrix_products(monkeypatch, x_fn, weight_shape, stride, padding,
                                             groups):
    """Outside its conditions the 1x1 route is not taken, and the fallback is F.conv2d (with a
    channels-last weight F.conv2d answers channels-last, which a matrix product would not)."""
    for name in ('_pointwise_forward', '_pointwise_grads'):
        monkeypatch.setattr(conv_routes, name, lambda *a: pytest.fail('route taken'))
    torch.manual_seed(0)
    x, weight = x_fn(torch.randn(2, 6, 8, 8)), torch.randn(*weight_shape[:4])
    if weight_shape[4:]:  # as to_channels_last stores it (a module's .to(memory_format=...))
        weight = nn.Conv2d(6, 4, 1, bias=False).to(memory_format=torch.channels_last).weight
        weight = weight.detach()
        assert weight.is_contiguous()  # a 1x1 kernel: both layouts count as contiguous
        assert F.conv2d(x, weight).is_contiguous(memory_format=torch.channels_last)
    assert not pointwise_applies(x, weight, stride, padding, groups)
    out = conv2d_forward(x, weight, None, stride, padding, (1, 1), groups)
    assert torch.equal(out, F.conv2d(x, weight, None, stride, padding, 1, groups))
    conv2d_backward(torch.randn_like(out), x, weight, None, stride, padding, (1, 1), groups,
                    (True, True, False))


def test_conv_benchmark_compares_both_routes():
    from mmlrf.analysis.conv_bench import SDTV3_19M_CONVS, compare_conv
    row = compare_conv((2, 6, 12, 10), None, 3, 2, repeats=1)
    assert row['shape'] == [2, 6, 12, 10] and row['weight'] == [6, 1, 3, 3]
    assert row['dilation'] == 2
    for name in ('forward', 'backward'):
        assert row[f'{name}_torch_ms'] > 0 and row[f'{name}_mmlrf_ms'] > 0
        assert row[f'{name}_ratio'] == row[f'{name}_mmlrf_ms'] / row[f'{name}_torch_ms']
    assert row['max_rel_diff'] < 1e-5
    row = compare_conv((1, 4, 8, 8), 5, 1, 1, batch=3, repeats=1)
    assert row['shape'][0] == 3 and row['weight'] == [5, 4, 1, 1] and row['max_rel_diff'] < 1e-5
    # the listed shapes are the 19M model's: V = 4 x 360 channels, SepConv hidden = 2 x C,
    # 150 ADE20K classes from the 128-channel head
    assert {s[1][1] for s in SDTV3_19M_CONVS if s[2] is None} == {1440, 128, 256}
    assert (150, 128) in {(s[2], s[1][1]) for s in SDTV3_19M_CONVS}
    with pytest.raises(ValueError, match='1x1'):
        compare_conv((1, 4, 8, 8), 5, 3, 1)


def test_conv_benchmark_tool(tmp_path, monkeypatch, capsys):
    import json

    from mmlrf.analysis import conv_bench
    from tool_loading import load_tool
    tool = load_tool('analysis/bench_conv')
    monkeypatch.setattr(tool, 'SDTV3_19M_CONVS', conv_bench.SDTV3_19M_CONVS[:1])
    out = tmp_path / 'conv.json'
    rows = tool.main(['--batch', '1', '--repeats', '1', '--out', str(out)])
    assert len(rows) == 1 and json.loads(out.read_text())['rows'][0]['label'] == rows[0]['label']
    for argv, message in ((['--repeats', '0'], 'must be positive'),
                          (['--device', 'tpu'], 'an available CUDA device')):
        with pytest.raises(SystemExit):
            tool.main(argv)
        assert message in capsys.readouterr().err
