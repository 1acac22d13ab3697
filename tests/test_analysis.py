"""Tests of the measurement tools (mmlrf.analysis): energy counting, benchmark, locality."""
import json
import os

import mmlrf  # noqa: F401
import pytest
import torch
from torch import nn

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis import energy
from mmlrf.analysis.memory import PIPELINED_MAX_MS, cuda_memory_cap, pipelined_ms
from mmlrf.neurons import MultiSpike
from devices import needs_cuda
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, bm.TOY_CONFIG)

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def assert_png(path):
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10


# ------------------------------------------------------------------------------------ energy
def test_energy_hand_count():
    """image → Conv(3→4, 3×3, pad 1) → MultiSpike → Conv(4→6, 1×1) → MultiSpike → Conv(6→2,
    3×3, stride 2, pad 1): MACs of the first conv, SOPs = rate × FLOPs for the other two."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MultiSpike(4), nn.Conv2d(4, 6, 1),
                          MultiSpike(4, norm=2), nn.Conv2d(6, 2, 3, stride=2, padding=1))
    x = torch.randn(2, 3, 8, 8) * 3
    report = energy.measure_energy(model, [x], e_mac=4.6, e_ac=0.9)
    # hand computation, per image (2 images)
    with torch.no_grad():
        a = model[0](x)
        c1 = torch.round(torch.clamp(a, 0, 4))                  # integer counts
        b = model[2](c1 / 4)
        c2 = torch.round(torch.clamp(b, 0, 4))
    macs0 = 2 * 4 * 8 * 8 * 3 * 9 / 2                          # out elements × Cin·k² / images
    flops1 = 2 * 6 * 8 * 8 * 4 * 1 / 2
    flops2 = 2 * 2 * 4 * 4 * 6 * 9 / 2
    sops1 = c1.double().mean().item() * flops1
    sops2 = c2.double().mean().item() * flops2
    rows = {r['name']: r for r in report['layers']}
    assert rows['0']['input'] == 'real' and rows['0']['macs'] == macs0 and rows['0']['sops'] == 0
    assert rows['2']['input'] == 'spike' and rows['2']['macs'] == 0
    assert rows['2']['sops'] == pytest.approx(sops1, rel=1e-12)
    assert rows['4']['sops'] == pytest.approx(sops2, rel=1e-12)
    assert rows['2']['input_rate'] == pytest.approx(c1.double().mean().item(), rel=1e-12)
    # exact events: a 1×1 conv meets every weight once per spike: sum(counts) × Cout / images
    assert rows['2']['sops_exact'] == pytest.approx(c1.sum().item() * 6 / 2, rel=1e-12)
    # naive loop for the strided, padded 3×3 conv: each output position gathers its window
    pad = torch.nn.functional.pad(c2, (1, 1, 1, 1))
    events = sum(pad[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum().item()
                 for i in range(4) for j in range(4)) * 2
    assert rows['4']['sops_exact'] == pytest.approx(events / 2, rel=1e-12)
    tot = report['totals']
    assert tot['energy_mj'] == pytest.approx((4.6 * macs0 + 0.9 * (sops1 + sops2)) * 1e-9)
    neurons = {r['name']: r for r in report['neurons']}
    assert neurons['3']['firing_rate'] == pytest.approx(c2.double().mean().item())


def test_energy_ssa_product_counts_operand_spikes():
    from mmlrf.attention import SpikingAttention
    torch.manual_seed(0)
    blk = SpikingAttention(8, 2, mixer=dict(type='SSA', order='qk'), v_ratio=2).eval()
    x = torch.randn(1, 1, 8, 3, 4) * 2
    report = energy.measure_energy(blk, [x], forward=lambda m, t: m(t))
    with torch.no_grad():
        u = blk.head_spike(x)
        q = blk.q_spike(blk.q_conv(u)) * 4
        v = blk.v_spike(blk.v_conv(u)) * 4
    n, heads = 12, 2
    expect = (q.double().mean() * heads * n * n * 4 + v.double().mean() * heads * n * n * 8)
    row = {r['name']: r for r in report['layers']}['mixer.product']
    assert row['sops'] == pytest.approx(expect.item(), rel=1e-12)


def test_energy_plot_and_fields(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), MultiSpike(), nn.Conv2d(4, 2, 1))
    report = energy.measure_energy(model, [torch.randn(1, 3, 6, 6)])
    energy.plot_energy(report, str(tmp_path / 'e.png'))
    assert_png(tmp_path / 'e.png')
    assert {'images', 'e_mac_pj', 'e_ac_pj', 'layers', 'neurons', 'totals'} <= set(report)
    assert {'flops', 'sops', 'sops_exact', 'macs', 'energy_mj'} <= set(report['totals'])


# --------------------------------------------------------------------------------- benchmark
def test_benchmark_operator_report(tmp_path):
    cases = bm.operator_cases(['official', 'ssa_kv'], [1024], channels=16, heads=2, v_ratio=2,
                              modes=['infer', 'train'])
    # in-process (isolate=False) to keep the test fast; the subprocess path is tested below
    report = bm.run_benchmark(cases, 'cpu', str(tmp_path / 'b'), 'test', warmup=1, repeats=1,
                              isolate=False, log=lambda s: None)
    assert_png(tmp_path / 'b.png')
    data = json.loads((tmp_path / 'b.json').read_text())
    assert {'meta', 'results', 'ratios', 'highlights'} <= set(data)
    assert {'date', 'torch', 'device', 'command', 'memory_method'} <= set(data['meta'])
    res = data['results']
    assert all('error' not in r for r in res), res
    for r in res:
        assert {'peak_mib', 'time_ms', 'images_per_s', 'weights_mib', 'inputs_mib'} <= set(r)
    # ratios are the quotients of this run's numbers
    for q in data['ratios']:
        num = [r for r in res if (r['variant'] if r['kind'] != 'floor' else 'floor')
               == q['variant'] and bm.group_key(r) == q['group']][0]
        ref = [r for r in res if r['variant'] == 'official' and bm.group_key(r) == q['group']][0]
        # in-process CPU peaks of tiny cases can read 0 MiB (RSS noise): then no ratio
        expect = num['peak_mib'] / ref['peak_mib'] if ref['peak_mib'] > 0 else None
        assert q['peak_ratio'] == expect
        assert q['time_ratio'] == num['time_ms'] / ref['time_ms']
    assert {q['variant'] for q in data['ratios']} == {'ssa_kv', 'floor'}
    assert report['ratios'] == data['ratios']


def test_benchmark_cpu_peak_reflects_tensors():
    """The subprocess RSS method sees a 64 MiB output of the 'floor' case (clone of V)."""
    h, w = bm.grid_hw(4096)
    case = dict(kind='floor', variant='floor', mode='infer', dtype='float32', n_tokens=4096,
                hw=[h, w], channels=1024, heads=8, v_ratio=4, batch=1, T=1)
    (res,) = bm.run_cases([case], 'cpu', warmup=1, repeats=1, log=lambda s: None)
    assert res['output_mib'] == 64.0
    assert 60 <= res['peak_mib'] <= 72
    assert res['time_ms'] > 0 and res['images_per_s'] == 1e3 / res['time_ms']


def test_cpu_cases_time_with_the_default_allocator(monkeypatch):
    """On CPU the peak comes from a process with the fixed mmap threshold and the time from a
    second process with the default allocator; a failing timing run is reported."""
    jobs = []

    def fake(job, env, timeout_s):
        jobs.append((job, env))
        if 'case' in job:
            return dict(job['case'], peak_mib=10.0, time_ms=None, times_ms=[])
        return [dict(c, time_ms=4.0, times_ms=[4.0], images_per_s=250.0) for c in job['cases']]
    monkeypatch.setattr(bm, '_subprocess_job', fake)
    case = dict(kind='floor', variant='floor', mode='infer', dtype='float32', n_tokens=16,
                hw=[4, 4], channels=8, heads=1, v_ratio=1, batch=1, T=1)
    (res,) = bm.run_cases([case], 'cpu', warmup=1, repeats=3, log=lambda s: None)
    (peak_job, peak_env), (time_job, time_env) = jobs
    assert peak_env == bm.CPU_MEASURE_ENV and peak_job['repeats'] == 0 and 'case' in peak_job
    assert time_env == {} and time_job['repeats'] == 3 and time_job['cases'] == [case]
    assert (res['peak_mib'], res['time_ms'], res['images_per_s']) == (10.0, 4.0, 250.0)
    monkeypatch.setattr(bm, '_subprocess_job', lambda job, env, t: (
        dict(job['case'], peak_mib=1.0) if 'case' in job
        else [dict(c, error='boom') for c in job['cases']]))
    (res,) = bm.run_cases([case], 'cpu', warmup=1, repeats=3, log=lambda s: None)
    assert res['error'] == 'boom'


def test_interleaved_timing_groups_cases_and_alternates(monkeypatch):
    """--interleave: one timing job per ratio group, holding all of its cases, after the peaks;
    in a process the repeats alternate between the cases."""
    ops = bm.operator_cases(['official', 'ssa_kv'], [64, 256], channels=8, heads=2, v_ratio=1,
                            floor=False)
    jobs = []

    def fake(job, env, timeout_s):
        jobs.append(job)
        if 'case' in job:
            return dict(job['case'], peak_mib=1.0)
        return [dict(c, time_ms=2.0, times_ms=[2.0], images_per_s=500.0) for c in job['cases']]
    monkeypatch.setattr(bm, '_subprocess_job', fake)
    res = bm.run_cases(ops, 'cpu', repeats=2, interleave=True, log=lambda s: None)
    assert ['case' in j for j in jobs] == [True] * 4 + [False] * 2  # peaks first
    assert [[c['n_tokens'] for c in j['cases']] for j in jobs[4:]] == [[64, 64], [256, 256]]
    assert all(r['time_ms'] == 2.0 and r['peak_mib'] == 1.0 for r in res)
    # in-process: the timed calls alternate between the cases
    order = []
    real = bm._case_work

    def spy(case, device):
        fn, info = real(case, device)
        return (lambda: order.append(case['variant']) or fn()), info
    monkeypatch.setattr(bm, '_case_work', spy)
    timed = bm.time_interleaved(ops[:2], 'cpu', warmup=1, repeats=3)
    # (then each case's back-to-back calls, after the round-robin)
    assert order == ['official', 'ssa_kv'] * 3 + ['official'] * 3 + ['ssa_kv'] * 3
    assert all(len(r['times_ms']) == 3 and r['time_ms'] > 0 for r in timed)
    assert all(len(r['gc_ms']) == 3 and min(r['gc_ms']) >= 0 for r in timed)
    bad = dict(ops[0], variant='nope')
    timed = bm.time_interleaved([bad, ops[1]], 'cpu', warmup=1, repeats=2)
    assert 'variant' in timed[0]['error'] and len(timed[1]['times_ms']) == 2


def test_gc_pauses_records_collections_inside_the_block_only(monkeypatch):
    """One pause per collection run inside the block (forced here, or triggered by garbage the
    timed call makes), none after it."""
    import gc

    from mmlrf.analysis.memory import gc_pauses
    with gc_pauses() as pauses:
        gc.collect()
        gc.collect()
    assert len(pauses) == 2 and min(pauses) >= 0
    gc.collect()
    assert len(pauses) == 2
    cases = bm.operator_cases(['ssa_kv'], [64], channels=8, heads=2, v_ratio=1)[:1]
    real = bm._case_work

    def collecting(case, device):
        fn, info = real(case, device)
        return (lambda: gc.collect() or fn()), info
    monkeypatch.setattr(bm, '_case_work', collecting)
    timed = bm.time_interleaved(cases, 'cpu', warmup=1, repeats=2)
    assert len(timed[0]['gc_ms']) == 2 and min(timed[0]['gc_ms']) > 0
    assert 'of 2 calls' in bm.format_row(dict(timed[0], peak_mib=1.0))


def test_frozen_gc_freezes_what_lives_before_the_block_only(monkeypatch):
    """Inside the block the objects alive before it are frozen and cycles made in it are still
    collected; after it nothing stays frozen. --freeze-gc freezes the interleaved round-robin
    only (not the warm-up), in-process and in the timing subprocess's job, and needs
    --interleave."""
    import gc
    import weakref

    from mmlrf.analysis.memory import frozen_gc

    class Node:
        pass
    assert gc.get_freeze_count() == 0
    with frozen_gc():
        assert gc.get_freeze_count() > 0
        cycle = Node()
        cycle.self, alive = cycle, weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is None
    assert gc.get_freeze_count() == 0
    cases = bm.operator_cases(['ssa_kv'], [64], channels=8, heads=2, v_ratio=1)[:1]
    real, frozen = bm._case_work, []

    def spy(case, device):
        fn, info = real(case, device)
        return (lambda: frozen.append(gc.get_freeze_count() > 0) or fn()), info
    monkeypatch.setattr(bm, '_case_work', spy)
    bm.time_interleaved(cases, 'cpu', warmup=2, repeats=2, freeze_gc=True)
    # warm-up, round-robin, then the back-to-back calls
    assert frozen == [False, True, True, False, False] and gc.get_freeze_count() == 0
    frozen.clear()
    bm.time_interleaved(cases, 'cpu', warmup=2, repeats=2)
    assert not any(frozen)
    jobs = []
    monkeypatch.setattr(bm, '_subprocess_job', lambda job, env, t: jobs.append(job) or (
        dict(job['case'], peak_mib=1.0) if 'case' in job
        else [dict(c, time_ms=2.0, times_ms=[2.0], images_per_s=500.0) for c in job['cases']]))
    bm.run_cases(cases, 'cpu', repeats=2, interleave=True, freeze_gc=True, log=lambda s: None)
    assert [j.get('freeze_gc') for j in jobs] == [None, True]
    tool = load_tool('analysis/benchmark')
    monkeypatch.setattr(bm, 'run_benchmark', lambda *a, **k: pytest.fail('must not run'))
    with pytest.raises(SystemExit, match='round-robin timing of --interleave'):
        tool.main(['--freeze-gc', '--device', 'cpu'])


def test_operator_cases_are_also_timed_back_to_back(monkeypatch):
    """Short operator-level calls also get ``time_ms_pipelined`` (``calls`` calls between one
    pair of synchronisations), in-process and from the CPU timing subprocess; model cases and
    calls of PIPELINED_MAX_MS or more do not."""
    calls = []
    assert pipelined_ms(lambda: calls.append(1), torch.device('cpu'), 4) > 0
    assert len(calls) == 4
    with pytest.raises(ValueError, match='calls must be >= 1'):
        pipelined_ms(lambda: None, torch.device('cpu'), 0)
    cases = bm.operator_cases(['ssa_kv'], [64], channels=8, heads=2, v_ratio=1)
    model = bm.model_cases(bm.TOY_CONFIG, ['lrf_dyn'], [(64, 64)])[0]
    assert {c['kind'] for c in cases} == {'operator', 'floor'}
    assert [bm.timed_pipelined(dict(c, time_ms=1.0)) for c in cases + [model]] == [
        True, True, False]
    assert not bm.timed_pipelined(dict(cases[0], time_ms=PIPELINED_MAX_MS))
    assert not bm.timed_pipelined(dict(cases[0], time_ms=None))
    row = bm.run_case(cases[0], 'cpu', warmup=0, repeats=2)
    assert row['time_ms_pipelined'] > 0 and 'back to back' in bm.format_row(row)
    timed = bm.time_interleaved(cases, 'cpu', warmup=1, repeats=2)
    assert all(t['time_ms_pipelined'] > 0 for t in timed)
    monkeypatch.setattr(bm, '_subprocess_job', lambda job, env, t: (
        dict(job['case'], peak_mib=1.0) if 'case' in job
        else [dict(c, time_ms=2.0, times_ms=[2.0], images_per_s=500.0, time_ms_pipelined=1.5)
              for c in job['cases']]))
    (res,) = bm.run_cases(cases[:1], 'cpu', repeats=2, log=lambda s: None)
    assert res['time_ms_pipelined'] == 1.5


def test_memory_cap_cases_and_their_errors(monkeypatch, cuda_precision):
    """--memory-cap-mib: each case again with ``memory_cap_mib``, after every uncapped case, in
    a ratio group of its own; a cap needs CUDA, is > 0 and is not interleaved."""
    cases = bm.model_cases(TOY, ['official', 'lrf_dyn'], [(64, 64)], fused=(False, True))
    both = bm.with_memory_cap(cases, 1192)
    assert both[:4] == cases and [c.get('memory_cap_mib') for c in both] == [None] * 4 + [1192] * 4
    assert [{k: v for k, v in c.items() if k != 'memory_cap_mib'} for c in both[4:]] == cases
    assert bm.group_key(both[4]) == bm.group_key(cases[0]) + ' capped at 1192 MiB'
    assert len({bm.group_key(c) for c in both}) == 4
    with pytest.raises(ValueError, match='must be > 0'):
        bm.with_memory_cap(cases, 0)
    cpu = torch.device('cpu')
    with cuda_memory_cap(cpu, None):  # no cap: nothing to check, nothing set
        pass
    for cap, message in ((64, 'needs a CUDA device'), (-1, 'must be > 0')):
        with pytest.raises(ValueError, match=message):
            with cuda_memory_cap(cpu, cap):
                pass
    ops = bm.operator_cases(['ssa_kv'], [64], channels=8, heads=2, v_ratio=1, floor=False)
    (capped,) = bm.with_memory_cap(ops, 64)[1:]
    res = bm.run_case(capped, 'cpu', warmup=0, repeats=1)
    assert 'needs a CUDA device' in res['error'] and 'peak_mib' not in res
    with pytest.raises(ValueError, match='not interleaved'):
        bm.time_interleaved([capped], 'cpu')
    tool = load_tool('analysis/benchmark')
    monkeypatch.setattr(bm, 'run_benchmark', lambda *a, **k: pytest.fail('must not run'))
    for argv, message in ((['--memory-cap-mib', '64', '--device', 'cpu'], 'needs a CUDA'),
                          (['--memory-cap-mib', '64', '--device', 'cuda', '--interleave'],
                           'one or the other'),
                          (['--memory-cap-mib', '0', '--device', 'cuda'], 'must be > 0')):
        with pytest.raises(SystemExit, match=message):
            tool.main(argv)


@needs_cuda
def test_memory_cap_on_cuda_bounds_allocations_and_is_lifted():
    """Under a cap, an allocation beyond it fails and one within it succeeds; after the block
    the cap is gone. A capped benchmark case stays within its cap."""
    dev = torch.device('cuda')
    mib = 1 << 20
    with cuda_memory_cap(dev, 64):
        # larger than every free block the allocator keeps in segments that earlier tests'
        # live tensors pin (the cap bounds new segments, not reuse of cached ones)
        beyond = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev) + 128 * mib
        small = torch.empty(32 * mib, dtype=torch.uint8, device=dev)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(beyond, dtype=torch.uint8, device=dev)
    del small
    big = torch.empty(128 * mib, dtype=torch.uint8, device=dev)
    del big
    (case,) = bm.with_memory_cap(bm.model_cases(TOY, ['lrf_dyn'], [(128, 128)]), 256)[1:]
    res = bm.run_case(case, dev, warmup=2, repeats=2)
    assert 'error' not in res and 0 < res['peak_mib'] <= 256 + 2


def test_bench_dynamics_smoke(tmp_path):
    """``bench_dynamics_gpu.py --smoke`` (CPU, tiny sizes): every path of both dtypes and the
    parameter path of both parameterisations are timed per call (and back to back, below
    PIPELINED_MAX_MS), and the fast paths match the float64 FFT reference. The parameter rows
    count their ATen operators (the diagonalisation adds some); no fused row off CUDA."""
    out = tmp_path / 'dynamics.json'
    load_tool('analysis/bench_dynamics_gpu').main(
        ['--smoke', '--warmup', '0', '--repeats', '2', '--out', str(out)])
    data = json.loads(out.read_text())
    rows = data['rows']
    assert data['info']['device'] == 'cpu' and data['info']['triton_configs'] is None
    assert {(r['dtype'], r['op']) for r in rows} >= {
        ('float32', 'floor copy'), ('float32', 'triton params (ATen)'),
        ('float32', 'triton params (tridiagonal)'), ('float32', 'scan fwd+bwd'),
        ('bfloat16', 'scan fwd'), ('bfloat16', 'fft fwd+bwd')}
    ops = {r['op']: r['aten_ops'] for r in rows if 'aten_ops' in r}
    assert set(ops) == {'triton params (ATen)', 'triton params (tridiagonal)'}
    assert 0 < ops['triton params (ATen)'] < ops['triton params (tridiagonal)']
    assert all('error' not in r and 'skipped' not in r for r in rows)
    assert all(r['ms'] > 0 and ('ms_pipelined' in r) == (r['ms'] < PIPELINED_MAX_MS)
               and r.get('ms_pipelined', 1) > 0 for r in rows)
    assert any('ms_pipelined' in r for r in rows)
    assert all(('host_us' in r) == ('ms_pipelined' in r) and r.get('host_us', 1) > 0
               for r in rows)
    tol = {'float32': 1e-5, 'bfloat16': 1e-2}
    assert all(r[e] < tol[r['dtype']] for r in rows for e in ('err_y', 'err_gx') if e in r)
    assert sum('err_y' in r for r in rows) == 4 and sum('err_gx' in r for r in rows) == 4


def test_benchmark_attention_map_attribution():
    mixer = bm.build_mixer('official', 16, 2, 2)
    terms = bm.mixer_state_terms(mixer, (1, 3, 16, 8, 8), (1, 3, 32, 8, 8), torch.float32)
    assert terms['attention_map'] == 3 * 2 * 64 * 64 * 4 / 2**20


def test_benchmark_fused_model_case(tmp_path):
    """Fused model cases run, form their own ratio group, and refuse training."""
    cases = bm.smoke_cases(bm.model_cases(bm.MODEL_19M_CONFIG, ['official', 'lrf_dyn'],
                                          [(1024, 1024)], fused=(True,)))
    report = bm.run_benchmark(cases, 'cpu', str(tmp_path / 'f'), 'test', warmup=0, repeats=1,
                              isolate=False, log=lambda s: None)
    assert all('error' not in r for r in report['results']), report['results']
    assert all(r['batchnorms_folded'] > 0 for r in report['results'])
    (ratio,) = report['ratios']
    assert ratio['variant'] == 'lrf_dyn' and ratio['group'].endswith(' fused-BN')
    with pytest.raises(ValueError, match="infer mode"):
        bm.model_cases(bm.MODEL_19M_CONFIG, ['official'], [(64, 64)], modes=['train'],
                       fused=(False, True))
    both = bm.model_cases(bm.MODEL_19M_CONFIG, ['official'], [(64, 64)], fused=(False, True))
    assert [c['fuse_conv_bn'] for c in both] == [False, True]


@pytest.mark.slow
def test_benchmark_compiled_model_case(eager_compile):
    """A compiled inference case runs, reports its compilation time, forms its own ratio
    group; a compiled training case compiles the segmentor's ``loss`` as ``CompileHook`` does;
    CUDA graphs are refused. (Dynamo's eager backend and one transformer block per stage, to
    keep the test short: that compiled models keep their outputs is tested in
    test_configs.py.)"""
    import torch._dynamo
    torch._dynamo.reset()
    shallow = {'model.backbone.depths': (1, 1)}
    (case,) = bm.model_cases(TOY, ['lrf_dyn'], [(32, 64)], cfg_options=shallow,
                             compiled=(True,))
    result = bm.run_case(case, warmup=0, repeats=1)
    assert 'error' not in result and result['compile_s'] > 0 and result['time_ms'] > 0
    assert bm.group_key(case).endswith(' compiled')
    assert [fn.__name__ for fn in eager_compile] == ['forward']  # the inference forward
    (train_case,) = bm.model_cases(TOY, ['lrf_dyn'], [(32, 32)], modes=['train'],
                                   cfg_options=shallow, compiled=(True,))
    result = bm.run_case(train_case, warmup=0, repeats=1)
    assert 'error' not in result
    assert sorted(fn.__name__ for fn in eager_compile[1:]) == ['encode_decode', 'loss']
    assert result['compile_s'] > 0 and result['saved_for_backward_mib'] > 0
    with pytest.raises(ValueError, match='separate runs'):
        bm.model_cases(TOY, ['official'], [(64, 64)], graphed=(True,), compiled=(True,))
    both = bm.model_cases(TOY, ['official'], [(64, 64)], compiled=(False, True))
    assert [c['compile'] for c in both] == [False, True]
    with pytest.raises(SystemExit, match='applies to whole models'):
        load_tool('analysis/benchmark').main(['--compile'])


def test_benchmark_channels_last_model_case(tmp_path):
    """Channels-last model cases store the weights channels-last, form their own ratio group
    and refuse training."""
    cases = bm.smoke_cases(bm.model_cases(bm.MODEL_19M_CONFIG, ['official', 'lrf_dyn'],
                                          [(1024, 1024)], channels_last=(True,)))
    report = bm.run_benchmark(cases, 'cpu', str(tmp_path / 'c'), 'test', warmup=0, repeats=1,
                              isolate=False, log=lambda s: None)
    assert all('error' not in r for r in report['results']), report['results']
    (ratio,) = report['ratios']
    assert ratio['variant'] == 'lrf_dyn' and ratio['group'].endswith(' channels-last')
    model, _, _ = bm.build_variant_model(bm.TOY_CONFIG, None, channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters() if p.dim() == 4)
    with pytest.raises(ValueError, match="infer mode"):
        bm.model_cases(bm.MODEL_19M_CONFIG, ['official'], [(64, 64)], modes=['train'],
                       channels_last=(True,))


def test_benchmark_plain_inference_twin(tmp_path):
    """--plain-inference: each model case gets a twin with lean inference off, in its own ratio
    group; the twin's model has no row strips and releases nothing; training is refused."""
    cases = bm.smoke_cases(bm.model_cases(bm.MODEL_19M_CONFIG, ['official', 'lrf_dyn'],
                                          [(1024, 1024)], lean=(True, False)))
    assert [c['lean'] for c in cases] == [True, True, False, False]
    report = bm.run_benchmark(cases, 'cpu', str(tmp_path / 'p'), 'test', warmup=0, repeats=1,
                              isolate=False, log=lambda s: None)
    assert all('error' not in r for r in report['results']), report['results']
    groups = sorted(r['group'] for r in report['ratios'])
    assert len(groups) == 2 and groups[1] == groups[0] + ' plain-inference'
    for lean in (True, False):
        model, _, _ = bm.build_variant_model(bm.MODEL_19M_CONFIG, None, lean=lean)
        assert model.backbone.ConvBlock1_1[0].strips == lean
        assert model.neck.release_inputs == model.decode_head.release_inputs == lean
    with pytest.raises(ValueError, match="infer mode"):
        bm.model_cases(bm.MODEL_19M_CONFIG, ['official'], [(64, 64)], modes=['train'],
                       lean=(True, False))
    with pytest.raises(SystemExit, match='applies to whole models'):
        load_tool('analysis/benchmark').main(['--plain-inference'])


