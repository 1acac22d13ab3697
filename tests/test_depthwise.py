"""Depth-wise convolutions with the CPU backward made of forward convolutions
(mmlrf/depthwise.py): gradients equal autograd's for every geometry the route accepts, the route
is taken exactly where it applies, and DepthwiseConv2d is a drop-in nn.Conv2d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlrf import depthwise
from mmlrf.depthwise import DepthwiseConv2d, conv2d_backward, depthwise_backward_applies

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
    monkeypatch.setattr(depthwise, '_depthwise_grads',
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


def test_depthwise_conv2d_is_a_drop_in_conv2d(monkeypatch):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, 3, padding=3, dilation=3)
    plain = nn.Conv2d(6, 6, 3, padding=3, dilation=3, groups=6, bias=False)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 6, 10, 10, requires_grad=True)
    xp = x.detach().clone().requires_grad_()
    route = []
    real = depthwise._depthwise_grads
    monkeypatch.setattr(depthwise, '_depthwise_grads', lambda *a: route.append(1) or real(*a))
    out, ref = conv(x), plain(xp)
    assert torch.equal(out, ref)  # the same forward kernel
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert route == [1]
    torch.testing.assert_close(x.grad, xp.grad)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad)
    with torch.no_grad():
        assert torch.equal(conv(x), plain(x))
    assert route == [1]  # no graph, no custom function


def test_convbn_builds_depthwise_only_for_stride1_depthwise():
    from mmlrf.layers import ConvBN
    assert isinstance(ConvBN(8, 8, 7, groups=8)[0], DepthwiseConv2d)
    assert type(ConvBN(8, 8, 3, stride=2, groups=8)[0]) is nn.Conv2d
    assert type(ConvBN(8, 16, 3)[0]) is nn.Conv2d


def test_depthwise_benchmark_compares_both_routes():
    from mmlrf.analysis.depthwise_bench import SDTV3_19M_DEPTHWISE, compare_depthwise_backward
    row = compare_depthwise_backward((2, 6, 12, 10), 3, 2, repeats=1)
    assert row['shape'] == [2, 6, 12, 10] and row['kernel'] == 3 and row['dilation'] == 2
    assert row['autograd_ms'] > 0 and row['mmlrf_ms'] > 0 and row['forward_ms'] > 0
    assert row['ratio'] == row['mmlrf_ms'] / row['autograd_ms']
    assert row['max_rel_diff'] < 1e-5
    assert compare_depthwise_backward((1, 4, 8, 8), 7, 1, batch=3, repeats=1)['shape'][0] == 3
    # the listed shapes are the 19M model's: V = 4 x 360 channels, SepConv hidden = 2 x C
    assert {s[1][1] for s in SDTV3_19M_DEPTHWISE} == {1440, 128, 256}
