"""Firing rates, SOPs / MACs and energy (mmlrf.analysis.energy) and its command line."""
import json
import os

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from torch import nn

from mmlrf.analysis import energy
from mmlrf.inference import set_lean_inference
from mmlrf.models.backbones import SpikingAttention
from mmlrf.models.neurons import MultiSpike
from mmlrf.ops.dendritic import DendriticDynamics
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')


def test_conv_counts_by_hand():
    """image → Conv(3→4, 3×3, pad 1) → MultiSpike → Conv(4→6, 1×1) → MultiSpike(norm 2) →
    Conv(6→2, 3×3, stride 2, pad 1): MACs of the first conv, SOPs = rate × FLOPs after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MultiSpike(4), nn.Conv2d(4, 6, 1),
                          MultiSpike(4, norm=2), nn.Conv2d(6, 2, 3, stride=2, padding=1))
    x = torch.randn(2, 3, 8, 8) * 3
    report = energy.measure_energy(model, [x], e_mac=4.6, e_ac=0.9)
    with torch.no_grad():
        c1 = torch.round(torch.clamp(model[0](x), 0, 4))               # integer counts
        c2 = torch.round(torch.clamp(model[2](c1 / 4), 0, 4))
    macs0 = 2 * 4 * 8 * 8 * 3 * 9 / 2          # output elements × Cin·k², per image (2 images)
    sops1 = c1.double().mean().item() * 2 * 6 * 8 * 8 * 4 / 2
    sops2 = c2.double().mean().item() * 2 * 2 * 4 * 4 * 6 * 9 / 2
    rows = {r['name']: r for r in report['layers']}
    assert rows['0']['input'] == 'real' and rows['0']['macs'] == macs0 and rows['0']['sops'] == 0
    assert rows['2']['input'] == 'spike' and rows['2']['macs'] == 0
    assert rows['2']['sops'] == pytest.approx(sops1, rel=1e-12)
    assert rows['4']['sops'] == pytest.approx(sops2, rel=1e-12)
    assert rows['2']['input_rate'] == pytest.approx(c1.double().mean().item(), rel=1e-12)
    # exact events: a 1×1 conv meets every weight once per spike: sum(counts) × Cout / images
    assert rows['2']['sops_exact'] == pytest.approx(c1.sum().item() * 6 / 2, rel=1e-12)
    # the strided, padded 3×3 conv: each output position gathers its window, × Cout
    pad = nn.functional.pad(c2, (1, 1, 1, 1))
    events = sum(pad[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum().item()
                 for i in range(4) for j in range(4)) * 2
    assert rows['4']['sops_exact'] == pytest.approx(events / 2, rel=1e-12)
    assert report['totals']['energy_mj'] == pytest.approx(
        (4.6 * macs0 + 0.9 * (sops1 + sops2)) * 1e-9)
    neurons = {r['name']: r for r in report['neurons']}
    assert neurons['3']['firing_rate'] == pytest.approx(c2.double().mean().item())
    assert 'TOTAL per image (2 images)' in energy.format_table(report)


@pytest.mark.parametrize('order', ['qk', 'kv'])
def test_attention_products_count_operand_spikes(order):
    """(Q Kᵀ) V: rate(Q)·heads·N²·d + rate(V)·heads·N²·dv; Q (Kᵀ V): (rate(K) + rate(Q))·
    heads·N·d·dv, per image (T = B = 1, heads 2, C 8, V 16 channels, N = 12)."""
    torch.manual_seed(0)
    blk = SpikingAttention(8, 2, mixer=dict(type='SSA', order=order), v_ratio=2).eval()
    x = torch.randn(1, 1, 8, 3, 4) * 2
    report = energy.measure_energy(blk, [x])
    with torch.no_grad():
        u = blk.head_spike(x)
        q, k, v = (getattr(blk, f'{n}_spike')(getattr(blk, f'{n}_conv')(u)).double().mean() * 4
                   for n in 'qkv')
    n, heads, d, dv = 12, 2, 4, 8
    expect = (q * heads * n * n * d + v * heads * n * n * dv if order == 'qk'
              else (k + q) * heads * n * d * dv)
    row = {r['name']: r for r in report['layers']}['mixer.product']
    assert row['input'] == 'spike' and row['macs'] == 0
    assert row['sops'] == pytest.approx(expect.item(), rel=1e-12)


@pytest.mark.parametrize('parameterization, parts, macs', [('modal', 1, 2), ('pmsn', 2, 6)])
def test_dendritic_operator_counts(parameterization, parts, macs):
    """Spikes into k dendrites (SOPs; the real and imaginary input weights of complex modes)
    and the state's update and readout (MACs: 2 per dendrite for a real state, 6 for a complex
    one: a complex product and the real part of another)."""
    torch.manual_seed(0)
    model = nn.Sequential(MultiSpike(4), DendriticDynamics(
        3, num_dendrites=5, parameterization=parameterization)).eval()
    x = torch.randn(2, 3, 4, 4) * 3
    report = energy.measure_energy(model, [x])
    rate = torch.round(torch.clamp(x, 0, 4)).double().mean().item()
    row = {r['name']: r for r in report['layers']}['1']
    numel = 2 * 3 * 4 * 4
    assert row['sops'] == pytest.approx(rate * numel * 5 * parts / 2, rel=1e-12)
    assert row['sops_exact'] == pytest.approx(row['sops'], rel=1e-12)
    assert row['macs'] == macs * numel * 5 / 2
    assert row['flops'] == (parts + macs) * numel * 5 / 2


def test_lrf_dyn_gates_count_as_synaptic_operations():
    """LRF-Dyn's k ⊙ v and query readout: rate(K)·numel(V) and rate(Q)·numel(V) SOPs."""
    torch.manual_seed(1)
    blk = SpikingAttention(8, 2, mixer=dict(type='LRFDyn', num_dendrites=3), v_ratio=2).eval()
    x = torch.randn(1, 1, 8, 3, 4) * 2
    report = energy.measure_energy(blk, [x])
    with torch.no_grad():
        u = blk.head_spike(x)
        q, k = (getattr(blk, f'{n}_spike')(getattr(blk, f'{n}_conv')(u)).double().mean() * 4
                for n in 'qk')
    rows = {r['name']: r for r in report['layers']}
    numel_v = 16 * 12
    assert rows['mixer.key_gate']['sops'] == pytest.approx(k.item() * numel_v, rel=1e-12)
    assert rows['mixer.query_gate']['sops'] == pytest.approx(q.item() * numel_v, rel=1e-12)


