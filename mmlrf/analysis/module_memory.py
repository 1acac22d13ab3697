"""Where an inference pass's memory peak comes from, per leaf module.

Every leaf module (no children: ``Conv2d``, ``BatchNorm2d``, ``MultiSpike``, ...) is measured
around each of its forward calls: the memory in use when the call starts (``live_mib``: what
earlier modules left alive) and the peak during the call above it (``transient_mib``: its
output, its temporaries and, on CUDA, library workspaces such as cuDNN's, which the caching
allocator hands out like tensors). ``live_mib + transient_mib`` is the memory in use at the
call's peak; the largest over all calls is where the pass peaks, unless the whole pass peaks
higher, between leaf calls (functional code in the parents: residual adds, resizes), which
:func:`leaf_memory` reports as ``outside_leaves``.

CUDA: the caching allocator's counters (``memory_allocated``, ``max_memory_allocated`` after
``reset_peak_memory_stats``), exact. CPU: the process's resident set (``VmRSS``) and its peak
(``VmHWM`` after ``/proc/self/clear_refs``), meaningful only in a process started with
:data:`mmlrf.analysis.memory.CPU_MEASURE_ENV` (see :mod:`mmlrf.analysis.memory`) and accurate to a
fraction of a MiB (the kernel batches RSS counts per thread).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .memory import MIB, PeakMeter, release_garbage


def leaf_memory(model: nn.Module, run: Callable[[], Any], device: torch.device,
                warmup: int = 1, top: int = 20) -> dict:
    """Measure one call of ``run()`` (an inference pass of ``model``) per leaf module.

    Args:
        model (nn.Module): the model ``run`` runs (its leaf modules are measured).
        run (Callable): one pass, run without autograd; called ``warmup`` times first (lazy
            set-up, caches, autotuning), then once measured.
        device (torch.device): where it runs.
        warmup (int): unmeasured passes first (>= 0).
        top (int): rows to return, highest ``peak_mib`` first (>= 1).

    Returns:
        dict: ``pass_peak_mib`` (the whole pass, above the memory in use before it),
        ``leaf_peak_mib`` (the highest leaf-call peak, same base), ``outside_leaves`` (True when
        the pass peaks between leaf calls: ``pass_peak_mib`` exceeds ``leaf_peak_mib`` by more
        than 1 MiB), ``leaf_calls`` and ``modules``: per leaf module (qualified name), ``type``,
        ``calls`` and, at its highest call, ``live_mib``, ``transient_mib`` and ``peak_mib``
        (their sum), all above the memory in use before the pass.

    Raises:
        ValueError: for ``warmup`` < 0 or ``top`` < 1.
    """
    if warmup < 0 or top < 1:
        raise ValueError(f'warmup must be >= 0 and top >= 1, got {warmup} and {top}')
    meter = PeakMeter(device)
    rows: dict[str, dict] = {}
    entry: list[int] = []

    def enter(module: nn.Module, args: Any) -> None:
        entry.append(meter.window())

    def leave(name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            live = entry.pop()
            transient = meter.peak() - live
            row = rows.setdefault(name, dict(type=type(module).__name__, calls=0,
                                             live=0, transient=0))
            row['calls'] += 1
            if live + transient > row['live'] + row['transient']:
                row.update(live=live, transient=transient)
        return hook

    with torch.no_grad():
        for _ in range(warmup):
            run()
        release_garbage(device)
        handles = []
        for name, module in model.named_modules():
            if next(module.children(), None) is None:
                handles += [module.register_forward_pre_hook(enter),
                            module.register_forward_hook(leave(name))]
        try:
            base = meter.start()
            out = run()
            peak = meter.pass_peak()
            del out
        finally:
            for handle in handles:
                handle.remove()
    modules = [dict(name=name, type=r['type'], calls=r['calls'],
                    live_mib=(r['live'] - base) / MIB, transient_mib=r['transient'] / MIB,
                    peak_mib=(r['live'] + r['transient'] - base) / MIB)
               for name, r in rows.items()]
    modules.sort(key=lambda r: -r['peak_mib'])
    leaf_peak = max((r['peak_mib'] for r in modules), default=0.0)
    pass_mib = (peak - base) / MIB
    return dict(pass_peak_mib=pass_mib, leaf_peak_mib=leaf_peak,
                outside_leaves=pass_mib > leaf_peak + 1.0,
                leaf_calls=sum(r['calls'] for r in modules), modules=modules[:top])


def format_leaf_memory(report: dict) -> str:
    """The report of :func:`leaf_memory` as a table."""
    lines = [f"pass peak {report['pass_peak_mib']:.1f} MiB, highest leaf call "
             f"{report['leaf_peak_mib']:.1f} MiB"
             + (' (the pass peaks between leaf calls)' if report['outside_leaves'] else ''),
             f"{'module':<48} {'type':<20} {'calls':>5} {'live':>9} {'transient':>10} "
             f"{'peak MiB':>9}"]
    for r in report['modules']:
        lines.append(f"{r['name'][-48:]:<48} {r['type'][:20]:<20} {r['calls']:>5} "
                     f"{r['live_mib']:>9.1f} {r['transient_mib']:>10.1f} {r['peak_mib']:>9.1f}")
    return '\n'.join(lines)
