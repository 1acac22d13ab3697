"""Attention ablation: train every variant of a segmentation config for several seeds (mmengine's
Runner, in this process), evaluate each trained model's mIoU, energy and locality, and tabulate
them per variant (mean ± sample std over seeds).

The grid folder ``out`` holds one mmengine work dir per run, ``runs/<variant>/seed<s>/``, and in
it ``result.json``, written last and atomically: a run is finished when its result records the
grid's settings. A rerun of the grid skips finished runs and deletes and redoes every other run
(killed, failed, or made with other settings). After each run ``ablation.json`` (every result),
``ablation.md`` (the table) and ``ablation.png`` (mIoU per variant and training loss) are
rewritten from the finished runs, so a half-done grid is tabulated as far as it went.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
import shutil
import time

import numpy as np
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from torch import nn

from .energy import measure_energy
from .loading import ATTN_KEY, image_batches
from .locality import STATS, analyse_model
from .report import new_figure, run_meta, save_figure, write_json

#: ``model.backbone.attn`` of each variant (SDT-V3).
VARIANTS: dict[str, dict] = {
    'sdsa': dict(type='SSA', order='qk'),           # SDT-V3's official attention, (Q Kᵀ) V
    'ssa_kv': dict(type='SSA', order='kv'),         # Q (Kᵀ V)
    'causal_ssa': dict(type='CausalSSA'),           # masked to keys before the query
    'lrf_ssa': dict(type='LRFSSA', order='qk'),     # SDSA + local receptive field on V
    'lrf_dyn': dict(type='LRFDyn'),                 # the paper's model: q ⊙ (Dyn(k ⊙ v) + LRF)
    'lrf_dyn_no_lrf': dict(type='LRFDyn', lrf=False),
    'lrf_dyn_qk_free': dict(type='LRFDyn', token='v', query_gate=False),
    'lrf_dyn_bidir': dict(type='LRFDyn', bidirectional=True),
}
METRICS = ('mIoU', 'mAcc', 'aAcc')


def run_config(config: str, attn: dict, seed: int, iters: int, work_dir: str,
               cfg_options: dict | None = None) -> Config:
    """``config`` (``cfg_options`` merged) with ``attn`` at ``model.backbone.attn``, the seed,
    and its schedule compressed to ``iters`` steps: the scheduler boundaries scaled by
    ``iters / max_iters``, one evaluation and one checkpoint at the end."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(dict(cfg_options or {}, **{ATTN_KEY: dict(attn, _delete_=True)}))
    scale = iters / cfg.train_cfg.max_iters
    schedulers = cfg.get('param_scheduler') or []
    for s in schedulers if isinstance(schedulers, list) else [schedulers]:
        s['begin'] = int(s.get('begin', 0) * scale)
        s['end'] = max(round(s['end'] * scale), s['begin'] + 1)
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    cfg.default_hooks.checkpoint.interval = iters
    cfg.update(work_dir=work_dir, randomness=dict(seed=seed), launcher='none',
               experiment_name=f'{osp.basename(work_dir)}-{time.time_ns()}')
    return cfg


def loss_curve(runner: Runner, points: int = 20) -> list[list[float]]:
    """``[[step, mean training loss]]`` over ``points`` equal windows of the run."""
    loss = runner.message_hub.get_scalar('train/loss').data[0]
    return [[int(w[-1]) + 1, float(loss[w].mean())]
            for w in np.array_split(np.arange(len(loss)), min(points, len(loss)))]


def measure(model: nn.Module, cfg: Config, num_images: int) -> dict:
    """Energy totals over ``num_images`` validation images and locality (the mean and each
    token-mixer call's :data:`STATS`) on the first one."""
    batches, source = image_batches(model, cfg, num_images, num_images)
    images = torch.cat(list(batches))
    energy = measure_energy(model, [images], forward=lambda m, x: m(x, mode='tensor'))
    loc = analyse_model(model, images, erf_images=1)
    layers = [{k: r[k] for k in ('name', 'grid', 'radius', *STATS, 'skipped') if k in r}
              for r in loc['layers']]
    return dict(images_source=source, energy=energy['totals'],
                locality=dict(mean=loc['mean'], layers=layers))


def train_one(settings: dict, work_dir: str, num_images: int) -> dict:
    """Train and evaluate one run of the grid (``settings``: config, variant, attn, seed, iters,
    cfg_options) in ``work_dir``; its result."""
    cfg = run_config(settings['config'], settings['attn'], settings['seed'], settings['iters'],
                     work_dir, settings['cfg_options'])
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    hub = runner.message_hub
    result = dict(settings=settings, train_wall_s=wall,
                  metrics={m: float(hub.get_scalar(f'val/{m}').current()) for m in METRICS},
                  params=sum(p.numel() for p in runner.model.parameters()),
                  loss_curve=loss_curve(runner))
    result.update(measure(runner.model, cfg, num_images))
    return result


