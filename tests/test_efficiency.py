"""Memory-saving paths (issue 5): 1-byte spike codes for backward, spike-aware convs, in-place
inference, activation checkpointing and the streaming flag. Every path must give the numbers of
the plain path exactly (forward and gradients); saved-tensor bytes are checked against sizes
computed from the shapes."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.analysis.benchmark import format_row, preset_cases, run_case, smoke_cases
from mmlrf.analysis.saved_tensors import SavedTensorMeter
from mmlrf.attention import LRFBranch, LRFDyn
from mmlrf.backbones import SDTV3
from mmlrf.conv import RoutedConv2d
from mmlrf.heads import SpikingFPN, SpikingFPNHead
from mmlrf.neurons import MultiSpike
from mmlrf.neurons.multispike import spike_code_sharing

TINY = dict(embed_dims=[8, 16, 32, 32], num_heads=4)


class _ReferenceSTE(torch.autograd.Function):
    """The original neuron: saves the float input, gradient ``grad * [0 <= x <= D]``."""

    @staticmethod
    def forward(ctx, x, d):
        ctx.save_for_backward(x)
        ctx.d = d
        return torch.round(torch.clamp(x, 0, d))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= ctx.d)).to(grad.dtype), None


def reference_spikes(x, d=4, norm=4.0):
    return _ReferenceSTE.apply(x, float(d)) / norm


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]


# --------------------------------------------------------------------------------- the neuron
@pytest.mark.parametrize('d, norm', [(4, 4.0), (4, 1.0), (2, 3.0)])
def test_multispike_equals_reference_and_saves_one_byte(d, norm):
    x = (torch.randn(1, 2, 3, 5, 7) * 3).requires_grad_()
    x.data[0, 0, 0, 0, :4] = torch.tensor([0.5, 2.5, -0.0, float(d)])  # ties, edges
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn_like(x)
    with SavedTensorMeter() as meter:
        y = MultiSpike(d, norm)(x)
    y_ref = reference_spikes(x_ref, d, norm)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    assert meter.bytes == x.numel() and set(meter.by_dtype) == {torch.uint8}


def test_spikes_and_code_edges():
    """Level in bits 0-6 and the STE bit exactly where 0 <= x <= D, at ties, bounds, signed
    zeros, infinities and NaN (never inside; its spike stays NaN)."""
    from mmlrf.neurons.multispike import INSIDE_BIT, spikes_and_code
    x = torch.tensor([-1.0, -0.0, 0.0, 0.5, 1.5, 2.5, 3.0, 3.5, 4.0, 4.0001, 7.0,
                      float('inf'), float('-inf'), float('nan')])
    spikes, code = spikes_and_code(x, 3, 2.0)
    finite = ~torch.isnan(x)
    level = torch.round(torch.clamp(x[finite], 0, 3))
    assert torch.equal(spikes[finite], level / 2.0) and torch.isnan(spikes[-1])
    assert torch.equal((code[finite] & (INSIDE_BIT - 1)).float(), level)
    inside = (x >= 0) & (x <= 3)
    assert torch.equal(code >= INSIDE_BIT, inside) and inside.tolist()[1:4] == [True] * 3
    assert code.dtype == torch.uint8 and spikes.dtype == x.dtype


def test_multispike_inplace_only_without_autograd():
    x = torch.randn(1, 2, 3, 4, 4) * 3
    ref = torch.round(torch.clamp(x, 0, 4)) / 4
    y = x.clone()
    with torch.no_grad():
        out = MultiSpike()(y, inplace=True)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, ref)
    z = x.clone().requires_grad_()
    out = MultiSpike()(z, inplace=True)  # recorded by autograd: the input is kept
    assert out.data_ptr() != z.data_ptr() and torch.equal(z, x)
    with torch.inference_mode():
        frozen = x.clone()
    with torch.no_grad():  # an inference tensor outside inference mode cannot be changed
        out = MultiSpike()(frozen, inplace=True)
    assert out.data_ptr() != frozen.data_ptr() and torch.equal(out, ref)
    assert torch.equal(frozen, x)


# -------------------------------------------------------------------------- spike-aware convs
# the CPU routes on both sides (tests/test_conv.py compares them with autograd's)
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
    with SavedTensorMeter(conv.parameters()) as meter:
        y = conv(MultiSpike()(x).flatten(0, 1))
    with SavedTensorMeter(conv_ref.parameters()) as meter_ref:
        y_ref = conv_ref(reference_spikes(x_ref).flatten(0, 1))
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, x_ref.grad)
    for p, p_ref in zip(conv.parameters(), conv_ref.parameters()):
        assert torch.equal(p.grad, p_ref.grad)
    n = x.numel()
    assert meter_ref.bytes == 4 * n + 4 * n  # float neuron input + float conv input
    assert meter.bytes == n                  # one shared uint8 code


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


def test_recompute_for_backward_saves_spike_codes_not_floats(monkeypatch):
    """Compiled (AOTAutograd's partitioner), the neuron → conv pair saves its float32 spikes for
    the conv's backward; partitioned in :func:`recompute_for_backward` it saves the 1-byte codes
    instead, with the same output and gradients; ``compile_segmentor`` uses it for the CPU
    training forward."""
    import torch._dynamo

    import mmlrf.hooks.compile as compile_module
    from mmlrf.hooks import compile_segmentor, recompute_for_backward
    torch.manual_seed(0)
    conv, neuron = RoutedConv2d(6, 6, 3, padding=1), MultiSpike()
    x = torch.randn(2, 6, 9, 9) * 3

    def run(fn):
        saved = []

        def pack(t):
            saved.append(t.dtype if t.shape == x.shape else None)
            return t
        xg = x.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn(xg)
        y.backward(torch.ones_like(y))
        return saved, [y.detach(), xg.grad, conv.weight.grad]

    def compiled():
        torch._dynamo.reset()
        return torch.compile(lambda t: conv(neuron(t)), backend='aot_eager', fullgraph=True)
    saved_default, default = run(compiled())
    saved, got = run(recompute_for_backward(compiled()))
    assert torch.float32 in saved_default and torch.uint8 not in saved_default, saved_default
    assert torch.uint8 in saved and torch.float32 not in saved, saved
    for a, b in zip(got, default):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.delattr(torch._functorch.config, 'ban_recompute_materialized_backward')
    assert recompute_for_backward(len) is len  # a torch without the setting

    class Segmentor(nn.Linear):
        def encode_decode(self, x):
            return self(x)

        def loss(self, x):
            return self(x).sum()
    wrapped = []
    monkeypatch.setattr(compile_module, 'recompute_for_backward',
                        lambda fn: wrapped.append(fn) or fn)
    model = compile_segmentor(Segmentor(2, 2), train=True)
    assert wrapped == [model.loss]  # the training forward only
    compile_segmentor(Segmentor(2, 2).to('meta'), train=True)
    assert len(wrapped) == 1  # on the CPU only


def test_multispike_under_torch_compile_decodes_its_code():
    """Under ``torch.compile`` the neuron's spikes are decoded from its code: the eager values
    (halves round to even, clamping) and gradients; a NaN input gives 0 there (documented)."""
    import torch._dynamo
    torch._dynamo.reset()
    neuron = MultiSpike(max_value=4, norm=3)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.5, 2.5, 3.49, 4.0, 4.5, 9.0, 0.3])

    def run(fn, t):
        t = t.clone().requires_grad_()
        y = fn(t)
        y.backward(torch.arange(1.0, 1.0 + len(t)))
        return y.detach(), t.grad
    compiled = torch.compile(neuron, backend='aot_eager', fullgraph=True)
    for got, expect in zip(run(compiled, x), run(neuron, x)):
        assert torch.equal(got, expect)
    nan = torch.tensor([float('nan'), 2.0])
    assert torch.isnan(neuron(nan.clone().requires_grad_())[0])
    assert torch.equal(compiled(nan.clone().requires_grad_()), torch.tensor([0.0, 2.0]) / 3)


@pytest.mark.parametrize('sharing', [True, False])
def test_spike_code_shared_by_many_convs_hooks_or_not(sharing):
    """Every conv reading the spikes saves the neuron's code, hooked or not (the hooks run);
    ``spike_code_sharing(False)`` makes them save the float spikes instead."""
    convs = [RoutedConv2d(4, 4, k, padding=k // 2) for k in (1, 3, 3)]
    x = torch.randn(1, 1, 4, 5, 5, requires_grad=True) * 3
    calls = []
    handles = [convs[0].register_forward_hook(lambda m, a, o: calls.append(a[0])),
               convs[1].register_forward_pre_hook(lambda m, a: calls.append(a[0]))]
    with SavedTensorMeter([p for c in convs for p in c.parameters()]) as meter, \
            spike_code_sharing(sharing):
        s = MultiSpike()(x).flatten(0, 1)
        outs = [c(s) for c in convs]
    for handle in handles:
        handle.remove()
    assert len(calls) == 2 and all(torch.equal(c, s) for c in calls)
    # the code (1 B) of the neuron; without sharing also the float spikes (4 B, one storage)
    assert meter.bytes == x.numel() * (1 if sharing else 5)
    assert all(torch.equal(o, c(s.detach())) for o, c in zip(outs, convs))


def test_spike_conv_ignores_modified_spikes():
    conv = RoutedConv2d(3, 3, 1)
    x = torch.randn(1, 1, 3, 4, 4, requires_grad=True)
    s = MultiSpike()(x) * 2  # not a neuron output any more
    with SavedTensorMeter(conv.parameters()) as meter:
        y = conv(s.flatten(0, 1))
    assert meter.bytes == 4 * s.numel() and torch.equal(y, conv(s.detach().flatten(0, 1)))


# ------------------------------------------------------------------------ whole tiny networks
def _tiny_segmentor_parts(attn=dict(type='SSA', order='qk'), **backbone_kwargs):
    torch.manual_seed(0)
    backbone = SDTV3(**TINY, attn=attn, **backbone_kwargs)
    neck = SpikingFPN(backbone.out_channels, 16)
    head = SpikingFPNHead(in_channels=[16] * 4, channels=16, num_classes=3,
                          in_index=[0, 1, 2, 3])
    return nn.ModuleList([backbone, neck, head])


def _run(parts, x):
    return parts[2](parts[1](parts[0](x)))


def test_fused_network_equals_unfused_forward_and_gradients():
    parts = _tiny_segmentor_parts()
    ref = copy.deepcopy(parts)
    x = torch.randn(2, 3, 40, 56, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = _run(parts, x)
    with spike_code_sharing(False):  # every conv saves its float input (the reference path)
        y_ref = _run(ref, x_ref)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    assert torch.equal(y, y_ref)
    for a, b in zip(_grads(parts, x), _grads(ref, x_ref)):
        assert torch.equal(a, b)


def test_backbone_saved_bytes_drop_by_the_conv_inputs():
    """Fused minus plain (no code sharing) saved bytes = 4 bytes × every distinct neuron output
    a conv reads (the neurons save their 1-byte code either way), found with hooks."""
    backbone = SDTV3(**TINY).train()
    x = torch.randn(1, 3, 48, 48)
    params = list(backbone.parameters())
    with SavedTensorMeter(params) as fused:
        backbone(x)
    neuron_outs, conv_inputs = set(), {}

    def on_neuron(m, a, out):
        neuron_outs.add(out.untyped_storage().data_ptr())

    def on_conv(m, a):
        conv_inputs[a[0].untyped_storage().data_ptr()] = a[0].numel()
    handles = [m.register_forward_hook(on_neuron) for m in backbone.modules()
               if isinstance(m, MultiSpike)]
    handles += [m.register_forward_pre_hook(on_conv) for m in backbone.modules()
                if isinstance(m, nn.Conv2d)]
    with SavedTensorMeter(params) as plain, spike_code_sharing(False):
        backbone(x)
    for h in handles:
        h.remove()
    spike_elements = sum(n for ptr, n in conv_inputs.items() if ptr in neuron_outs)
    assert spike_elements > 0
    assert plain.bytes - fused.bytes == 4 * spike_elements
    # every neuron keeps 1 byte per element, in both paths
    assert fused.by_dtype[torch.uint8] == plain.by_dtype[torch.uint8] > 0


def test_inplace_inference_equals_recorded_forward():
    parts = _tiny_segmentor_parts(attn=dict(type='LRFDyn', mode='scan')).eval()
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        y = _run(parts, x)
    y_rec = _run(parts, x.clone().requires_grad_())  # autograd on: no in-place path
    assert torch.equal(y, y_rec)


def test_lrf_branch_sum_equals_separate_branches():
    lrf = LRFBranch(4, (1, 2, 3)).eval()
    x = torch.randn(1, 2, 4, 6, 6)
    expected = sum(b(x.flatten(0, 1)) for b in lrf.branches).reshape(x.shape)
    with torch.no_grad():
        assert torch.allclose(lrf(x), expected, atol=1e-6)


def test_with_cp_same_gradients():
    torch.manual_seed(0)
    plain = SDTV3(**TINY, attn=dict(type='LRFDyn', mode='scan'), layer_scale_init=1.0).train()
    ckpt = SDTV3(**TINY, attn=dict(type='LRFDyn', mode='scan'), layer_scale_init=1.0,
                 with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 24, 24)
    outs, grads = [], []
    for model in (plain, ckpt):
        model.zero_grad()
        y = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in y).backward()
        outs.append(y)
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    # and it saves less: only block inputs are kept
    with SavedTensorMeter(plain.parameters()) as m_plain:
        plain(x)
    with SavedTensorMeter(ckpt.parameters()) as m_ckpt:
        ckpt(x)
    assert m_ckpt.bytes < m_plain.bytes / 2


def test_code_sharing_switch_restores():
    with spike_code_sharing(False):
        x = torch.randn(1, 1, 2, 3, 3, requires_grad=True)
        assert MultiSpike()(x).grad_fn.code is None
    assert MultiSpike()(x).grad_fn.code is not None


@pytest.mark.parametrize('mode', ['stream', 'recurrent', 'scan'])
def test_dynamics_mode_flag_equal_outputs(mode):
    torch.manual_seed(0)
    ref = SDTV3(**TINY, attn=dict(type='LRFDyn', mode='fft', bidirectional=True,
                                  order='snake'), layer_scale_init=1.0).eval()
    model = SDTV3(**TINY, attn=dict(type='LRFDyn', bidirectional=True, order='snake'),
                  layer_scale_init=1.0, dynamics_mode=mode).eval()
    model.load_state_dict(ref.state_dict())
    assert {m.mode for m in model.modules() if hasattr(m, 'resolved_mode')} == {mode}
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_lrf_dyn_default_mode_is_auto():
    mixer = LRFDyn(num_heads=2, qk_channels=8, v_channels=8)
    assert mixer.dynamics.mode == 'auto'
    assert mixer.dynamics.resolved_mode(torch.zeros(1, 8, 2, 2)) == 'scan'


@pytest.mark.parametrize('kwargs, match', [
    (dict(dynamics_mode='parallel'), 'dynamics_mode must be None or one of'),
    (dict(dynamics_mode='stream'), 'needs an attention with dendritic dynamics'),
])
def test_invalid_backbone_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDTV3(**TINY, **kwargs)


def test_issue5_preset_has_dynamics_operator_rows():
    cases, highlights = preset_cases('issue5', 'cpu')
    dyn = [c for c in cases if c['kind'] == 'dynamics']
    assert {c['variant'] for c in dyn} >= {'dynamics:scan', 'dynamics:stream', 'dynamics:fft'}
    assert all(c['channels'] == 1440 and c['hw'] == [64, 128] and c['batch'] == 8
               for c in dyn)
    small = smoke_cases([c for c in dyn if c['variant'] == 'dynamics:scan'])
    (row,) = [run_case(c, 'cpu', warmup=0, repeats=1) for c in small]
    assert 'error' not in row and row['output_mib'] == 2 * 32 * 512 * 4 / 2 ** 20
    assert row['extra_over_output'] == (row['peak_mib'] - row['output_mib']) / row['output_mib']
    assert 'extra/output' in format_row(row)
    # CPU only: the inference memory option for CPU deployment, with its own highlight
    last = [c for c in cases if c.get('channels_last')]
    assert {c['variant'] for c in last} == {'official', 'lrf_dyn'}
    assert all(c['fuse_conv_bn'] and c['mode'] == 'infer' for c in last)
    assert sum('channels-last' in h['label'] for h in highlights) == 1
    gpu_cases, gpu_highlights = preset_cases('issue5', 'cuda')
    assert not any(c.get('channels_last') for c in gpu_cases)
    assert not any('channels-last' in h['label'] for h in gpu_highlights)


@pytest.mark.parametrize('preset,device', [('issue4', 'cpu'), ('issue5', 'cpu'),
                                           ('issue5', 'cuda')])
def test_preset_highlights_resolve_in_full_and_smoke_runs(preset, device):
    """Each highlight names one of its preset's cases, and finds that case's ratio row both at
    full size and after the smoke shrink (which changes every group)."""
    from mmlrf.analysis.benchmark import compute_ratios, find_ratio
    cases, highlights = preset_cases(preset, device)
    assert highlights and all(any(h['case'] is c for c in cases) for h in highlights)
    for shrink in (lambda cs: cs, smoke_cases):
        runs = shrink(cases)
        results = [dict(c, peak_mib=float(i + 1), time_ms=float(i + 2))
                   for i, c in enumerate(runs)]
        ratios = compute_ratios(results)
        for h in highlights:
            case = shrink([h['case']])[0]
            row = find_ratio(ratios, case)
            assert row is not None, h['label']
            # the measured row of exactly that case (the case plus its two numbers)
            (num,) = [r for r in results
                      if r == dict(case, peak_mib=r['peak_mib'], time_ms=r['time_ms'])]
            assert row['peak_mib'] == num['peak_mib'] and row['time_ms'] == num['time_ms']
    with pytest.raises(ValueError, match='no case'):
        from mmlrf.analysis.benchmark import pick_case
        pick_case(cases, 'lrf_dyn', kind='nope')