def test_benchmark_onednn_convs_twin(monkeypatch):
    """--onednn-convs: each model case gets a twin with mmlrf's conv routes off, in its own
    ratio group but timed together with the routed case; the twin really runs without them."""
    from mmlrf import conv as conv_routes
    cases = bm.smoke_cases(bm.model_cases(bm.MODEL_19M_CONFIG, ['official', 'lrf_dyn'],
                                          [(1024, 1024)], modes=['train'],
                                          conv_routes=(True, False)))
    assert [c['conv_routes'] for c in cases] == [True, True, False, False]
    keys = [bm.group_key(c) for c in cases]
    assert keys[0] == keys[1] != keys[2] == keys[3] and keys[2].endswith(' oneDNN-convs')
    assert len({bm.timing_key(c) for c in cases}) == 1
    calls = []
    real = conv_routes._pointwise_forward
    monkeypatch.setattr(conv_routes, '_pointwise_forward', lambda *a: calls.append(1) or real(*a))
    routed, twin = bm.run_case(cases[1], warmup=0, repeats=1), len(calls)
    off = bm.run_case(cases[3], warmup=0, repeats=1)
    assert 'error' not in routed and 'error' not in off
    assert twin > 0 and len(calls) == twin  # no 1x1 matrix product with the routes off
    assert conv_routes._routes_enabled  # restored
    tool = load_tool('analysis/benchmark')
    for argv, message in ((['--onednn-convs'], 'applies to whole models'),
                          (['--config', TOY, '--onednn-convs', '--device', 'cuda'],
                           'needs --device cpu')):
        with pytest.raises(SystemExit, match=message):
            tool.main(argv)


