"""``RoutedConv2d`` (mmlrf/models/layers/routed_conv.py): CPU routes (1×1 convs as matrix
products, the depth-wise backward as forward convolutions) whose outputs and gradients equal
F.conv2d's / autograd's for every geometry a route accepts, taken exactly where they apply; a
drop-in ``nn.Conv2d`` that saves a multi-spike input as its 1-byte code, with exact outputs and
gradients; the default conv (``nn.Conv2d``) takes no route."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from torch import nn

import mmlrf  # noqa: F401  (registers RoutedConv2d)
from mmlrf.models.layers import routed_conv as conv_routes
from mmlrf.models.layers.routed_conv import (RoutedConv2d, conv2d_backward, conv2d_forward,
                                             depthwise_backward_applies, pointwise_applies)
from mmlrf.models.neurons import MultiSpike

from saved_bytes import SavedBytes

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


ROUTES = ('_pointwise_forward', '_pointwise_grads', '_depthwise_grads')


def _sepconv(conv_cfg):
    """SDT-V3's separable conv (1×1, 7×7 depth-wise, 1×1 convs with BN and neurons between),
    seeded, with the given conv layer."""
    from mmlrf.models.backbones.sdt_v3 import SepConv
    torch.manual_seed(0)
    return SepConv(6, 7, dict(type='MultiSpike'), conv_cfg=conv_cfg)


def test_default_conv_takes_no_route_and_routed_conv_the_same_values(monkeypatch):
    """Without ``conv_cfg`` every conv is a plain ``nn.Conv2d`` and no CPU route runs; with
    ``conv_cfg=dict(type='RoutedConv2d')`` the same weights take the routes (1×1 matrix
    products, the depth-wise backward) with the plain outputs and gradients."""
    plain, routed = _sepconv(None), _sepconv(dict(type='RoutedConv2d'))
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(type(m) is nn.Conv2d for m in convs)
    assert all(type(m) is RoutedConv2d for m in routed.modules() if isinstance(m, nn.Conv2d))
    routed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 2, 6, 9, 9) * 3
    taken = []
    for name in ROUTES:
        real = getattr(conv_routes, name)
        monkeypatch.setattr(conv_routes, name,
                            lambda *a, name=name, real=real: taken.append(name) or real(*a))
    outs, grads = [], []
    for model in (plain, routed):
        given = x.clone().requires_grad_()
        outs.append(model(given))
        outs[-1].square().sum().backward()
        grads.append([given.grad] + [p.grad for p in model.parameters()])
        if model is plain:
            assert taken == []
    assert set(taken) == set(ROUTES)
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_routed_conv2d_is_registered_for_conv_cfg():
    """``build_conv_layer`` (any registry scope: mmengine's root registry) builds it from
    ``dict(type='RoutedConv2d')`` with every argument of ``nn.Conv2d``."""
    conv = build_conv_layer(dict(type='RoutedConv2d'), 4, 8, 3, stride=2, padding=2,
                            dilation=2, groups=2, bias=False)
    assert type(conv) is RoutedConv2d
    assert (conv.stride, conv.padding, conv.dilation, conv.groups) == ((2, 2), (2, 2), (2, 2), 2)
    assert conv.bias is None and conv.weight.shape == (8, 2, 3, 3)
    assert type(build_conv_layer(None, 4, 8, 3)) is nn.Conv2d


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


# ---------------------------------------------------------------------- spike codes for backward
def reference_spikes(x, d=4, norm=4.0):
    """The original neuron: ``round(clamp(x, 0, D)) / norm``, the straight-through gradient from
    a saved float mask (autograd's own ops)."""
    inside = ((x >= 0) & (x <= d)).to(x.dtype)
    level = torch.round(torch.clamp(x, 0, d))
    return (level.detach() + (x - x.detach()) * inside) / norm


# the CPU routes on both sides (compared with autograd's above)
@pytest.mark.parametrize('conv', [
    RoutedConv2d(6, 8, 3, padding=1),
    RoutedConv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False),
    RoutedConv2d(6, 4, 1),
    RoutedConv2d(6, 5, 3, stride=2, padding=1)], ids=['3x3', 'dw-dilated', '1x1', 'stride2'])
def test_spike_conv_equals_conv_of_spikes(conv):
    """A multi-spike input is saved as its 1-byte code; outputs and gradients are exact."""
    torch.manual_seed(0)
    x = (torch.randn(1, 2, 6, 9, 9) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    conv_ref = copy.deepcopy(conv)
    with SavedBytes(conv.parameters()) as saved:
        y = conv(MultiSpike()(x).flatten(0, 1))
    spikes_ref = reference_spikes(x_ref).flatten(0, 1)
    with SavedBytes(conv_ref.parameters()) as saved_ref:
        y_ref = conv_ref(spikes_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, x_ref.grad)
    for p, p_ref in zip(conv.parameters(), conv_ref.parameters()):
        assert torch.equal(p.grad, p_ref.grad)
    n = x.numel()
    assert saved_ref.bytes == 4 * n  # the conv keeps its float input
    assert saved.bytes == n          # the neuron's uint8 code, shared


def test_spike_conv_trains_under_torch_compile():
    """Under ``torch.compile`` the neuron → conv pair traces whole (no walk of autograd's graph;
    the partitioner chooses what backward keeps) with the eager output and gradients."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv, neuron = RoutedConv2d(6, 6, 3, padding=2, dilation=2, groups=6), MultiSpike()
    x = torch.randn(2, 6, 9, 9) * 3

    def run(fn):
        xg = x.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        y = fn(xg)
        y.backward(torch.ones_like(y))
        return [y.detach(), xg.grad, conv.weight.grad, conv.bias.grad]
    expect = run(lambda t: conv(neuron(t)))
    got = run(torch.compile(lambda t: conv(neuron(t)), backend='aot_eager', fullgraph=True))
    assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1])
    for a, b in zip(got[2:], expect[2:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('share_code', [True, False])
def test_spike_code_shared_by_many_convs_hooks_or_not(share_code):
    """Every conv reading the spikes saves the neuron's code, hooked or not (the hooks run);
    a neuron built with ``share_code=False`` makes them save the float spikes instead."""
    convs = [RoutedConv2d(4, 4, k, padding=k // 2) for k in (1, 3, 3)]
    x = torch.randn(1, 1, 4, 5, 5, requires_grad=True) * 3
    calls = []
    handles = [convs[0].register_forward_hook(lambda m, a, o: calls.append(a[0])),
               convs[1].register_forward_pre_hook(lambda m, a: calls.append(a[0]))]
    with SavedBytes([p for c in convs for p in c.parameters()]) as saved:
        s = MultiSpike(share_code=share_code)(x).flatten(0, 1)
        outs = [c(s) for c in convs]
    for handle in handles:
        handle.remove()
    assert len(calls) == 2 and all(torch.equal(c, s) for c in calls)
    # the code (1 B) of the neuron; without sharing also the float spikes (4 B, one storage)
    assert saved.bytes == x.numel() * (1 if share_code else 5)
    assert all(torch.equal(o, c(s.detach())) for o, c in zip(outs, convs))


def test_spike_conv_ignores_modified_spikes():
    conv = RoutedConv2d(3, 3, 1)
    x = torch.randn(1, 1, 3, 4, 4, requires_grad=True)
    s = MultiSpike()(x) * 2  # not a neuron output any more
    with SavedBytes(conv.parameters()) as saved:
        y = conv(s.flatten(0, 1))
    assert saved.bytes == 4 * s.numel() and torch.equal(y, conv(s.detach().flatten(0, 1)))


def test_plain_conv_saves_the_float_spikes():
    """The default ``nn.Conv2d`` keeps its float input for backward, also after a neuron."""
    conv = nn.Conv2d(3, 3, 1)
    x = torch.randn(1, 1, 3, 4, 4, requires_grad=True) * 3
    with SavedBytes(conv.parameters()) as saved:
        conv(MultiSpike()(x).flatten(0, 1))
    assert saved.bytes == 5 * x.numel()  # the neuron's code and the conv's float input
