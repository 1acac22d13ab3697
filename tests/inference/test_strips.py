"""Inference over row strips (``mmlrf.inference.strips``): the whole-map values, a conv + BN
written over its own input, a BN over its input, a row-local map added into a sum in place,
lower peaks; the plain computation wherever strips would be wrong. On CUDA (skipped without it),
a conv of the flagship neck's shape in strips against the whole conv."""
import pytest
import torch
from torch import nn

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
from mmlrf.inference.strips import (MIN_STRIP_BYTES, STRIPS, add_over_strips,
                                    batch_norm_in_place, conv_bn_over_input, keeps_shape,
                                    memory_of, row_strips, strips_allowed)
from mmlrf.models.backbones.sdt_v3 import ConvBlock
from mmlrf.models.layers import RoutedConv2d

from batchnorm_stats import randomise_batchnorms
from devices import needs_cuda
from peak_memory import MIB, measure_in_subprocess, peak_rss_mib


# The tests' maps are small: strips on them too (the default runs them whole).
pytestmark = pytest.mark.usefixtures('strips_on_small_maps')


def conv_and_bn(channels: int, kernel: int = 3, dilation: int = 1, groups: int = 1,
                folded: bool = False, cls: type = RoutedConv2d, **conv_args):
    """A seeded conv (``cls``) and an eval-mode BN with non-trivial statistics (or
    ``Identity``)."""
    torch.manual_seed(0)
    args = dict(padding=dilation * (kernel // 2), dilation=dilation, groups=groups, bias=True)
    conv = cls(channels, channels, kernel, **{**args, **conv_args})
    if folded:
        return conv, nn.Identity()
    return conv, randomise_batchnorms(nn.BatchNorm2d(channels)).eval()


def spikes(shape, channels_last: bool = False) -> torch.Tensor:
    """Multi-spike-like values ``k / 4``, ``k`` in 0..4."""
    x = torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(1)).float() / 4
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize('height, strips', [(25, 8), (24, 3), (3, 8), (1, 8), (7, 7)])
def test_row_strips_tile_a_stack_of_convs(height, strips):
    """Two 'same' convs (reach 1 + 2) and a ReLU: the strips tile the rows, their values are
    the whole map's."""
    torch.manual_seed(0)
    first, second = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 2, 3, padding=2, dilation=2)

    def fn(t):
        return second(torch.relu(first(t)))
    x = torch.randn(2, 3, height, 6)
    with torch.no_grad():
        parts = list(row_strips(fn, x, 3, strips))
        expected = fn(x)
    assert [p[0] for p in parts] == sorted({p[0] for p in parts})
    assert parts[0][0] == 0 and parts[-1][1] == height
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert all(p[2].shape[-2] == p[1] - p[0] for p in parts)
    assert torch.equal(torch.cat([p[2] for p in parts], -2), expected)


@pytest.mark.parametrize('height, strips', [(25, 8), (24, 3), (3, 8), (1, 8), (17, 1)])
@pytest.mark.parametrize('kernel, dilation, groups', [(3, 1, 1), (3, 2, 1), (5, 1, 1),
                                                      (3, 1, 6)])
@pytest.mark.parametrize('folded, channels_last', [(False, False), (True, False),
                                                   (False, True)])
def test_strips_equal_the_whole_map_in_the_inputs_memory(height, strips, kernel, dilation,
                                                         groups, folded, channels_last):
    conv, bn = conv_and_bn(6, kernel, dilation, groups, folded)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
    x = spikes((2, 6, height, 11), channels_last)
    with torch.no_grad():
        expected = bn(conv(x))
        given = x.clone(memory_format=torch.preserve_format)
        got = conv_bn_over_input(conv, bn, given, strips)
    # written over the input, and returned as a tensor of its own (not a view)
    assert got.data_ptr() == given.data_ptr() and got._base is None
    assert torch.equal(got, expected)


@pytest.mark.parametrize('kernel, dilation, groups', [(3, 1, 1), (3, 2, 6)])
def test_strips_of_a_plain_conv2d(kernel, dilation, groups):
    """The default ``nn.Conv2d`` (no CPU routes) in strips: the whole map's values too."""
    conv, bn = conv_and_bn(6, kernel, dilation, groups, cls=nn.Conv2d)
    x = spikes((2, 6, 19, 11))
    with torch.no_grad():
        expected = bn(conv(x))
        given = x.clone()
        got = conv_bn_over_input(conv, bn, given, 4)
    assert got.data_ptr() == given.data_ptr() and torch.equal(got, expected)


#: Where neither strips nor overwriting apply (for conv + BN, also the conv cases below);
#: 'small': the default MIN_STRIP_BYTES, which the tests' maps are under.
NOT_IN_PLACE = ['autograd', 'bn_training', 'inference_tensor', 'compiling', 'small']


@pytest.mark.parametrize('case, bn_only', [
    *[(case, False) for case in [*NOT_IN_PLACE, 'stride', 'channels', 'valid']],
    *[(case, True) for case in NOT_IN_PLACE]])