@pytest.mark.parametrize('argv, flags', [
    ([], (False, False, False)),
    (['--tf32'], (True, True, False)),                       # a bare --tf32 is 'all', as before
    (['--tf32', 'convs'], (False, True, False)),             # PyTorch's default precision
    (['--tf32', 'off', '--cudnn-benchmark'], (False, False, True)),
])
def test_tf32_modes_set_the_cuda_flags(cuda_precision, argv, flags):
    tool = load_tool('analysis/benchmark')
    args = tool.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = not flags[0]
    torch.backends.cudnn.allow_tf32 = not flags[1]
    bm.set_cuda_precision(args.tf32, args.cudnn_benchmark)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark) == flags


def test_tf32_mode_errors(cuda_precision, capsys):
    with pytest.raises(ValueError, match='tf32 must be one of'):
        bm.set_cuda_precision('tf32')
    with pytest.raises(SystemExit):
        load_tool('analysis/benchmark').parse_args(['--tf32', 'matmul'])
    assert 'invalid choice' in capsys.readouterr().err


def run_gpu_suite(out, **env):
    """``gpu_suite.sh --smoke`` with ``OUT=out`` and the extra environment ``env``."""
    import subprocess
    import sys
    return subprocess.run(['bash', os.path.join(ROOT, 'tools', 'analysis', 'gpu_suite.sh'),
                           '--smoke'], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OUT=str(out), PYTHON=sys.executable, **env))


