"""Where a forward pass spends its time: per leaf-module type and per operator (torch.profiler).

Every leaf module (no children: ``Conv2d``, ``BatchNorm2d``, ``MultiSpike``,
``DendriticDynamics``, ...) runs inside a profiler range named ``module::<class name>``, so the
report attributes device time (CUDA) or CPU time (CPU) to module types. Work outside every leaf
module (residual adds, attention products, resizes written as functions) is the ``outside leaf
modules`` row: the profiled wall time minus the module rows (on a GPU this includes the idle
time between kernels, e.g. launch overhead). Operators are listed by self time, with their calls
per pass (on a GPU, many small calls mean launch overhead).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn
from torch.autograd.profiler import record_function

RANGE_PREFIX = 'module::'


def _leaf_ranges(model: nn.Module) -> list:
    """Hooks opening a ``module::<class>`` profiler range around every leaf module's forward."""
    stack: list = []

    def enter(module: nn.Module, args: Any) -> None:
        rf = record_function(RANGE_PREFIX + type(module).__name__)
        rf.__enter__()
        stack.append(rf)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop().__exit__(None, None, None)

    handles = []
    for module in model.modules():
        if next(module.children(), None) is None:
            handles += [module.register_forward_pre_hook(enter),
                        module.register_forward_hook(leave)]
    return handles


def _times_us(event: Any, cuda: bool) -> tuple[float, float]:
    """(total, self) time of an averaged profiler event, device time on CUDA, else CPU time."""
    if cuda:
        total = getattr(event, 'device_time_total', None)
        if total is None:  # torch < 2.4 names
            return event.cuda_time_total, event.self_cuda_time_total
        return total, event.self_device_time_total
    return event.cpu_time_total, event.self_cpu_time_total


def profile_forward(model: nn.Module, forward: Callable[[], Any], device: torch.device,
                    iterations: int = 3, warmup: int = 1, top: int = 25) -> dict:
    """Profile ``forward()`` (a no-grad inference pass of ``model``).

    Args:
        model (nn.Module): the model ``forward`` runs (its leaf modules get ranges).
        forward (Callable): one pass; called ``warmup`` times, then ``iterations`` times timed
            without the profiler and ``iterations`` times under it.
        device (torch.device): where it runs ('cuda' reports device time, else CPU time).
        iterations (int): passes per measurement (>= 1).
        warmup (int): passes before measuring.
        top (int): operators to list.

    Returns:
        dict: ``wall_ms`` (per pass, without the profiler), ``profiled_ms`` (per pass, under
        it), ``basis`` ('device' | 'cpu'), ``modules`` (per leaf-module type: ``ms``,
        ``share`` of ``profiled_ms``, ``calls`` per pass), ``outside_ms``, ``ops`` (top
        operators by self time: ``ms``, ``share``, ``calls``), ``op_calls`` (operator calls
        per pass).
    """
    if iterations < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    cuda = device.type == 'cuda'

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.no_grad():
        for _ in range(warmup):
            forward()
        sync()
        start = time.perf_counter()
        for _ in range(iterations):
            forward()
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / iterations
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        handles = _leaf_ranges(model)
        try:
            with torch.profiler.profile(activities=activities) as prof:
                start = time.perf_counter()
                for _ in range(iterations):
                    forward()
                sync()
                profiled_ms = (time.perf_counter() - start) * 1e3 / iterations
        finally:
            for handle in handles:
                handle.remove()
    modules, ops, op_calls = [], [], 0
    for event in prof.key_averages():
        total, self_time = _times_us(event, cuda)
        if event.key.startswith(RANGE_PREFIX):
            modules.append(dict(name=event.key[len(RANGE_PREFIX):],
                                ms=total / 1e3 / iterations,
                                calls=event.count / iterations))
        elif event.key.startswith('aten::'):
            op_calls += event.count
            ops.append(dict(name=event.key, ms=self_time / 1e3 / iterations,
                            calls=event.count / iterations))
    modules.sort(key=lambda r: -r['ms'])
    ops.sort(key=lambda r: -r['ms'])
    for row in modules + ops:
        row['share'] = row['ms'] / profiled_ms
    outside = max(profiled_ms - sum(r['ms'] for r in modules), 0.0)
    return dict(wall_ms=wall_ms, profiled_ms=profiled_ms, basis='device' if cuda else 'cpu',
                modules=modules, outside_ms=outside, ops=[r for r in ops[:top] if r['ms'] > 0],
                op_calls=op_calls / iterations)


def format_profile(report: dict) -> str:
    """The report as two text tables (modules, then operators)."""
    lines = [f"wall {report['wall_ms']:.2f} ms per pass ({report['profiled_ms']:.2f} ms under "
             f"the profiler, the base of the shares); times are {report['basis']} time; "
             f"{report['op_calls']:.0f} aten calls per pass",
             f"{'leaf module':<28} {'ms/pass':>9} {'share':>7} {'calls':>7}"]
    rows = report['modules'] + [dict(name='outside leaf modules', ms=report['outside_ms'],
                                     share=report['outside_ms'] / report['profiled_ms'],
                                     calls=0)]
    lines += [f"{r['name']:<28} {r['ms']:9.2f} {r['share']:7.1%} {r['calls']:7.0f}"
              for r in rows]
    lines.append(f"{'operator (self time)':<40} {'ms/pass':>9} {'share':>7} {'calls':>7}")
    lines += [f"{r['name']:<40} {r['ms']:9.2f} {r['share']:7.1%} {r['calls']:7.0f}"
              for r in report['ops']]
    return '\n'.join(lines)
