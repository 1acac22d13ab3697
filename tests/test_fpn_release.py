"""Lean inference of the spiking FPN neck and head: inputs released once read
(``release_inputs``), spikes of temporaries in place, the head's levels summed over channel
chunks; the same outputs and gradients as the plain computation."""
import copy
import json
import os
import subprocess
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
import torch.nn.functional as F

from mmlrf.analysis.memory import CPU_MEASURE_ENV, MIB, peak_memory_mib
from mmlrf.backbones.sdt_v3 import ConvBlock
from mmlrf.heads import SpikingFPN, SpikingFPNHead
from mmlrf.heads.spiking_fpn_neck import add_nearest_resized, nearest_resize, spike_map
from mmlrf.hooks import set_lean_inference
from mmlrf.neurons import MultiSpike, MultiStepLIF, spike_temporary
from batchnorm_stats import randomise_batchnorms

# The tests' maps are small: strips on them too (the default runs them whole).
pytestmark = pytest.mark.usefixtures('strips_on_small_maps')

IN_CHANNELS = [4, 8, 12, 16]
WIDTH = 8


def build(release: bool, width: int = WIDTH, in_channels=IN_CHANNELS,
          neuron: dict = dict(type='MultiSpike', max_value=4, norm=4)):
    """Neck and head with the same seeded weights whatever ``release``."""
    torch.manual_seed(0)
    neck = SpikingFPN(in_channels, width, neuron=neuron, release_inputs=release)
    head = SpikingFPNHead(in_channels=[width] * 4, channels=width, num_classes=3,
                          in_index=[0, 1, 2, 3], neuron=neuron, release_inputs=release)
    return randomise_batchnorms(neck).eval(), randomise_batchnorms(head).eval()


def features(size: tuple[int, int], in_channels=IN_CHANNELS, batch: int = 2) -> list:
    """Backbone-like maps at strides 1, 2, 4, 8 of ``size``, ``[B, C_i, H_i, W_i]``."""
    gen = torch.Generator().manual_seed(1)
    h, w = size
    return [torch.randn(batch, c, -(-h // 2 ** i), -(-w // 2 ** i), generator=gen) * 2
            for i, c in enumerate(in_channels)]


def plain_head(head: SpikingFPNHead, levels) -> torch.Tensor:
    """The head written out without chunks or in-place work: each level's stages in order,
    a bilinear resize to level 0's size where it differs, the sum, spikes, classifier."""
    out = None
    for level, stages in zip(levels, head.scale_heads):
        y = level
        for layer in stages:
            y = layer(y)
        if out is not None and y.shape[-2:] != out.shape[-2:]:
            y = F.interpolate(y, size=out.shape[-2:], mode='bilinear',
                              align_corners=head.align_corners)
        out = y if out is None else out + y
    return head.conv_seg(spike_map(head.out_spike, out))


@pytest.mark.parametrize('size', [(32, 48), (25, 35)], ids=['multiple', 'odd'])
def test_released_inference_equals_the_plain_computation(size):
    feats = features(size)
    neck, head = build(release=False)
    lean_neck, lean_head = build(release=True)
    with torch.no_grad():
        expected = plain_head(head, neck([f.clone() for f in feats]))
        given = [f.clone() for f in feats]
        mid = lean_neck(given)
        got = lean_head(mid)
    assert torch.equal(got, expected)
    # the caller's maps come back empty: their memory is free (no base tensor of a view holds it)
    assert all(t.numel() == 0 and t.untyped_storage().nbytes() == 0 and
               (t._base is None or t._base.untyped_storage().nbytes() == 0)
               for t in [*given, *mid])


@pytest.mark.parametrize('small, large', [((5, 7), (10, 14)), ((5, 7), (9, 13))],
                         ids=['x2', 'odd'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_add_nearest_resized_is_the_plain_sum(small, large, channels_last):
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 3, *large, generator=gen)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, *small, generator=gen)
    expected = out + nearest_resize(x, large)
    add_nearest_resized(out, x)
    assert torch.equal(out, expected)


def test_release_is_off_while_autograd_records_and_by_default():
    feats = features((32, 48))
    for neck, head, grad in [(*build(release=True), True), (*build(release=False), False)]:
        given = [f.clone() for f in feats]
        with torch.set_grad_enabled(grad):
            mid = neck(given)
            head(mid)
        assert all(torch.equal(a, b) for a, b in zip(given, feats))
        assert all(t.numel() > 0 for t in mid)


@pytest.mark.parametrize('release', [False, True])
def test_released_lateral_bn_overwrites_the_conv_output(release):
    """With release, each lateral BN writes over its conv's output, and so, in turn, do the
    spikes and the output conv: the neck's outputs lie in the lateral convs' outputs. Without
    release, the BN makes a map of its own (the plain computation)."""
    neck, _ = build(release)
    conv_outs = []  # kept alive, so that no later map can take over their memory
    for pair in neck.lateral_convs:
        pair[0].register_forward_hook(lambda m, args, out: conv_outs.append(out))
    with torch.no_grad():
        outs = neck(features((32, 48)))
    same = [out.data_ptr() == conv_out.data_ptr() for out, conv_out in zip(outs, conv_outs)]
    assert same == [release] * 4


def test_release_under_inference_mode_and_of_inference_tensors():
    """Inside ``torch.inference_mode`` the maps are released as under ``no_grad``. Maps made
    in inference mode but passed in outside it cannot be changed (PyTorch refuses): they are
    read without in-place spikes and left as they are."""
    feats = features((32, 48))
    neck, head = build(release=True)
    with torch.no_grad():
        expected = head(neck([f.clone() for f in feats]))
    with torch.inference_mode():
        given = [f.clone() for f in feats]
        assert torch.equal(head(neck(given)), expected)
        assert all(t.numel() == 0 for t in given)
        frozen = [f.clone() for f in feats]
    with torch.no_grad():
        assert torch.equal(head(neck(frozen)), expected)
    assert all(torch.equal(a, b) for a, b in zip(frozen, feats))


def test_released_map_viewed_elsewhere_keeps_its_memory():
    """``release`` drops only the module's reference: a view held by the caller stays valid."""
    feats = features((32, 48))
    view = feats[0][:1]
    before = view.clone()
    neck, _ = build(release=True)
    with torch.no_grad():
        neck(feats)
    assert feats[0].numel() == 0
    # the view shares the released map's memory, which the neck spiked in place
    assert torch.equal(view, MultiSpike(4, 4)(before))


@pytest.mark.parametrize('size', [(32, 48), (25, 35)], ids=['multiple', 'odd'])
def test_head_chunked_sum_has_the_plain_gradients(size):
    _, head = build(release=False)
    head.train()
    levels = [torch.randn(2, WIDTH, -(-size[0] // 2 ** i), -(-size[1] // 2 ** i),
                          requires_grad=True) for i in range(4)]
    ref_levels = [t.detach().clone().requires_grad_() for t in levels]
    ref_head = copy.deepcopy(head)
    y, y_ref = head(levels), plain_head(ref_head, ref_levels)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for a, b in zip(levels, ref_levels):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(head.named_parameters(), ref_head.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_lif_neurons_in_neck_and_head():
    """Neurons without an in-place mode (LIF) take the allocating path, released or not."""
    lif = dict(type='MultiStepLIF')
    feats = features((16, 24))
    outs = []
    for release in (False, True):
        neck, head = build(release, neuron=lif)
        with torch.no_grad():
            outs.append(head(neck([f.clone() for f in feats])))
    assert torch.equal(*outs)
    x = torch.randn(1, 2, 3, 4, 4)
    with torch.no_grad():
        assert spike_temporary(MultiStepLIF(), x).data_ptr() != x.data_ptr()
        assert spike_temporary(MultiSpike(), x).data_ptr() == x.data_ptr()


def test_energy_report_does_not_see_the_strips():
    """The energy meter counts per hooked call: under it each conv sees its whole map, and
    lean inference reports what the plain computation does."""
    from mmlrf.analysis.energy import measure_energy
    feats = features((25, 35))
    reports = []
    for release in (False, True):
        model = torch.nn.ModuleList(build(release))
        reports.append(measure_energy(model, [feats[0]], forward=lambda m, _: m[1](m[0](
            [f.clone() for f in feats]))))
    assert reports[0]['totals']['sops'] > 0 and reports[1] == reports[0]


def test_release_needs_distinct_levels():
    with pytest.raises(ValueError, match='distinct in_index'):
        SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 1, 2],
                       feature_strides=(2, 4, 4, 8), release_inputs=True)
    head = SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 1, 2],
                          feature_strides=(2, 4, 4, 8))
    with pytest.raises(ValueError, match='distinct in_index'):  # also when switched on later
        set_lean_inference(head, True)
    assert not head.release_inputs