def suite_archive_files(out):
    """The names of the files in ``out/suite.tgz``."""
    import tarfile
    with tarfile.open(out / 'suite.tgz') as tar:
        return sorted(os.path.basename(m.name) for m in tar.getmembers() if m.isfile())


def test_gpu_suite_skips_the_steps_its_budget_cannot_hold(tmp_path):
    """``gpu_suite.sh`` stays within SUITE_BUDGET: with none left, every step is logged as
    SKIPPED (none runs, nothing is written) and the suite still ends with its log."""
    out = tmp_path / 'suite'
    proc = run_gpu_suite(out, SUITE_BUDGET='0')
    assert proc.returncode == 0, proc.stderr[-2000:]
    skipped = [ln for ln in proc.stdout.splitlines() if ln.endswith('SKIPPED (suite budget '
                                                                    'of 0 s spent)')]
    names = [ln.split()[1].rstrip(':') for ln in skipped]
    assert names == ['dynamics', 'train_interleaved', 'issue5', 'tf32_convs', 'tf32_wscap',
                     'tf32_cap', 'memory_tf32', 'tf32_plain', 'fused', 'compiled', 'profile',
                     'profile_fused', 'profile_train_official', 'profile_train_lrf_dyn',
                     'channels_last', 'conv', 'compiled_train']
    assert sorted(p.name for p in out.iterdir()) == ['suite.log', 'suite.tgz']
    assert suite_archive_files(out) == []
    assert 'tf32_convs: SKIPPED' in (out / 'suite.log').read_text()
    # the list SUITE_STEPS is checked against: the steps run, the two GPU-only ones first
    bad = run_gpu_suite(tmp_path / 'bad', SUITE_STEPS='none')
    assert bad.stderr.split('the steps are: ')[1].split() == ['kernel_tests', 'graph_tests',
                                                              *names]


