"""The benchmark (mmlrf.analysis.benchmark, memory) and its command line."""
import json
import os

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from mmseg.models.utils import resize

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.memory import CPU_MEASURE_ENV
from mmlrf.inference.transforms import count_batchnorms

from batchnorm_stats import calibrate_batchnorms
from devices import needs_cuda
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')
MIB = 1 << 20


def floor_case(n_tokens=4096, channels=1024, v_ratio=4):
    """V.clone() of V ``[1, 1, v_ratio·channels, 64, 64]``: 64 MiB of float32 by default."""
    return bm.operator_cases(['official'], [n_tokens], channels, 8, v_ratio)[-1]


def test_cpu_floor_case_reads_the_tensor_bytes():
    """The fresh-process RSS method sees the 64 MiB output of the floor case (peak only: the
    second, timing process is the test below)."""
    case = floor_case()
    assert case['kind'] == 'floor' and case['hw'] == [64, 64] and bm.grid_hw(8192) == (64, 128)
    (res,) = bm.run_cases([case], 'cpu', warmup=1, repeats=0, log=lambda s: None)
    assert 'error' not in res, res
    assert res['output_mib'] == 64.0
    assert 60 <= res['peak_mib'] <= 72


@needs_cuda
def test_cuda_floor_case_reads_the_tensor_bytes():
    (res,) = bm.run_cases([floor_case()], 'cuda', warmup=1, repeats=2, log=lambda s: None)
    assert 'error' not in res, res
    assert res['peak_mib'] == pytest.approx(64.0, abs=2.0)


def test_cpu_peak_and_time_come_from_two_fresh_processes(monkeypatch):
    """The peak from a process with the fixed mmap threshold and no timing, the time from one
    with the default allocator; an error of the timing process is the case's error."""
    jobs = []

    def fake(job, env, timeout_s):
        jobs.append((job, env, timeout_s))
        if job['repeats'] == 0:
            return dict(job['case'], peak_mib=10.0, time_ms=None, times_ms=[])
        return dict(job['case'], peak_mib=99.0, time_ms=4.0, times_ms=[4.0], images_per_s=250.0)
    monkeypatch.setattr(bm, '_in_subprocess', fake)
    case = floor_case(16, 8, 1)
    (res,) = bm.run_cases([case], 'cpu', warmup=2, repeats=3, timeout_s=7, log=lambda s: None)
    (peak_job, peak_env, t1), (time_job, time_env, t2) = jobs
    assert peak_env == CPU_MEASURE_ENV and time_env == {} and t1 == t2 == 7
    assert peak_job['case'] == time_job['case'] == case
    assert (peak_job['repeats'], time_job['repeats'], time_job['warmup']) == (0, 3, 2)
    assert (res['peak_mib'], res['time_ms'], res['images_per_s']) == (10.0, 4.0, 250.0)
    monkeypatch.setattr(bm, '_in_subprocess', lambda job, env, t: dict(
        job['case'], peak_mib=1.0) if job['repeats'] == 0 else dict(job['case'], error='boom'))
    (res,) = bm.run_cases([case], 'cpu', repeats=3, log=lambda s: None)
    assert res['error'] == 'boom'
    jobs.clear()
    monkeypatch.setattr(bm, '_in_subprocess', fake)
    bm.run_cases([case], 'cpu', repeats=3, isolate=False, log=lambda s: None)
    assert jobs == []  # in-process when not isolated


def test_ratios_compare_variants_of_one_group_only():
    def row(variant, peak, time_ms, kind='operator', batch=1, **extra):
        case = bm.operator_cases([variant], [64], 8, 2, 1, batches=[batch], floor=False)[0]
        return dict(case, kind=kind, peak_mib=peak, time_ms=time_ms, **extra)
    results = [row('official', 8.0, 4.0), row('ssa_kv', 2.0, 1.0), row('lrf_dyn', 3.0, None),
               row('floor', 1.0, 0.5, 'floor'), row('lrf_ssa', 0, 0, error='boom'),
               row('ssa_kv', 5.0, 5.0, batch=2),                # no reference in its group
               row('official', 0.0, 2.0, batch=4), row('lrf_dyn', 1.0, 3.0, batch=4)]
    ratios = {(r['variant'], r['group'].split('B=')[1][0]): r for r in bm.compute_ratios(results)}
    assert set(ratios) == {('ssa_kv', '1'), ('floor', '1'), ('lrf_dyn', '1'), ('lrf_dyn', '4')}
    assert ratios['ssa_kv', '1']['peak_ratio'] == ratios['ssa_kv', '1']['time_ratio'] == 0.25
    assert ratios['floor', '1']['peak_ratio'] == 0.125
    assert ratios['lrf_dyn', '1']['time_ratio'] is None          # not timed
    assert ratios['lrf_dyn', '4']['peak_ratio'] is None          # reference peak 0
    assert ratios['lrf_dyn', '4']['time_ratio'] == 1.5


