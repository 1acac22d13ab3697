"""Memory and speed of token mixers (operator level) and of whole segmentors (model level).

A *case* is a JSON-able dict: :func:`run_case` measures one in this process, :func:`run_cases`
a list (on the CPU in fresh processes, :mod:`.memory`), :func:`compute_ratios` compares each
variant with the reference variant of the same run, shapes and settings. Every case has
``kind`` (:data:`KINDS`), ``variant``, ``mode`` ('infer': one call without autograd; 'train':
forward and backward), ``dtype`` (:data:`DTYPES`) and ``batch``.

* ``'operator'``: the token mixer of ``variant`` (:data:`~.loading.VARIANTS`) alone on random
  multi-spike Q, K, X ``[T, B, C, H, W]`` and V ``[T, B, v_ratio·C, H, W]``; fields
  ``n_tokens``, ``hw`` ([H, W], H·W = n_tokens), ``channels`` (C), ``heads``, ``v_ratio``, ``T``.
* ``'floor'``: ``V.clone()`` of those inputs: its peak must read V's size, the check that the
  memory method sees real tensor bytes.
* ``'model'``: the segmentor of ``config`` (``cfg_options`` merged, the attention dict at
  ``attn_key`` replaced by ``variant``) on random images of ``resolution`` [H, W]. Inference
  measures ``call`` (:data:`MODEL_CALLS`), training the loss on random labels and its backward.
  Inference only: ``options`` (:data:`~mmlrf.inference.options.INFERENCE_OPTIONS` dests,
  applied in the table's order) and ``lean`` (False: lean inference off).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor, nn

from ..inference import set_lean_inference
from ..inference.options import INFERENCE_OPTIONS
from ..inference.transforms import count_batchnorms
from ..models.mixers import set_dynamics_mode
from .loading import ATTN_KEY, build_model, parse_variant, random_label_loss
from .memory import CPU_MEASURE_ENV, MIB, measure
from .report import new_figure, run_meta, save_figure, write_json

KINDS = ('operator', 'floor', 'model')
MODES = ('infer', 'train')
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
REFERENCE = 'official'


def _predict(model: nn.Module, images: Tensor) -> Any:
    """mmseg's ``predict`` of preprocessed ``[B, 3, H, W]`` images of that original size."""
    meta = dict(img_shape=images.shape[2:], ori_shape=images.shape[2:],
                pad_shape=images.shape[2:])
    return model.predict(images, [SegDataSample(metainfo=meta) for _ in images])


#: What a model-level inference case measures, ``fn(model, images)``: ``'predict'``, what a
#: user's inference runs (``inference_model``, ``tools/test.py``: the logits resized to the image
#: and the argmax); ``'tensor'``, the decode head's logits at its own stride.
MODEL_CALLS: dict[str, Callable[[nn.Module, Tensor], Any]] = {
    'predict': _predict,
    'tensor': lambda model, images: model(images, mode='tensor'),
}


def grid_hw(n_tokens: int) -> tuple[int, int]:
    """A token grid H×W = N, H the largest divisor of N not above √N (8192 → 64×128)."""
    h = max(d for d in range(1, math.isqrt(n_tokens) + 1) if n_tokens % d == 0)
    return h, n_tokens // h


def _mib(numel: int, dtype: torch.dtype) -> float:
    return numel * dtype.itemsize / MIB