def test_falls_back_where_overwriting_is_wrong(case, bn_only, monkeypatch):
    """``conv_bn_over_input`` (or, ``bn_only``, ``batch_norm_in_place``) computes a new map."""
    if case == 'small':
        monkeypatch.setattr('mmlrf.inference.strips.MIN_STRIP_BYTES', MIN_STRIP_BYTES)
    conv_args = dict(stride=dict(stride=2), valid=dict(padding=0)).get(case, {})
    conv, bn = conv_and_bn(6, **conv_args)
    if case == 'channels':
        conv, bn = RoutedConv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4).eval()
    if case == 'bn_training':
        bn.train()
    with torch.inference_mode(case == 'inference_tensor'):
        x = spikes((2, 6, 12, 11))
    before = x.clone()
    if case == 'compiling':  # Dynamo traces the plain computation
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    with torch.set_grad_enabled(case == 'autograd'):
        if bn_only:
            expected, got = bn(x.clone()), batch_norm_in_place(bn, x)
        else:
            expected, got = bn(conv(x)), conv_bn_over_input(conv, bn, x)
    assert got is not x and torch.equal(x, before)  # the input is left as it was
    assert torch.equal(got, expected)
    assert keeps_shape(conv) == (case not in ('stride', 'valid'))


@pytest.mark.parametrize('height, strips', [(25, 8), (24, 3), (1, 8), (17, 1)])
@pytest.mark.parametrize('channels', [1, 3, 16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_batch_norm_in_place_equals_the_whole_map(height, strips, channels, channels_last):
    """Bit for bit: each strip goes to the BN contiguous (a strided slice takes another
    kernel, which rounds differently)."""
    bn = randomise_batchnorms(nn.BatchNorm2d(channels)).eval()
    y = torch.randn(2, channels, height, 11, generator=torch.Generator().manual_seed(2)) * 3
    y = y.contiguous(memory_format=torch.channels_last) if channels_last else y
    with torch.no_grad():
        expected = bn(y)
        given = y.clone(memory_format=torch.preserve_format)
        got = batch_norm_in_place(bn, given, strips)
    assert got is given and torch.equal(got, expected)


@pytest.mark.parametrize('bn_only', [False, True])
def test_maps_of_min_strip_bytes_and_more_run_in_strips(bn_only, monkeypatch):
    """A map of exactly ``MIN_STRIP_BYTES`` is written over; a byte more and it runs whole."""
    conv, bn = conv_and_bn(6)
    x = spikes((2, 6, 12, 11))
    run = (lambda t: batch_norm_in_place(bn, t)) if bn_only else \
        (lambda t: conv_bn_over_input(conv, bn, t))
    with torch.no_grad():
        for threshold, in_place in [(x.nbytes, True), (x.nbytes + 1, False)]:
            monkeypatch.setattr('mmlrf.inference.strips.MIN_STRIP_BYTES', threshold)
            given = x.clone()
            assert (run(given).data_ptr() == given.data_ptr()) == in_place, threshold


def test_the_threshold_counts_the_widest_conv_output(monkeypatch):
    """A conv block's strips keep its hidden map (4x its channels) from existing whole: they run
    when that map reaches ``MIN_STRIP_BYTES``, however small the block's input."""
    x = spikes((1, 1, 4, 8, 8))
    widen, narrow = nn.Conv2d(4, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)
    with torch.no_grad():
        monkeypatch.setattr('mmlrf.inference.strips.MIN_STRIP_BYTES', 4 * x.nbytes)
        assert strips_allowed(x, (widen, narrow), ())
        assert not strips_allowed(x, (nn.Conv2d(4, 4, 3, padding=1),), ())
        assert not strips_allowed(x, (), ())
        monkeypatch.setattr('mmlrf.inference.strips.MIN_STRIP_BYTES', 4 * x.nbytes + 1)
        assert not strips_allowed(x, (widen, narrow), ())


def test_batch_norm_in_place_of_a_folded_bn_and_bad_strips():
    y = spikes((1, 4, 8, 8))
    with torch.no_grad():
        assert batch_norm_in_place(nn.Identity(), y) is y
        with pytest.raises(ValueError, match='strips'):
            batch_norm_in_place(nn.BatchNorm2d(4).eval(), y, strips=0)


def test_bad_strips_are_refused():
    conv, bn = conv_and_bn(6)
    x = spikes((1, 6, 8, 8))
    with torch.no_grad():
        for strips in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match='strips'):
                conv_bn_over_input(conv, bn, x, strips=strips)
        with pytest.raises(ValueError, match='strips'):
            list(row_strips(lambda t: t, x, 1, strips=0))
        assert conv_bn_over_input(conv, bn, x).data_ptr() == x.data_ptr()  # the default
    assert STRIPS >= 1


@pytest.mark.parametrize('height, halo', [(13, 2), (5, 3), (1, 1)])
def test_add_over_strips_is_the_plain_sum_in_place(height, halo):
    """``x += fn(spikes)`` strip by strip, for a row-local ``fn`` of reach ``halo``: the plain
    sum, in ``x``'s memory."""
    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 2 * halo - 1, padding=halo - 1))
    x, s = torch.randn(2, 4, height, 7), spikes((2, 4, height, 7))
    with torch.no_grad():
        expected = x + convs(s)
        out = add_over_strips(x, convs, s, halo)
    assert out is x and torch.equal(out, expected)