def test_operator_cases_attribute_the_attention_state():
    """Analytic state sizes by hand: QK-first T·B·heads·N² elements, KV-first T·B·C·Cv/heads;
    a training step runs; a failing case reports its error and the others go on."""
    t, b, c, heads, n = 2, 3, 16, 2, 64
    cases = bm.operator_cases(['official', 'ssa_kv', 'lrf_dyn', 'nope'], [n], c, heads, 2,
                              batches=[b], ts=[t], modes=['infer', 'train'], floor=False)
    res = {(r['variant'], r['mode']): r for r in (bm.run_case(case, 'cpu', 0, 1)
                                                  for case in cases)}
    attention_map = t * b * heads * n * n * 4 / MIB
    kv_state = t * b * c * 2 * c // heads * 4 / MIB
    assert res['official', 'infer']['analytic_mib'] == {'attention_map': attention_map}
    assert res['ssa_kv', 'train']['analytic_mib'] == {'kv_state': kv_state}
    assert res['lrf_dyn', 'infer']['analytic_mib'] == {}
    for key in [k for k in res if k[0] != 'nope']:
        assert 'error' not in res[key] and res[key]['time_ms'] > 0, res[key]
        assert res[key]['output_mib'] == t * b * 2 * c * n * 4 / MIB
        assert res[key]['inputs_mib'] == t * b * (3 * c + 2 * c) * n * 4 / MIB
    assert 'variant must be one of' in res['nope', 'infer']['error']
    with pytest.raises(ValueError, match='kind'):
        bm.run_case(dict(cases[0], kind='nope'))


def test_model_cases_take_the_inference_options_from_one_table():
    """Each case as built, again with the chosen options (in the table's order), and each of
    those with lean inference off; the options really apply to the model."""
    cases = bm.model_cases(TOY, ['official', 'lrf_dyn'], [(32, 32)],
                           options=['channels_last', 'fuse_conv_bn'], plain=True)
    assert [(c['options'], c['lean']) for c in cases[::2]] == [
        ([], True), ([], False), (['fuse_conv_bn', 'channels_last'], True),
        (['fuse_conv_bn', 'channels_last'], False)]
    assert len({bm.group_key(c) for c in cases}) == 4
    assert bm.group_key(cases[-1]).endswith('fuse_conv_bn channels_last plain-inference')
    for bad, message in ((dict(options=['nope']), 'unknown option'),
                         (dict(calls=['nope']), 'unknown option'), (dict(calls=[]), 'call'),
                         (dict(options=['compile'], modes=['train']), 'infer mode only'),
                         (dict(plain=True, modes=['infer', 'train']), 'infer mode only')):
        with pytest.raises(ValueError, match=message):
            bm.model_cases(TOY, ['official'], [(32, 32)], **bad)
    plain, _ = bm.build_case_model(cases[2], 'cpu')
    fused, _ = bm.build_case_model(cases[-1], 'cpu')
    built, _ = bm.build_case_model(cases[0], 'cpu')
    assert count_batchnorms(built) > 0 and count_batchnorms(fused) == 0
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in fused.parameters() if p.dim() == 4)
    lean = [m.lean_inference for m in built.modules() if hasattr(m, 'lean_inference')]
    assert lean and all(lean)
    assert not any(m.lean_inference for m in plain.modules() if hasattr(m, 'lean_inference'))
    assert not fused.training and not built.training


def test_model_cases_run_on_the_toy_config():
    shallow = {'model.backbone.depths': (1, 1)}
    cases = (bm.model_cases(TOY, ['lrf_dyn'], [(32, 32)], cfg_options=shallow,
                            options=['fuse_conv_bn'])
             + bm.model_cases(TOY, ['official:fft', 'lrf_dyn:stream'], [(32, 32)], [2],
                              ['train'], cfg_options=shallow))
    res = [bm.run_case(c, 'cpu', 0, 1) for c in cases]
    assert [r.get('batchnorms', -1) > 0 for r in res] == [True, False, False, True]
    assert 'only LRFDyn variants' in res[2]['error']
    for r in res[:2] + res[3:]:
        assert 'error' not in r, r
        assert r['time_ms'] > 0 and r['weights_mib'] > 0
    assert res[3]['inputs_mib'] == 2 * 3 * 32 * 32 * 4 / MIB
    assert bm.group_key(res[3]).split()[:5] == ['model', 'train', 'float32',
                                               os.path.basename(TOY), 'loss']