def test_gpu_suite_runs_the_selected_steps_into_one_archive(tmp_path):
    """SUITE_STEPS runs only the named steps; their files come back in ``suite.tgz`` beside
    ``suite.log`` (the device returns at most 8 files); an unknown step name is refused before
    anything is written."""
    import tarfile
    out = tmp_path / 'suite'
    proc = run_gpu_suite(out, SUITE_STEPS='dynamics')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['suite.log', 'suite.tgz']
    assert suite_archive_files(out) == ['dynamics.json']
    with tarfile.open(out / 'suite.tgz') as tar:
        rows = json.load(tar.extractfile('./dynamics.json'))['rows']
    assert {r['op'] for r in rows} >= {'floor copy', 'scan fwd', 'fft fwd'}
    log = (out / 'suite.log').read_text()
    assert '== issue5: not selected (SUITE_STEPS)' in log and '== dynamics (at most' in log
    bad = run_gpu_suite(tmp_path / 'bad', SUITE_STEPS='dynamics isue5')
    assert bad.returncode == 2 and "unknown step 'isue5'" in bad.stderr
    assert not (tmp_path / 'bad').exists()


def test_model_args_validation(tmp_path):
    import argparse

    from mmlrf.analysis.model_args import add_model_args, check_model_args, parse_hw
    assert parse_hw('512x1024') == (512, 1024) and parse_hw('64X32') == (64, 32)
    for bad, message in (('64', 'HxW'), ('axb', 'HxW'), ('1x2x3', 'HxW'), ('0x64', 'positive')):
        with pytest.raises(ValueError, match=message):
            parse_hw(bad)
    one, several = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_model_args(one)
    add_model_args(several, several_variants=True, batch=2)
    args = several.parse_args([TOY, '--variants', 'official', 'lrf_dyn:scan'])
    assert args.batch == 2 and check_model_args(args) == (512, 512)
    assert one.parse_args([TOY]).variant is None and one.parse_args([TOY]).batch == 1
    for parser, argv, message in (
            (one, [str(tmp_path / 'missing.py')], 'config file not found'),
            (one, [TOY, '--variant', 'nope'], 'variant must be one of'),
            (several, [TOY, '--variants', 'official', 'nope'], 'variant must be one of'),
            (one, [TOY, '--batch', '0'], 'batch must be >= 1'),
            (one, [TOY, '--resolution', '5'], 'HxW')):
        with pytest.raises(ValueError, match=message):
            check_model_args(parser.parse_args(argv))
    with pytest.raises(SystemExit, match='HxW'):
        load_tool('analysis/benchmark').main(['--config', TOY, '--resolution', '64'])