def test_memory_of_is_not_a_view():
    base = torch.randn(4, 6)
    view = base[1:3]
    alias = memory_of(view)
    assert alias._base is None and alias.data_ptr() == view.data_ptr()
    assert alias.shape == view.shape and alias.stride() == view.stride()
    assert torch.equal(alias, view)


def test_keeps_shape_refuses_string_and_reflect_padding():
    assert not keeps_shape(nn.Conv2d(4, 4, 3, padding='same'))
    assert not keeps_shape(nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect'))
    assert not keeps_shape(nn.Conv2d(4, 4, 4, padding=2))  # even kernel: no centred halo
    assert keeps_shape(nn.Conv2d(4, 4, (3, 5), padding=(1, 2)))


# a 32-channel 256×256 map: 8 MiB
MEMORY_SHAPE = (1, 32, 256, 256)


def measure_peaks() -> dict[str, float]:
    """Peak memory (MiB) of conv + BN and of BN alone on a map that the call may overwrite,
    and of an SDT-V3 conv block (8 channels, hidden 32) on a map of the same size, whole or in
    strips (the inputs are allocated before the measurement)."""
    conv, bn = conv_and_bn(MEMORY_SHAPE[1])
    blocks = [randomise_batchnorms(ConvBlock(8, 4, dict(type='MultiSpike'))).eval()
              for _ in range(2)]
    blocks[1].lean_inference = True
    block_shape = (1, 1, 8, *MEMORY_SHAPE[-2:])
    peaks = {}
    for name, run, shape in [
            ('whole', lambda x: bn(conv(x)), MEMORY_SHAPE),
            ('strips', lambda x: conv_bn_over_input(conv, bn, x), MEMORY_SHAPE),
            ('bn_whole', bn, MEMORY_SHAPE),
            ('bn_strips', lambda x: batch_norm_in_place(bn, x), MEMORY_SHAPE),
            ('block_whole', blocks[0], block_shape), ('block_strips', blocks[1], block_shape)]:
        x = spikes(shape)
        with torch.no_grad():
            run(x.clone())  # warm-up (thread pools, conv primitives)
            peaks[name] = peak_rss_mib(lambda: run(x))
    return peaks


def test_strips_lower_the_peak_by_most_of_a_map():
    """The whole-map conv holds its output (and oneDNN's copy of it) beside the input, the
    strips two strips; the whole conv block holds its 32-channel hidden map, the strips a
    strip of it; the whole-map BN holds a map, in place a strip and its copy (at least half a
    map less). Measured in a fresh process (the CPU measurement needs its allocator settings)."""
    peaks = measure_in_subprocess(__file__)
    map_mib = torch.Size(MEMORY_SHAPE).numel() * 4 / MIB
    assert peaks['whole'] - peaks['strips'] >= 0.75 * map_mib, peaks
    assert peaks['block_whole'] - peaks['block_strips'] >= 0.75 * map_mib, peaks
    assert peaks['bn_whole'] - peaks['bn_strips'] >= 0.5 * map_mib, peaks


if __name__ == '__main__':  # the CPU measurement of test_strips_lower_the_peak_by_most_of_a_map
    import json
    print(json.dumps(measure_peaks()))


@needs_cuda
@pytest.mark.usefixtures('cuda_precision')
@pytest.mark.parametrize('tf32', [False, True], ids=['fp32', 'tf32'])
def test_conv_strips_on_cuda_at_the_flagship_necks_shape(tf32):
    """The neck's and head's largest conv at 1×1024×2048 (3×3, 128 → 128 channels, 512×1024,
    BN after it) written over its input in 8 strips, against the whole conv. Spikes ``k / 4``
    and the weights round to TF32 alike in both, so only the accumulation may differ; cuDNN
    picks its algorithm per shape, so a strip may round differently from the whole map."""
    torch.manual_seed(0)
    conv = RoutedConv2d(128, 128, 3, padding=1).cuda()
    bn = randomise_batchnorms(nn.BatchNorm2d(128)).cuda().eval()
    x = torch.randint(0, 5, (1, 128, 512, 1024), device='cuda').float() / 4
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    with torch.no_grad():
        expected = bn(conv(x))
        got = conv_bn_over_input(conv, bn, x, 8)
    assert got.data_ptr() == x.data_ptr()  # the strips ran, over the input
    tolerance = 1e-3 if tf32 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