def _param_mib(module: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / MIB


def build_mixer(variant: str, channels: int, heads: int, v_ratio: int) -> nn.Module:
    """The token mixer of ``variant`` for Q, K of ``channels`` and V of ``v_ratio``·C."""
    cfg, mode = parse_variant(variant)
    mixer = MODELS.build(dict(cfg, num_heads=heads, qk_channels=channels,
                              v_channels=channels * v_ratio))
    if mode:
        set_dynamics_mode(mixer, mode)
    return mixer


def _operator_work(case: dict, device: torch.device) -> tuple[Callable[[], Any], dict]:
    dtype, train = DTYPES[case['dtype']], case['mode'] == 'train'
    t, b, c, (h, w) = case['T'], case['batch'], case['channels'], case['hw']
    gen = torch.Generator().manual_seed(0)
    # random multi-spike values {0, 1/4, ..., 1}, what SDT-V3's neurons emit
    q, k, x, v = ((torch.randint(0, 5, shape, generator=gen).to(dtype) / 4).to(device)
                  for shape in [(t, b, c, h, w)] * 3 + [(t, b, c * case['v_ratio'], h, w)])
    info = dict(inputs_mib=_mib(3 * q.numel() + v.numel(), dtype),
                output_mib=_mib(v.numel(), dtype), weights_mib=0.0)
    if case['kind'] == 'floor':
        return v.clone, info
    mixer = build_mixer(case['variant'], c, case['heads'], case['v_ratio'])
    mixer = mixer.to(device, dtype).train(train)
    # the state an SSA-type mixer forms: the N×N map per head (T·B·heads·N²) or the d×dv
    # state per head (T·B·heads·d·dv = T·B·C·Cv/heads)
    state = {'qk': ('attention_map', t * b * mixer.num_heads * (h * w) ** 2),
             'kv': ('kv_state', t * b * c * v.shape[2] // mixer.num_heads)}
    term, numel = state.get(getattr(mixer, 'order', None), (None, 0))
    info.update(weights_mib=_param_mib(mixer), analytic_mib={term: _mib(numel, dtype)} if term
                else {}, output_mib=_mib(t * b * mixer.out_channels * h * w, dtype))
    args = [a if name in mixer.requires else None for name, a in zip('qkvx', (q, k, v, x))]
    if not train:
        return torch.no_grad()(lambda: mixer(*args)), info
    inputs = [a.requires_grad_(True) for a in args if a is not None]

    def step() -> None:
        mixer.zero_grad(set_to_none=True)
        for a in inputs:
            a.grad = None
        mixer(*args).float().square().mean().backward()
    return step, info


def build_case_model(case: dict, device: str | torch.device) -> tuple[nn.Module, Config]:
    """The segmentor of a model case on ``device`` in the case's mode, lean inference off if
    ``lean`` is False, its ``options`` applied. Returns (model, mmengine Config)."""
    model, cfg = build_model(case['config'], case['variant'], case.get('cfg_options'),
                             case.get('attn_key', ATTN_KEY), device=device)
    model.train(case['mode'] == 'train')
    if not case.get('lean', True):
        set_lean_inference(model, False)
    for option in INFERENCE_OPTIONS:
        if option.dest in case.get('options', ()):
            option.apply(model)
    return model, cfg


def model_step(model: nn.Module, cfg: Config, case: dict,
               device: torch.device) -> Callable[[], Any]:
    """One iteration of a model case on seeded random images ``[batch, 3, H, W]`` (autocast
    to ``dtype`` below float32)."""
    dtype, (h, w) = DTYPES[case['dtype']], case['resolution']
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(case['batch'], 3, h, w, generator=gen).to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if case['mode'] == 'train':
        loss = random_label_loss(model, cfg, images, gen)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast:
                out = loss()
            out.backward()
        return step
    call = MODEL_CALLS[case.get('call', 'predict')]

    def infer() -> Any:
        with torch.no_grad(), autocast:
            return call(model, images)
    return infer


def _model_work(case: dict, device: torch.device) -> tuple[Callable[[], Any], dict]:
    model, cfg = build_case_model(case, device)
    run = model_step(model, cfg, case, device)
    info = dict(weights_mib=_param_mib(model), batchnorms=count_batchnorms(model),
                inputs_mib=_mib(case['batch'] * 3 * math.prod(case['resolution']), torch.float32))
    if 'compile' in case.get('options', ()):  # the first call compiles
        start = time.perf_counter()
        run()
        info['compile_s'] = time.perf_counter() - start
    return run, info


WORK = {'operator': _operator_work, 'floor': _operator_work, 'model': _model_work}


def run_case(case: dict, device: str | torch.device = 'cpu', warmup: int = 1,
             repeats: int = 3) -> dict:
    """Measure one case in this process: the case with its kind's attribution fields
    (``weights_mib``, ``inputs_mib``, ``output_mib``, ``analytic_mib``, ``batchnorms``, ...),
    :func:`~.memory.measure`'s, ``images_per_s`` and ``peak_over_output``; or ``error``."""
    device = torch.device(device)
    if case.get('kind') not in KINDS or case.get('mode') not in MODES:
        raise ValueError(f'a case needs a kind in {KINDS} and a mode in {MODES}, got {case}')
    try:
        fn, info = WORK[case['kind']](case, device)
        result = dict(case, **info, **measure(fn, device, warmup, repeats))
    except Exception as e:  # noqa: BLE001  (recorded in the report; the other cases go on)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        return dict(case, error=f'{type(e).__name__}: {str(e)[:300]}')
    if result['time_ms']:
        result['images_per_s'] = case['batch'] / (result['time_ms'] / 1e3)
    if result.get('output_mib'):
        result['peak_over_output'] = result['peak_mib'] / result['output_mib']
    return result


def _worker() -> None:
    """Subprocess entry: prints ``RESULT <json>`` of :func:`run_case` of the job on stdin."""
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job.pop('threads'))
    print('RESULT ' + json.dumps(run_case(**job)))


def _in_subprocess(job: dict, env: dict[str, str], timeout_s: float | None) -> dict:
    """:func:`_worker` on ``job`` in a fresh Python process with ``env`` added."""
    try:
        proc = subprocess.run(
            [sys.executable, '-c', 'import mmlrf.analysis.benchmark as b; b._worker()'],
            input=json.dumps(job), capture_output=True, text=True, env={**os.environ, **env},
            timeout=timeout_s)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
        if lines:
            return json.loads(lines[-1][len('RESULT '):])
        error = f'worker exit {proc.returncode}: {proc.stderr.strip()[-300:]}'
    except subprocess.TimeoutExpired:
        error = f'timeout after {timeout_s} s'
    return dict(job['case'], error=error)


def run_cases(cases: list[dict], device: str = 'cpu', warmup: int = 1, repeats: int = 3,
              isolate: bool | None = None, timeout_s: float | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    """Measure every case, logging its :func:`format_row`. With ``isolate`` (default: on the
    CPU; CUDA's allocator counts exactly in one process) each peak comes from a fresh process
    started with :data:`~.memory.CPU_MEASURE_ENV` and each time from a second fresh process
    with the default allocator; ``timeout_s`` bounds each process (else the case errs)."""
    isolate = torch.device(device).type == 'cpu' if isolate is None else isolate
    results = []
    for case in cases:
        if isolate:
            job = dict(case=case, device=device, warmup=warmup, threads=torch.get_num_threads())
            res = _in_subprocess(dict(job, repeats=0), CPU_MEASURE_ENV, timeout_s)
            if 'error' not in res and repeats > 0:
                timed = _in_subprocess(dict(job, repeats=repeats), {}, timeout_s)
                res.update({k: timed[k] for k in ('error', 'time_ms', 'times_ms',
                                                  'images_per_s') if k in timed})
        else:
            res = run_case(case, device, warmup, repeats)
        results.append(res)
        log(format_row(res))
    return results


def group_key(result: dict) -> str:
    """All that identifies a measurement but its variant (a floor case goes with the operators
    of its shape)."""
    if result['kind'] == 'model':
        call = result.get('call', 'tensor') if result['mode'] == 'infer' else 'loss'
        shape = ' '.join([os.path.basename(result['config']), call,
                          'x'.join(map(str, [result['batch'], *result['resolution']])),
                          *result.get('options', ())]
                         + ['plain-inference'] * (not result.get('lean', True)))
    else:
        shape = (f"N={result['n_tokens']} C={result['channels']} heads={result['heads']} "
                 f"Cv={result['channels'] * result['v_ratio']} B={result['batch']} "
                 f"T={result['T']}")
    kind = 'operator' if result['kind'] == 'floor' else result['kind']
    return f"{kind} {result['mode']} {result['dtype']} {shape}"


def compute_ratios(results: list[dict], reference: str = REFERENCE) -> list[dict]:
    """``variant / reference`` ratios of peak memory and time in each :func:`group_key` group
    of one run's results (errors left out): ``group``, ``variant`` ('floor' for a floor case),
    ``reference``, ``peak_mib``, ``reference_peak_mib``, ``peak_ratio``, ``time_ms``,
    ``reference_time_ms``, ``time_ratio`` (None where the reference number is missing or 0)."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if 'error' not in r:
            groups.setdefault(group_key(r), []).append(r)
    ratios = []
    for key, rows in groups.items():
        ref = next((r for r in rows if r['variant'] == reference and r['kind'] != 'floor'), None)
        for r in [r for r in rows if r is not ref] if ref else []:
            p, p0, t, t0 = r['peak_mib'], ref['peak_mib'], r.get('time_ms'), ref.get('time_ms')
            ratios.append(dict(
                group=key, variant='floor' if r['kind'] == 'floor' else r['variant'],
                reference=reference, peak_mib=p, reference_peak_mib=p0, time_ms=t,
                reference_time_ms=t0, peak_ratio=p / p0 if p0 else None,
                time_ratio=t / t0 if t and t0 else None))
    return ratios


def operator_cases(variants: Sequence[str], n_tokens: Sequence[int], channels: int = 360,
                   heads: int = 8, v_ratio: int = 4, batches: Sequence[int] = (1,),
                   ts: Sequence[int] = (1,), modes: Sequence[str] = ('infer',),
                   dtypes: Sequence[str] = ('float32',), floor: bool = True) -> list[dict]:
    """Every combination of the operator sweep; with ``floor`` a floor case per inference
    shape."""
    cases = []
    for mode, dtype, n, b, t in itertools.product(modes, dtypes, n_tokens, batches, ts):
        shape = dict(mode=mode, dtype=dtype, n_tokens=n, hw=list(grid_hw(n)), channels=channels,
                     heads=heads, v_ratio=v_ratio, batch=b, T=t)
        cases += [dict(kind='operator', variant=v, **shape) for v in variants]
        cases += [dict(kind='floor', variant='floor', **shape)] * (floor and mode == 'infer')
    return cases


def model_cases(config: str, variants: Sequence[str | None],
                resolutions: Sequence[Sequence[int]], batches: Sequence[int] = (1,),
                modes: Sequence[str] = ('infer',), dtypes: Sequence[str] = ('float32',),
                cfg_options: dict | None = None, attn_key: str = ATTN_KEY,
                options: Sequence[str] = (), plain: bool = False,
                calls: Sequence[str] = ('predict',)) -> list[dict]:
    """Every combination of the model sweep, as the config builds it and, if ``options``
    (:data:`~mmlrf.inference.options.INFERENCE_OPTIONS` dests) are given, again with all of
    them; with ``plain`` each of those again with lean inference off; inference through each of
    ``calls`` (:data:`MODEL_CALLS`). ValueError for an unknown option or call, or for options
    or ``plain`` with 'train'."""
    known = [o.dest for o in INFERENCE_OPTIONS]
    if set(options) - set(known) or not calls or set(calls) - set(MODEL_CALLS):
        raise ValueError(f'unknown option in {list(options)} or call in {list(calls)}')
    if (options or plain) and 'train' in modes:
        raise ValueError('inference options and plain inference apply to the infer mode only, '
                         f'got modes={list(modes)}')
    chosen = [[]] + [[d for d in known if d in options]] * bool(options)
    return [dict(kind='model', variant=v, mode=mode, dtype=dtype, config=config,
                 resolution=list(res), batch=b, cfg_options=cfg_options or {},
                 attn_key=attn_key, call=call, options=opts, lean=lean)
            for opts, lean, mode, call, dtype, res, b, v in itertools.product(
                chosen, (True, False)[:1 + plain], modes, calls, dtypes, resolutions, batches,
                variants)
            if mode == 'infer' or call == calls[0]]


ROW_HEADER = '| kind | variant | group | peak MiB | time ms | img/s |\n|---|---|---|--:|--:|--:|'
RATIO_HEADER = '| group | variant / reference | peak ratio | time ratio |\n|---|---|--:|--:|'


def _num(value: float | None, fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def format_row(r: dict) -> str:
    """One result as a markdown table row under :data:`ROW_HEADER`."""
    name = f"| {r['kind']} | {r['variant']} | {group_key(r)} |"
    if 'error' in r:
        return f"{name} ERROR {r['error']} | | |"
    return (f"{name} {r['peak_mib']:.1f} | {_num(r.get('time_ms'), '.3f')} | "
            f"{_num(r.get('images_per_s'), '.2f')} |")


def format_ratio(r: dict) -> str:
    """One ratio as a markdown table row under :data:`RATIO_HEADER`."""
    return (f"| {r['group']} | {r['variant']} / {r['reference']} | {_num(r['peak_ratio'], '.3f')}"
            f" ({r['peak_mib']:.1f} / {r['reference_peak_mib']:.1f} MiB) | "
            f"{_num(r['time_ratio'], '.3f')} |")


def plot_results(results: list[dict], path: str, reference: str = REFERENCE) -> None:
    """One PNG: peak memory and time per result as bars (log scale), the reference marked."""
    rows = [r for r in results if 'error' not in r]
    labels = [f"{r['variant']} | {group_key(r)}" for r in rows]
    fig, axes = new_figure(1, 2, size=(16, 1.5 + 0.35 * max(len(rows), 1)))
    for ax, field, label in ((axes[0], 'peak_mib', 'peak memory above the baseline (MiB)'),
                             (axes[1], 'time_ms', 'time per iteration (ms, median)')):
        ax.barh(range(len(rows)), [max(r.get(field) or 0.0, 1e-6) for r in rows],
                color=['C1' if r['variant'] == reference else 'C0' for r in rows])
        ax.set(xscale='log', xlabel=label)
        ax.set_yticks(range(len(rows)), labels if ax is axes[0] else [''] * len(rows),
                      fontsize=7)
        ax.invert_yaxis()
    save_figure(fig, path)


def run_benchmark(cases: list[dict], device: str, out_prefix: str, command: str,
                  warmup: int = 1, repeats: int = 3, timeout_s: float | None = None,
                  isolate: bool | None = None, log: Callable[[str], None] = print,
                  reference: str = REFERENCE) -> dict:
    """:func:`run_cases`, then log the ratios to ``reference``; write and return the report:
    ``meta`` (machine, versions, ``command``, ``memory_method``), ``results`` and ``ratios``
    (:func:`compute_ratios`) in ``<out_prefix>.json``, :func:`plot_results` in ``.png``."""
    log(ROW_HEADER)
    results = run_cases(cases, device, warmup, repeats, isolate, timeout_s, log)
    ratios = compute_ratios(results, reference)
    for line in [RATIO_HEADER] * bool(ratios) + [format_ratio(r) for r in ratios]:
        log(line)
    method = ('cuda: max_memory_allocated above memory_allocated before the call'
              if device.startswith('cuda') else
              'cpu: VmHWM (reset through /proc/self/clear_refs) above VmRSS before the call, a '
              'fresh process per case with MALLOC_MMAP_THRESHOLD_=65536; time in another')
    meta = dict(run_meta(command, device), memory_method=method)
    report = dict(meta=meta, results=results, ratios=ratios)
    write_json(report, out_prefix + '.json')
    plot_results(results, out_prefix + '.png', reference)
    return report