# ------------------------------------------------------------------------ saved for backward
class _Save(torch.autograd.Function):
    """Identity that saves its input (and, twice, a view of it) for backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x, x[:1], x)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


class _Saver(nn.Module):
    def forward(self, x):
        return _Save.apply(x)


class _ConvParent(nn.Module):
    """A conv (its float input saved by autograd) inside a parent module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.conv_hooked_during_forward = None

    def forward(self, x):
        self.conv_hooked_during_forward = bool(self.conv._forward_hooks
                                               or self.conv._forward_pre_hooks)
        return self.conv(x.view(1, 2, 3, 1)).view(2, 3)


def test_saved_tensor_meter_counts_and_attributes_by_hand():
    from mmlrf.analysis.saved_tensors import OUTSIDE, SavedTensorMeter
    model = nn.Sequential(_Saver(), nn.Sequential(_Saver(), _Saver()), _ConvParent())
    x = torch.randn(2, 3, requires_grad=True)
    size = x.numel() * 4  # one float32 [2, 3] storage: views and repeats count once
    with SavedTensorMeter(model.parameters(), model, depth=1) as meter:
        y = model(x)
        _Save.apply(y.double())
    assert meter.bytes == 4 * size + 2 * size  # x + 3 clones + conv input; the double outside
    assert dict(meter.by_dtype) == {torch.float32: 4 * size, torch.float64: 2 * size}
    assert dict(meter.by_module) == {'0': size, '1': 2 * size, '2': size, OUTSIDE: 2 * size}
    assert dict(meter.by_kind) == {('_Saver', 'float32'): 3 * size,
                                   ('Conv2d', 'float32'): size,
                                   (OUTSIDE, 'float64'): 2 * size}
    assert model[2].conv_hooked_during_forward is True  # convs are attributed too
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with SavedTensorMeter(model=model) as full:  # full names; the conv weight counted now
        model(x)
    assert dict(full.by_module) == {'0': size, '1.0': size, '1.1': size,
                                    '2.conv': size + 4 * 4}
    summary = full.summary(top=2)
    assert summary['saved_mib'] == pytest.approx(full.bytes / 2**20)
    assert [row[0] for row in summary['by_module']] == ['2.conv', '0']  # largest first, cut at 2
    with pytest.raises(ValueError, match='depth'):
        SavedTensorMeter(depth=0)


