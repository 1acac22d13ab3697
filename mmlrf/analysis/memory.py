"""Peak memory and time of one callable.

CUDA: the caching allocator's peak (``max_memory_allocated``) above the bytes allocated before
the call. CPU: the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the
resident set (``VmRSS``) before the call (Linux). That reads the call's tensors only where freed
memory returns to the OS: in a fresh process started with :data:`CPU_MEASURE_ENV` (each tensor
of 64 KiB or more its own ``mmap``, unmapped when freed), as
:func:`mmlrf.analysis.benchmark.run_cases` runs it. Each such allocation is then zeroed and
faulted in anew, which slows allocation-heavy work, so times come from a second fresh process
with the default allocator.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import torch

MIB = float(1 << 20)
#: Environment of a CPU peak-memory process (see the module docstring).
CPU_MEASURE_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '0'}


def _proc_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``'VmRSS'``, ``'VmHWM'``), in KiB."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory (MiB) of one call of ``fn`` above the memory in use before it (what live
    objects hold: garbage is collected, CUDA's free blocks released). The result of ``fn`` is
    held until the peak is read: an output is part of the call's memory."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # VmHWM := VmRSS (Linux >= 4.0)
        base = _proc_status_kib('VmRSS') * 1024
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == 'cuda'
            else _proc_status_kib('VmHWM') * 1024)
    del out
    return (peak - base) / MIB


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Wall time (ms) of each of ``repeats`` calls of ``fn``, synchronised around each one."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else lambda device: None
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(fn: Callable[[], Any], device: torch.device, warmup: int = 1,
            repeats: int = 3) -> dict[str, Any]:
    """``warmup`` untimed calls (lazy allocations: thread pools, workspaces), then
    ``peak_mib`` of one call (:func:`peak_memory_mib`) and ``times_ms`` of ``repeats`` calls,
    ``time_ms`` their median (None for 0 repeats)."""
    for _ in range(warmup):
        fn()
    peak = peak_memory_mib(fn, device)
    times = time_ms(fn, device, repeats)
    return dict(peak_mib=peak, time_ms=statistics.median(times) if times else None,
                times_ms=times)