def run_grid(config: str, variants: list[str], seeds: list[int], iters: int, out: str,
             cfg_options: dict | None = None, num_images: int = 8, log=print,
             command: str = '') -> dict:
    """Run (or finish) the grid ``variants`` × ``seeds`` of ``config`` in ``out`` (the module
    docstring says how a rerun resumes) and write its tables; the report of
    :func:`summarise` with ``meta`` (:func:`~.report.run_meta` of ``command``)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f'variants must be among {sorted(VARIANTS)}, got {unknown}')
    results, meta = [], run_meta(command)
    for seed in seeds:  # seed-major: a grid cut short has every variant on its first seeds
        for variant in variants:
            settings = dict(config=config, variant=variant, attn=VARIANTS[variant], seed=seed,
                            iters=iters, cfg_options=copy.deepcopy(cfg_options or {}))
            settings = json.loads(json.dumps(settings))  # as it reads back from the file
            run_dir = osp.join(out, 'runs', variant, f'seed{seed}')
            path = osp.join(run_dir, 'result.json')
            if osp.isfile(path):
                with open(path) as f:
                    result = json.load(f)
                if result.get('settings') == settings:
                    log(f'{variant} seed {seed}: finished, skipped')
                    results.append(result)
                    continue
            shutil.rmtree(run_dir, ignore_errors=True)
            log(f'{variant} seed {seed}: training {iters} steps in {run_dir}')
            result = train_one(settings, osp.abspath(run_dir), num_images)
            write_json(result, path + '.tmp')
            os.replace(path + '.tmp', path)
            results.append(result)
            log(f"{variant} seed {seed}: mIoU {result['metrics']['mIoU']:.2f}, "
                f"{result['train_wall_s']:.0f} s")
            write_tables(dict(summarise(results), meta=meta), out)
    report = dict(summarise(results), meta=meta)
    write_tables(report, out)
    return report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(results: list[dict]) -> dict:
    """``variants``: per variant (in grid order) its runs' mean and sample std of ``mIoU``,
    ``mAcc``, ``aAcc``, ``train_wall_s``, ``energy_mj``, ``firing_rate`` and the locality
    :data:`STATS` (mean over layers), with ``steps``, ``params``, ``seeds``, ``attn``;
    ``results``: every run."""
    rows = {}
    for r in results:
        rows.setdefault(r['settings']['variant'], []).append(r)
    variants = []
    for name, runs in rows.items():
        values = {m: [r['metrics'][m] for r in runs] for m in METRICS}
        values['train_wall_s'] = [r['train_wall_s'] for r in runs]
        values['energy_mj'] = [r['energy']['energy_mj'] for r in runs]
        values['firing_rate'] = [r['energy']['mean_firing_rate'] for r in runs]
        for key in STATS:
            values[key] = [r['locality']['mean'][key] for r in runs if r['locality']['mean']]
        variants.append(dict(variant=name, attn=runs[0]['settings']['attn'],
                             seeds=[r['settings']['seed'] for r in runs],
                             steps=runs[0]['settings']['iters'], params=runs[0]['params'],
                             **{k: _mean_std(v) for k, v in values.items() if v}))
    return dict(variants=variants, results=results)


def format_markdown(report: dict) -> str:
    """The table: one row per variant, mean ± std over its seeds."""
    def pm(row: dict, key: str, fmt: str) -> str:
        return f'{row[key][0]:{fmt}} ± {row[key][1]:{fmt}}' if key in row else '-'
    lines = ['| variant | mIoU (%) | seeds | steps | train wall (s) | parameters | energy (µJ) '
             '| firing rate | local mass | entropy |', '|' + '---|' * 10]
    for r in report['variants']:
        lines.append(
            f"| {r['variant']} | {pm(r, 'mIoU', '.2f')} | {len(r['seeds'])} | {r['steps']} | "
            f"{r['train_wall_s'][0]:.0f} | {r['params']:,} | "
            f"{r['energy_mj'][0] * 1e3:.2f} | {r['firing_rate'][0]:.3f} | "
            f"{pm(r, 'local_mass', '.3f')} | {pm(r, 'entropy', '.3f')} |")
    return '\n'.join(lines) + '\n'


def write_tables(report: dict, out: str) -> None:
    """``out/ablation.json``, ``ablation.md`` and ``ablation.png`` (mIoU per variant with each
    seed's value; mean training loss per variant)."""
    write_json(report, osp.join(out, 'ablation.json'))
    with open(osp.join(out, 'ablation.md'), 'w') as f:
        f.write(format_markdown(report))
    fig, (bars, curves) = new_figure(1, 2, size=(12, 4.5))
    for i, row in enumerate(report['variants']):
        bars.bar(i, row['mIoU'][0], yerr=row['mIoU'][1], color=f'C{i}', alpha=0.6, capsize=3)
        runs = [r for r in report['results'] if r['settings']['variant'] == row['variant']]
        bars.plot([i] * len(runs), [r['metrics']['mIoU'] for r in runs], 'k.')
        curve = np.mean([r['loss_curve'] for r in runs], axis=0)
        curves.plot(curve[:, 0], curve[:, 1], color=f'C{i}', label=row['variant'])
    names = [row['variant'] for row in report['variants']]
    bars.set_xticks(range(len(names)), names, rotation=30, ha='right')
    bars.set(ylabel='mIoU (%)', title='mIoU: mean ± std, dots: seeds')
    curves.set(xlabel='step', ylabel='training loss (mean over seeds)')
    curves.legend(fontsize=7)
    save_figure(fig, osp.join(out, 'ablation.png'))
