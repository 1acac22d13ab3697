"""Lean inference of the spiking FPN neck and head (``lean_inference``): the maps they are given
emptied once read, spikes of temporaries in place, BNs and convs written over their inputs, the
head's levels summed over channel chunks; the plain outputs, a lower peak; switched for a whole
model with ``set_lean_inference``."""
import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch

from mmlrf.inference import lean_applies, set_lean_inference
from mmlrf.inference.lean_fpn import add_nearest_resized, release, spike_in_place
from mmlrf.models.backbones.sdt_v3 import ConvBlock
from mmlrf.models.necks.spiking_fpn import nearest_resize
from mmlrf.models.neurons import MultiSpike, MultiStepLIF

from fpn_reference import build, features, plain_head, plain_neck
from peak_memory import MIB, measure_in_subprocess, peak_rss_mib

# The tests' maps are small: strips on them too (the default runs them whole).
pytestmark = pytest.mark.usefixtures('strips_on_small_maps')


@pytest.mark.parametrize('size', [(32, 48), (25, 35)], ids=['multiple', 'odd'])
def test_lean_inference_equals_the_plain_computation(size):
    feats = features(size)
    neck, head = build(lean=False)
    lean_neck, lean_head = build(lean=True)
    with torch.no_grad():
        expected = plain_head(head, plain_neck(neck, [f.clone() for f in feats]))
        assert torch.equal(head(neck([f.clone() for f in feats])), expected)
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


def test_lean_path_is_off_while_autograd_records_and_by_default():
    feats = features((32, 48))
    for neck, head, grad in [(*build(lean=True), True), (*build(lean=False), False)]:
        assert lean_applies(neck) == (neck.lean_inference and not grad)
        given = [f.clone() for f in feats]
        with torch.set_grad_enabled(grad):
            assert not lean_applies(neck)
            mid = neck(given)
            head(mid)
        assert all(torch.equal(a, b) for a, b in zip(given, feats))
        assert all(t.numel() > 0 for t in mid)


def test_lean_path_is_off_under_torch_compile(monkeypatch):
    neck, _ = build(lean=True)
    with torch.no_grad():
        assert lean_applies(neck)
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
        assert not lean_applies(neck)


@pytest.mark.parametrize('lean', [False, True])
def test_lean_lateral_bn_overwrites_the_conv_output(lean):
    """Lean, each lateral BN writes over its conv's output, and so, in turn, do the spikes and
    the output conv: the neck's outputs lie in the lateral convs' outputs. Otherwise the BN
    makes a map of its own (the plain computation)."""
    neck, _ = build(lean)
    conv_outs = []  # kept alive, so that no later map can take over their memory
    for pair in neck.lateral_convs:
        pair[0].register_forward_hook(lambda m, args, out: conv_outs.append(out))
    with torch.no_grad():
        outs = neck(features((32, 48)))
    same = [out.data_ptr() == conv_out.data_ptr() for out, conv_out in zip(outs, conv_outs)]
    assert same == [lean] * 4


def test_lean_under_inference_mode_and_of_inference_tensors():
    """Inside ``torch.inference_mode`` the maps are released as under ``no_grad``. Maps made
    in inference mode but passed in outside it cannot be changed (PyTorch refuses): they are
    read without in-place spikes and left as they are."""
    feats = features((32, 48))
    neck, head = build(lean=True)
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
    """The lean neck drops only its own reference: a view held by the caller stays valid."""
    feats = features((32, 48))
    view = feats[0][:1]
    before = view.clone()
    neck, _ = build(lean=True)
    with torch.no_grad():
        neck(feats)
    assert feats[0].numel() == 0
    # the view shares the released map's memory, which the neck spiked in place
    assert torch.equal(view, MultiSpike(4, 4)(before))


def test_release_and_spike_in_place():
    x = torch.randn(2, 3, 4, 4)
    release(x)
    assert x.numel() == 0 and x.untyped_storage().nbytes() == 0
    with torch.inference_mode():
        frozen = torch.ones(3)
    release(frozen)  # cannot be changed outside inference mode: left as it is
    assert torch.equal(frozen, torch.ones(3))
    y = torch.randn(2, 3, 4, 4) * 3
    before = y.clone()
    with torch.no_grad():
        out = spike_in_place(MultiSpike(), y)
        assert out.data_ptr() == y.data_ptr()
        assert torch.equal(out, torch.round(torch.clamp(before, 0, 4)) / 4)
        lif = spike_in_place(MultiStepLIF(), before)  # no in-place mode: a new map
    assert lif.data_ptr() != before.data_ptr() and lif.shape == before.shape


def test_lif_neurons_in_neck_and_head():
    """Neurons without an in-place mode (LIF) take the allocating path, lean or not."""
    lif = dict(type='MultiStepLIF')
    feats = features((16, 24))
    outs = []
    for lean in (False, True):
        neck, head = build(lean, neuron=lif)
        with torch.no_grad():
            outs.append(head(neck([f.clone() for f in feats])))
    assert torch.equal(*outs)


def test_set_lean_inference_switches_every_lean_module():
    neck, head = build(lean=True)
    model = torch.nn.ModuleList([ConvBlock(4, 2, dict(type='MultiSpike')), neck, head])
    feats = features((32, 48))
    with torch.no_grad():
        expected = head(neck([f.clone() for f in feats]))
        assert set_lean_inference(model, False) == 3
        assert not (model[0].lean_inference or neck.lean_inference or head.lean_inference)
        given = [f.clone() for f in feats]
        mid = neck(given)
        assert torch.equal(head(mid), expected)
    # off: the maps passed in are read, not emptied or overwritten
    assert all(torch.equal(g, f) for g, f in zip(given, feats)) and all(t.numel() for t in mid)
    assert set_lean_inference(model, True) == 3
    assert model[0].lean_inference and neck.lean_inference and head.lean_inference
    assert set_lean_inference(torch.nn.Linear(2, 2), True) == 0


# 256×256 stride-1 level: the stride-1 neck and head maps take 8 MiB each (32 channels)
MEMORY_SIZE, MEMORY_WIDTH, MEMORY_CHANNELS = (256, 256), 32, [16, 32, 64, 64]


def measure_peaks() -> dict[str, float]:
    """Peak memory (MiB) of neck + head inference on one image, lean or not."""
    peaks = {}
    for lean in (False, True):
        neck, head = build(lean, MEMORY_WIDTH, MEMORY_CHANNELS)
        with torch.no_grad():  # warm-up (thread pools, conv primitives)
            head(neck(features(MEMORY_SIZE, MEMORY_CHANNELS, batch=1)))

        def run(neck=neck, head=head):
            with torch.no_grad():
                return head(neck(features(MEMORY_SIZE, MEMORY_CHANNELS, batch=1)))
        peaks[str(lean)] = peak_rss_mib(run)
    return peaks


def test_lean_inference_lowers_the_peak_by_a_map():
    """Plain, the stride-1 neck output is alive while the head's first conv reads a second copy
    of it (its spikes) and writes its output; lean, the spikes overwrite it. Measured in a fresh
    process (the CPU measurement needs its allocator settings)."""
    peaks = measure_in_subprocess(__file__)
    map_mib = MEMORY_WIDTH * MEMORY_SIZE[0] * MEMORY_SIZE[1] * 4 / MIB
    assert peaks['False'] - peaks['True'] >= 0.75 * map_mib, peaks


if __name__ == '__main__':  # the CPU measurement of test_lean_inference_lowers_the_peak_by_a_map
    import json
    print(json.dumps(measure_peaks()))