def test_saved_tensor_attribution_keeps_the_spike_code_path():
    """Attributing to modules (hooks on every module, convs included) must not change what is
    saved: hooked convs still save 1-byte spike codes."""
    from mmlrf.analysis.saved_tensors import SavedTensorMeter
    from mmlrf.backbones import SDTV3
    backbone = SDTV3(embed_dims=[8, 16, 32, 32], num_heads=4).train()
    x = torch.randn(1, 3, 48, 48)
    params = list(backbone.parameters())
    with SavedTensorMeter(params) as plain:
        backbone(x)
    with SavedTensorMeter(params, backbone, depth=1) as attributed:
        backbone(x)
    assert attributed.bytes == plain.bytes > 0
    assert sum(attributed.by_module.values()) == sum(attributed.by_kind.values()) == plain.bytes
    assert attributed.by_kind[('MultiSpike', 'uint8')] > 0


def test_saved_tensors_tool_on_toy_config(tmp_path):
    tool = load_tool('analysis/saved_tensors')
    out = str(tmp_path / 's')
    summaries = tool.main([TOY, '--variants', 'official', 'lrf_dyn', '--resolution', '32x32',
                           '--batch', '1', '--depth', '2', '--out', out])
    report = json.loads(open(out + '.json').read())
    assert [v['variant'] for v in report['variants']] == ['official', 'lrf_dyn']
    assert report['variants'] == json.loads(json.dumps(summaries))
    for v in summaries:
        total = v['saved_mib']
        assert total > 0
        assert sum(mib for _, mib in v['by_module']) == pytest.approx(total)
        assert sum(mib for *_, mib in v['by_kind']) == pytest.approx(total)
        assert all(name.count('.') <= 1 for name, _ in v['by_module'])
    kinds = [{cls for cls, *_ in v['by_kind']} for v in summaries]
    assert 'SSA' in kinds[0] and 'DendriticDynamics' in kinds[1]
    for bad, message in ((['missing.py'], 'config file not found'),
                         ([TOY, '--variants', 'nope'], 'variant must be one of'),
                         ([TOY, '--resolution', '64'], 'HxW'),
                         ([TOY, '--depth', '0'], 'must be >= 1')):
        with pytest.raises(SystemExit, match=message):
            tool.main(bad)


# ---------------------------------------------------------------------------------- profiling
def test_profile_attributes_time_to_leaf_modules():
    from mmlrf.analysis.profile import format_profile, profile_pass
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Sequential(
        torch.nn.BatchNorm2d(8), torch.nn.ReLU()), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    grad_enabled = []

    def run():
        grad_enabled.append(torch.is_grad_enabled())
        model(x)
    report = profile_pass(model, run, torch.device('cpu'), iterations=2, warmup=0)
    assert grad_enabled == [False] * 4  # inference passes run without autograd
    calls = {r['name']: r['calls'] for r in report['modules']}
    assert calls == {'Conv2d': 2, 'BatchNorm2d': 1, 'ReLU': 1}  # leaves only, per pass
    assert all(0 < r['share'] <= 1 for r in report['modules'])
    assert sum(r['ms'] for r in report['modules']) <= report['profiled_ms'] + 1e-6
    assert any('conv' in r['name'] for r in report['ops']) and report['op_calls'] > 4
    assert report['backward'] == [] and report['kernels'] == []  # no training, no CUDA
    assert 'outside leaf modules' in format_profile(report)
    # hooks are removed afterwards
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


def test_aten_op_count_counts_operators_not_views():
    """``(x·2 + 1).sum()`` is three operators; transposes, indexing and unsqueezes are views;
    a backward run inside the counted call adds its own operators."""
    from mmlrf.analysis.profile import aten_op_count
    x = torch.randn(3, 4, requires_grad=True)
    assert aten_op_count(lambda: (x * 2 + 1).sum()) == 3
    assert aten_op_count(lambda: (x.t()[0].unsqueeze(0) * 2).sum()) == 2
    assert aten_op_count(lambda: (x * 2).sum().backward()) > 2


def test_profile_of_a_training_step_attributes_backward_nodes():
    """Backward time goes to autograd's nodes (outermost only: the nodes a re-entrant backward
    evaluates count for it); the leaf-module ranges must not switch spike codes off."""
    from mmlrf.analysis.profile import format_profile, profile_pass
    from mmlrf.conv import RoutedConv2d
    from mmlrf.neurons import MultiSpike
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                MultiSpike(), RoutedConv2d(8, 4, 3)).train()
    x = torch.randn(2, 3, 16, 16)

    def run():
        model.zero_grad(set_to_none=True)
        _Reentrant.apply(model(x)).sum().backward()
    report = profile_pass(model, run, torch.device('cpu'), iterations=2, warmup=1, train=True)
    assert model[0].weight.grad is not None
    calls = {r['name']: r['calls'] for r in report['backward']}
    assert calls['_ReentrantBackward'] == 1 and 'MulBackward0' not in calls
    assert calls['_SpikeCodeConv2dBackward'] == 1  # the conv saved the neuron's code
    assert calls['ConvolutionBackward0'] == calls['NativeBatchNormBackward0'] == 1
    assert calls['_MultiSpikeSTEBackward'] == 1
    assert {r['name'] for r in report['modules']} == {'Conv2d', 'BatchNorm2d', 'MultiSpike',
                                                      'RoutedConv2d'}
    rows = report['modules'] + report['backward']
    assert all(r['ms'] >= 0 for r in rows)
    assert sum(r['ms'] for r in rows) <= report['profiled_ms'] + 1e-6
    text = format_profile(report)
    assert 'backward: _SpikeCodeConv2dBackward' in text and 'and backward nodes' in text