def test_predict_call_is_what_a_user_runs():
    """The predict call gives mmseg's label map at the image size (lean: no full-resolution
    logits); the tensor call the head's logits at its stride."""
    case = bm.model_cases(TOY, ['lrf_dyn'], [(32, 48)], calls=['tensor', 'predict'],
                          cfg_options={'model.backbone.depths': (1, 1)})[0]
    model, cfg = bm.build_case_model(case, 'cpu')
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 48)
    calibrate_batchnorms(model, images)  # neurons fire: varied labels from random weights
    with torch.no_grad():
        samples = bm.MODEL_CALLS['predict'](model, images)
        logits = bm.MODEL_CALLS['tensor'](model, images)
    assert logits.shape[:2] == (2, cfg.model.decode_head.num_classes)
    assert logits.shape[2] < 32 and logits.shape[3] < 48
    assert [s.pred_sem_seg.shape for s in samples] == [(32, 48)] * 2
    assert 'seg_logits' not in samples[0]
    expected = resize(logits, size=(32, 48), mode='bilinear', align_corners=False).argmax(1)
    assert len(expected.unique()) > 1  # a varied label map: the comparison can fail
    assert torch.equal(torch.stack([s.pred_sem_seg.data[0] for s in samples]), expected)


def test_compiled_model_case(eager_compile):
    """The compiled predict call: its first call (the compilation) reported apart. (Dynamo's
    eager backend, one block per stage.)"""
    import torch._dynamo
    torch._dynamo.reset()
    (case,) = bm.model_cases(TOY, ['lrf_dyn'], [(32, 32)], options=['compile'],
                             cfg_options={'model.backbone.depths': (1, 1)})[1:]
    res = bm.run_case(case, 'cpu', 0, 1)
    assert 'error' not in res, res
    assert res['compile_s'] > 0 and res['time_ms'] > 0
    # compile_segmentor's: the network the lean predict path runs, and the plain path's
    assert [fn.__name__ for fn in eager_compile] == ['encode_decode', '_forward']


def test_benchmark_cli(tmp_path, monkeypatch, capsys):
    """One run on the toy config (the subprocesses replaced by in-process calls): markdown rows,
    same-run ratios, JSON and PNG; and the argument errors."""
    tool = load_tool('analysis/benchmark')
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(['--help'])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ('--fuse-conv-bn', '--channels-last', '--compile',
                                          '--plain-inference', '--cfg-options', '--timeout'))
    monkeypatch.setattr(bm, '_in_subprocess', lambda job, env, timeout_s: bm.run_case(
        job['case'], job['device'], job['warmup'], job['repeats']))
    out = str(tmp_path / 'b')
    report = tool.main(['--config', TOY, '--variants', 'official', 'lrf_dyn', '--resolution',
                        '32x32', '--repeats', '1', '--plain-inference', '--device', 'cpu',
                        '--cfg-options', 'model.backbone.depths=(1,1)', '--out', out])
    printed = capsys.readouterr().out.splitlines()
    rows = [line for line in printed if line.startswith('| model |')]
    assert len(rows) == 8 and all(line.count('|') == 7 for line in rows)
    assert sum(line.startswith('| model infer') and 'lrf_dyn / official' in line
               for line in printed) == 4
    with open(out + '.json') as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(report))
    assert data['meta']['command'].startswith('benchmark.py --config')
    results = data['results']
    assert [r['lean'] for r in results] == [True] * 4 + [False] * 4
    assert [r['call'] for r in results] == ['predict'] * 2 + ['tensor'] * 2 + [
        'predict'] * 2 + ['tensor'] * 2  # by default both, predict first
    for ratio in data['ratios']:
        ref, num = [r for r in results if bm.group_key(r) == ratio['group']]
        assert ratio['peak_ratio'] == (num['peak_mib'] / ref['peak_mib']
                                       if ref['peak_mib'] else None)
        assert ratio['time_ratio'] == num['time_ms'] / ref['time_ms']
    with open(out + '.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(SystemExit, match='whole models given by --config'):
        tool.main(['--fuse-conv-bn'])
    for argv, message in ((['--variants', 'nope'], 'variant must be one of'),
                          (['--resolution', '64'], 'HxW'), (['--dtypes', 'int8'], 'choice')):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        assert message in capsys.readouterr().err