def test_set_lean_inference_switches_every_lean_module():
    neck, head = build(release=True)
    model = torch.nn.ModuleList([ConvBlock(4, 2, dict(type='MultiSpike'), strips=True), neck,
                                 head])
    feats = features((32, 48))
    with torch.no_grad():
        expected = head(neck([f.clone() for f in feats]))
        assert set_lean_inference(model, False) == 3
        assert not (model[0].strips or neck.release_inputs or head.release_inputs)
        given = [f.clone() for f in feats]
        mid = neck(given)
        assert torch.equal(head(mid), expected)
    # off: the maps passed in are read, not emptied or overwritten
    assert all(torch.equal(g, f) for g, f in zip(given, feats)) and all(t.numel() for t in mid)
    assert set_lean_inference(model, True) == 3 and model[0].strips and head.release_inputs


# 256×256 stride-1 level: the stride-1 neck and head maps take 8 MiB each (32 channels)
MEMORY_SIZE, MEMORY_WIDTH, MEMORY_CHANNELS = (256, 256), 32, [16, 32, 64, 64]


def measure_peaks() -> dict[str, float]:
    """Peak memory (MiB) of neck + head inference on one image, released or not."""
    peaks = {}
    for release in (False, True):
        neck, head = build(release, MEMORY_WIDTH, MEMORY_CHANNELS)
        with torch.no_grad():  # warm-up (thread pools, conv primitives)
            head(neck(features(MEMORY_SIZE, MEMORY_CHANNELS, batch=1)))

        def run(neck=neck, head=head):
            with torch.no_grad():
                return head(neck(features(MEMORY_SIZE, MEMORY_CHANNELS, batch=1)))
        peaks[str(release)] = peak_memory_mib(run, torch.device('cpu'))
    return peaks


def test_release_lowers_the_inference_peak_by_a_map():
    """Without release the stride-1 neck output is alive while the head's first conv reads a
    second copy of it (its spikes) and writes its output; with release the spikes overwrite
    it. Measured in a process started with CPU_MEASURE_ENV (the CPU method needs it)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **CPU_MEASURE_ENV})
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = json.loads(proc.stdout.splitlines()[-1])
    map_mib = MEMORY_WIDTH * MEMORY_SIZE[0] * MEMORY_SIZE[1] * 4 / MIB
    assert peaks['False'] - peaks['True'] >= 0.75 * map_mib, peaks


if __name__ == '__main__':  # the CPU measurement of test_release_lowers_the_inference_peak_by_a_map
    print(json.dumps(measure_peaks()))
