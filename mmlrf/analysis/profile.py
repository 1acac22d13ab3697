"""Where an inference pass or a training step spends its time (torch.profiler): per leaf-module
type, per backward node, per operator and (CUDA) per kernel.

Every leaf module (no children: ``Conv2d``, ``BatchNorm2d``, ``MultiSpike``,
``DendriticDynamics``, ...) runs its forward inside a profiler range named
``module::<class name>``, so the report attributes device time (CUDA) or CPU time (CPU) to
module types. A training step's backward is attributed to autograd's nodes
(``ConvolutionBackward0``, ``NativeBatchNormBackward0``, mmlrf's own functions, ...): the
profiler records each node the engine evaluates, on whichever thread runs it. Work outside all
of these (residual adds, attention products and resizes written as functions, the optimizer-free
rest of the step) is the ``outside`` row: the profiled wall time minus the module and backward
rows (on a GPU this includes the idle time between kernels, e.g. launch overhead). Operators are
listed by self time, with their calls per pass (on a GPU, many small calls mean launch overhead).
:func:`aten_op_count` counts the ATen operators one call dispatches, without the profiler.
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
    """(total, self) time of a profiler event, device time on CUDA, else CPU time."""
    if cuda:
        total = getattr(event, 'device_time_total', None)
        if total is None:  # torch < 2.4 names
            return event.cuda_time_total, event.self_cuda_time_total
        return total, event.self_device_time_total
    return event.cpu_time_total, event.self_cpu_time_total


def _backward_rows(events: list, cuda: bool, iterations: int) -> list[dict]:
    """Time per backward-node type (outermost evaluations only: a node whose backward runs
    autograd again, e.g. through ``torch.autograd.grad``, holds the nodes it evaluates)."""
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
    """Profile ``run()``: an inference pass of ``model`` (run without autograd) or, with
    ``train``, a training step (forward, loss and ``backward()``, autograd on).

    Args:
        model (nn.Module): the model ``run`` runs (its leaf modules get ranges).
        run (Callable): one pass; called ``warmup`` times, then ``iterations`` times timed
            without the profiler and ``iterations`` times under it.
        device (torch.device): where it runs ('cuda' reports device time, else CPU time).
        iterations (int): passes per measurement (>= 1).
        warmup (int): passes before measuring.
        top (int): operators (and CUDA kernels) to list.
        train (bool): ``run`` is a training step: autograd stays on and its backward nodes
            are reported.

    Returns:
        dict: ``wall_ms`` (per pass, without the profiler), ``profiled_ms`` (per pass, under
        it), ``basis`` ('device' | 'cpu'), ``modules`` (per leaf-module type, forward: ``ms``,
        ``share`` of ``profiled_ms``, ``calls`` per pass), ``backward`` (per backward-node
        type, same fields; empty unless ``train``), ``outside_ms``, ``ops`` (top operators by
        self time: ``ms``, ``share``, ``calls``), ``kernels`` (CUDA: top kernels by device
        time, same fields; else empty), ``op_calls`` (operator calls per pass).
    """
    if iterations < 1:
        raise ValueError(f'iterations must be >= 1, got {iterations}')
    cuda = device.type == 'cuda'

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.set_grad_enabled(train):
        for _ in range(warmup):
            run()
        sync()
        start = time.perf_counter()
        for _ in range(iterations):
            run()
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
                    run()
                sync()
                profiled_ms = (time.perf_counter() - start) * 1e3 / iterations
        finally:
            for handle in handles:
                handle.remove()
    modules, ops, kernels, op_calls = [], [], [], 0
    for event in prof.key_averages():
        if cuda and event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append(dict(name=event.key, calls=event.count / iterations,
                                ms=_times_us(event, cuda)[1] / 1e3 / iterations))
            continue
        total, self_time = _times_us(event, cuda)
        if event.key.startswith(RANGE_PREFIX):
            modules.append(dict(name=event.key[len(RANGE_PREFIX):],
                                ms=total / 1e3 / iterations,
                                calls=event.count / iterations))
        elif event.key.startswith('aten::'):
            op_calls += event.count
            ops.append(dict(name=event.key, ms=self_time / 1e3 / iterations,
                            calls=event.count / iterations))
    backward = _backward_rows(prof.events(), cuda, iterations) if train else []
    for rows in (modules, ops, kernels):
        rows.sort(key=lambda r: -r['ms'])
    for row in modules + backward + ops + kernels:
        row['share'] = row['ms'] / profiled_ms
    outside = max(profiled_ms - sum(r['ms'] for r in modules + backward), 0.0)
    return dict(wall_ms=wall_ms, profiled_ms=profiled_ms, basis='device' if cuda else 'cpu',
                modules=modules, backward=backward, outside_ms=outside,
                ops=[r for r in ops[:top] if r['ms'] > 0],
                kernels=[r for r in kernels[:top] if r['ms'] > 0], op_calls=op_calls / iterations)


def aten_op_count(fn: Callable[[], Any]) -> int:
    """ATen operators ``fn()`` dispatches, views (``detach``, ``select``, ``unbind``, ...)
    excluded; a backward that ``fn`` runs is included. On a GPU nearly every counted operator is
    one kernel launch, so this is the host's launch work; custom kernels launched directly
    (Triton) are not ATen operators and not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.count += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        fn()
    return counter.count


#: Longest name a text table prints (CUDA kernel names run to hundreds of characters; the JSON
#: report keeps them whole).
NAME_WIDTH = 96


def _table(title: str, rows: list[dict]) -> list[str]:
    width = min(max([40] + [len(r['name']) for r in rows]), NAME_WIDTH)
    return [f"{title:<{width}} {'ms/pass':>9} {'share':>7} {'calls':>7}"] + [
        f"{r['name'][:width]:<{width}} {r['ms']:9.2f} {r['share']:7.1%} {r['calls']:7.0f}"
        for r in rows]


def format_profile(report: dict) -> str:
    """The report as text tables: leaf modules (with the backward nodes and the ``outside``
    row), operators, then CUDA kernels when there are any."""
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