@needs_cuda
def test_profile_on_cuda_lists_kernels_and_backward_device_time():
    """On a GPU the rows are device time, backward nodes included (autograd runs them on its
    device thread), and the kernels are listed."""
    from mmlrf.analysis.profile import profile_pass
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).cuda()
    x = torch.randn(2, 3, 32, 32, device='cuda')

    def run():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    report = profile_pass(model.train(), run, torch.device('cuda'), iterations=2, warmup=1,
                          train=True)
    assert report['basis'] == 'device'
    assert report['kernels'] and all(r['ms'] > 0 for r in report['kernels'])
    backward = {r['name']: r['ms'] for r in report['backward']}
    # the BN node is cuDNN's on CUDA (CudnnBatchNormBackward0), ATen's where cuDNN is off
    (bn,) = [ms for name, ms in backward.items() if name.endswith('BatchNormBackward0')]
    assert backward['ConvolutionBackward0'] > 0 and bn > 0


def test_profile_model_tool_on_toy_config(tmp_path, cuda_precision):
    tool = load_tool('analysis/profile_model')
    out = str(tmp_path / 'p')
    report = tool.main([TOY, '--variant', 'lrf_dyn', '--resolution', '64x64', '--iterations',
                        '1', '--warmup', '0', '--fuse-conv-bn', '--tf32', 'convs', '--out', out])
    assert report['tf32'] == 'convs'
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    names = {r['name'] for r in report['modules']}
    assert {'RoutedConv2d', 'MultiSpike', 'DendriticDynamics'} <= names
    assert 'BatchNorm2d' not in names
    assert json.loads(open(out + '.json').read())['fuse_conv_bn'] is True
    report = tool.main([TOY, '--variant', 'lrf_dyn', '--resolution', '32x32', '--batch', '2',
                        '--mode', 'train', '--iterations', '1', '--warmup', '0', '--out', out])
    assert report['mode'] == 'train' and 'BatchNorm2d' in {r['name'] for r in report['modules']}
    calls = {r['name']: r['calls'] for r in report['backward']}
    assert calls['_ChunkedScanBackward'] == 8 and calls['_SpikeCodeConv2dBackward'] > 0
    for bad, message in ((['missing.py'], 'config file not found'),
                         ([TOY, '--variant', 'nope'], 'variant must be one of'),
                         ([TOY, '--resolution', '64'], 'HxW'),
                         ([TOY, '--mode', 'train', '--fuse-conv-bn'], 'cannot profile training')):
        with pytest.raises(SystemExit, match=message):
            tool.main(bad)


def test_grid_and_variant_validation():
    assert bm.grid_hw(8192) == (64, 128) and bm.grid_hw(4096) == (64, 64)
    with pytest.raises(ValueError, match='variant'):
        bm.parse_variant('nope')
    with pytest.raises(ValueError, match='preset'):
        bm.preset_cases('issue9')


# ---------------------------------------------------------------------------------- locality
def test_locality_single_dilated_kernel_distances():
    from mmlrf.analysis import locality
    from mmlrf.attention.lrf import LRFBranch
    torch.manual_seed(0)
    r, h, w = 2, 9, 9
    lrf = LRFBranch(3, dilations=(r,), bn=False).eval()
    weights = locality.token_influence(lambda v: lrf(v), (3, h, w))
    stats = locality.locality_stats(weights, h, w)
    hist = torch.tensor(stats['histogram'])
    assert hist.sum().item() == pytest.approx(1.0, abs=1e-12)
    nonzero = set(torch.nonzero(hist > 1e-12).flatten().tolist())
    assert nonzero == {0, r, 2 * r}
    # centre query: its row is the channel-mean |kernel| placed on the dilated taps
    centre = (h // 2) * w + w // 2
    kern = lrf.branches[0][0].weight.detach().abs().mean(0)[0]      # [3, 3]
    expect = torch.zeros(h, w)
    for i in range(3):
        for j in range(3):
            expect[h // 2 + (i - 1) * r, w // 2 + (j - 1) * r] = kern[i, j]
    assert torch.allclose(weights[centre].view(h, w), expect, atol=1e-6)


def test_locality_ssa_matches_dense_qk_map():
    from mmlrf.analysis import locality
    torch.manual_seed(0)
    mixer = bm.build_mixer('official', 8, 2, 1).eval()
    h, w = 3, 4
    q = torch.randint(0, 5, (1, 1, 8, h, w)) / 4.0
    k = torch.randint(0, 5, (1, 1, 8, h, w)) / 4.0
    v = torch.zeros(1, 1, 8, h, w)
    weights = locality.mixer_influence(mixer, q, k, v, None)
    # dense reference: per head |s · q_n · k_m|, averaged over the channels (4 per head)
    qf, kf = q[0, 0].flatten(1), k[0, 0].flatten(1)                 # [C, N]
    ref = torch.stack([(qf[4 * i:4 * i + 4].T @ kf[4 * i:4 * i + 4]).abs() * mixer.scale
                       for i in range(2)]).mean(0)
    assert torch.allclose(weights, ref, atol=1e-6)
    stats = locality.locality_stats(weights, h, w)
    assert sum(stats['histogram']) == pytest.approx(1.0)
    assert 0 <= stats['entropy'] <= 1


def test_locality_stats_hand_example():
    from mmlrf.analysis import locality
    # 1×3 grid; every query puts all weight on token 0 → distances 0, 1, 2 each once
    weights = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [5.0, 0, 0]])
    stats = locality.locality_stats(weights, 1, 3)
    assert stats['histogram'] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert stats['entropy'] == 0.0 and stats['mean_distance'] == pytest.approx(1.0)


# ------------------------------------------------------------------ energy / locality CLIs
@pytest.mark.parametrize('tool, extra', [('energy', ['--num-images', '2']),
                                         ('locality', ['--num-images', '1'])])
def test_analysis_cli_reproducible_without_checkpoint(tmp_path, tool, extra):
    """Both tools run on the toy config (its data set generated under ``--data-root``) without
    a checkpoint: the same ``--seed`` gives the same report, another seed another one."""
    def run(seed, name):
        out = str(tmp_path / name)
        load_tool(f'analysis/{tool}').main(
            [TOY, '--size', '32', '32', '--data-root', str(tmp_path / 'toy'), '--seed',
             str(seed), '--out', out, '--cfg-options', 'model.backbone.depths=(1,1)', *extra])
        assert_png(out + '.png')
        with open(out + '.json') as f:
            report = json.load(f)
        assert report['seed'] == seed
        return {k: v for k, v in report.items() if k != 'seed'}

    first = run(0, 'a')
    assert run(0, 'b') == first
    assert run(1, 'c') != first
