"""Where an inference pass or a training step spends its time (torch.profiler): per leaf-module
type, per backward node, per operator and (CUDA) per kernel.

Every leaf module (``Conv2d``, ``MultiSpike``, ``DendriticDynamics``, ...) runs its forward in a
profiler range ``module::<class name>``, which attributes device time (CUDA) or CPU time to
module types; a training step's backward goes to autograd's nodes (``ConvolutionBackward0``,
mmlrf's functions, ...). The rest (residual adds, products and resizes written as functions;
on a GPU also the idle time between kernels) is the ``outside`` row: the profiled time minus
those rows. Operators are listed by self time with their calls per pass (on a GPU, many small
calls mean launch overhead).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn
from torch.autograd.profiler import record_function

RANGE_PREFIX = 'module::'
#: Prefix of the profiler events autograd records for each backward node it evaluates.
BACKWARD_PREFIX = 'autograd::engine::evaluate_function: '


def _leaf_ranges(model: nn.Module) -> list:
    """Hooks opening a ``module::<class>`` profiler range around every leaf module's forward."""
    stack: list = []

    def enter(module: nn.Module, args: Any) -> None:
        stack.append(record_function(RANGE_PREFIX + type(module).__name__).__enter__())

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop().__exit__(None, None, None)
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    return [h for m in leaves for h in (m.register_forward_pre_hook(enter),
                                        m.register_forward_hook(leave))]


def _times_us(event: Any, cuda: bool) -> tuple[float, float]:
    """(total, self) time of a profiler event, device time on CUDA, else CPU time."""
    if not cuda:
        return event.cpu_time_total, event.self_cpu_time_total
    if hasattr(event, 'device_time_total'):
        return event.device_time_total, event.self_device_time_total
    return event.cuda_time_total, event.self_cuda_time_total  # torch < 2.4


def _backward_rows(events: list, cuda: bool, iterations: int) -> list[dict]:
    """Time per backward-node type, outermost evaluations only (a backward that runs autograd
    again holds the nodes it evaluates)."""
    rows: dict[str, dict] = {}
    for event in events:
        if not event.name.startswith(BACKWARD_PREFIX):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(BACKWARD_PREFIX):
            parent = parent.cpu_parent
        if parent is not None:
            continue
        row = rows.setdefault(event.name[len(BACKWARD_PREFIX):], dict(ms=0.0, calls=0.0))
        row['ms'] += _times_us(event, cuda)[0] / 1e3 / iterations
        row['calls'] += 1 / iterations
    return sorted((dict(name=name, **row) for name, row in rows.items()),
                  key=lambda r: -r['ms'])


def profile_pass(model: nn.Module, run: Callable[[], Any], device: torch.device,
                 iterations: int = 3, warmup: int = 1, top: int = 25,
                 train: bool = False) -> dict:
    """Profile ``run()``, one inference pass of ``model`` (autograd off) or with ``train`` one
    training step (autograd on, its backward nodes reported): ``warmup`` passes, then
    ``iterations`` (>= 1) timed passes without the profiler and as many under it.

    Returns:
        dict: ``wall_ms`` (per pass without the profiler), ``profiled_ms`` (under it, the base
        of the shares), ``basis`` ('device' on CUDA, else 'cpu'), ``modules`` (per leaf-module
        type, forward: ``ms``, ``share``, ``calls`` per pass), ``backward`` (per backward-node
        type, the same fields), ``outside_ms``, ``ops`` (the ``top`` operators by self time)
        and ``kernels`` (CUDA: the ``top`` kernels by device time), ``op_calls`` (per pass).
    """
    if iterations < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    cuda = device.type == 'cuda'

    def passes(n: int) -> float:  # ms per pass
        start = time.perf_counter()
        for _ in range(n):
            run()
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3 / max(n, 1)

    with torch.set_grad_enabled(train):
        passes(warmup)
        wall_ms = passes(iterations)
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        handles = _leaf_ranges(model)
        try:
            with torch.profiler.profile(activities=activities) as prof:
                profiled_ms = passes(iterations)
        finally:
            for handle in handles:
                handle.remove()
    modules, ops, kernels = [], [], []
    for event in prof.key_averages():
        total, self_time = _times_us(event, cuda)
        row = dict(name=event.key, calls=event.count / iterations, ms=self_time / 1e3 / iterations)
        if cuda and event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append(row)
        elif event.key.startswith(RANGE_PREFIX):
            modules.append(dict(row, name=event.key[len(RANGE_PREFIX):],
                                ms=total / 1e3 / iterations))
        elif event.key.startswith('aten::'):
            ops.append(row)
    backward = _backward_rows(prof.events(), cuda, iterations) if train else []
    for rows in (modules, ops, kernels):
        rows.sort(key=lambda r: -r['ms'])
    for row in modules + backward + ops + kernels:
        row['share'] = row['ms'] / profiled_ms
    return dict(wall_ms=wall_ms, profiled_ms=profiled_ms, basis='device' if cuda else 'cpu',
                modules=modules, backward=backward,
                outside_ms=max(profiled_ms - sum(r['ms'] for r in modules + backward), 0.0),
                ops=[r for r in ops[:top] if r['ms'] > 0],
                kernels=[r for r in kernels[:top] if r['ms'] > 0],
                op_calls=sum(r['calls'] for r in ops))


#: Longest name a text table prints (of CUDA kernels' long names; the JSON keeps them whole).
NAME_WIDTH = 96


def _table(title: str, rows: list[dict]) -> list[str]:
    width = min(max([40] + [len(r['name']) for r in rows]), NAME_WIDTH)
    return [f"{title:<{width}} {'ms/pass':>9} {'share':>7} {'calls':>7}"] + [
        f"{r['name'][:width]:<{width}} {r['ms']:9.2f} {r['share']:7.1%} {r['calls']:7.0f}"
        for r in rows]


def format_profile(report: dict) -> str:
    """Text tables: leaf modules (and backward nodes, the rest), operators, CUDA kernels."""
    lines = [f"wall {report['wall_ms']:.2f} ms per pass ({report['profiled_ms']:.2f} ms under "
             f"the profiler, the base of the shares); times are {report['basis']} time; "
             f"{report['op_calls']:.0f} aten calls per pass"]
    backward = [dict(r, name=f'backward: {r["name"]}') for r in report.get('backward', [])]
    outside = dict(name='outside leaf modules' + (' and backward nodes' if backward else ''),
                   ms=report['outside_ms'], share=report['outside_ms'] / report['profiled_ms'],
                   calls=0)
    lines += _table('leaf module (forward)', report['modules'] + backward + [outside])
    lines += _table('operator (self time)', report['ops'])
    if report.get('kernels'):
        lines += _table('CUDA kernel', report['kernels'])
    return '\n'.join(lines)