def test_lean_inference_is_off_while_measuring(strips_on_small_maps):
    """Row strips (on the toy's small maps too) would split a layer's call: the meter switches
    lean inference off, so the counts are those of the plain model, and restores each module's
    own setting afterwards."""
    from mmlrf.analysis.loading import build_model
    model, _ = build_model(TOY, cfg_options={'model.backbone.depths': (1, 1)})
    x = torch.randn(1, 3, 64, 64)
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x.clone(), mode='tensor')
        lean_calls = len(calls)
        set_lean_inference(model, False)
        model(x.clone(), mode='tensor')
    for handle in handles:
        handle.remove()
    assert lean_calls > len(calls) - lean_calls  # strips split calls: the test can tell
    set_lean_inference(model, True)
    flagged = [m for m in model.modules() if hasattr(m, 'lean_inference')]
    flagged[0].lean_inference = False
    report = energy.measure_energy(model, [x.clone()], forward=lambda m, t: m(t, mode='tensor'))
    assert [m.lean_inference for m in flagged] == [False] + [True] * (len(flagged) - 1)
    set_lean_inference(model, False)
    plain = energy.measure_energy(model, [x.clone()], forward=lambda m, t: m(t, mode='tensor'))
    assert report == plain and report['totals']['sops'] > 0


def test_energy_cli_on_the_toy_config(tmp_path, capsys):
    """Without a checkpoint the same --seed gives the same report, another seed another; the
    data set is generated under --data-root."""
    tool = load_tool('analysis/energy')
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(['--help'])
    assert exit_.value.code == 0 and '--e-mac' in capsys.readouterr().out

    def run(seed, name):
        out = str(tmp_path / name)
        tool.main([TOY, '--size', '32', '32', '--data-root', str(tmp_path / 'toy'), '--seed',
                   str(seed), '--num-images', '2', '--device', 'cpu', '--out', out,
                   '--cfg-options', 'model.backbone.depths=(1,1)'])
        with open(out + '.png', 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
        with open(out + '.json') as f:
            report = json.load(f)
        assert report['seed'] == seed and report['images'] == 2
        assert report['images_source'] == 'dataset:ToyTextureDataset'
        return {k: v for k, v in report.items() if k != 'seed'}
    first = run(0, 'a')
    assert first['totals']['sops'] > 0 and first['totals']['macs'] > 0
    assert run(0, 'b') == first
    assert run(1, 'c') != first
