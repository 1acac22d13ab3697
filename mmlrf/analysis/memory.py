"""Peak-memory and time measurement of one callable, on CUDA or CPU.

CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) above the allocated
bytes just before the measured call, after ``reset_peak_memory_stats``.

CPU: the process's peak resident set (``VmHWM`` of ``/proc/self/status``) above its resident set
just before the measured call, after resetting the peak with ``/proc/self/clear_refs`` (Linux).
This only reflects the call's tensors when the process returns freed memory to the OS: run it in
a fresh process started with :data:`CPU_MEASURE_ENV` (glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed
at 64 KiB, so every tensor of 64 KiB or more is its own ``mmap`` and is unmapped when freed), as
:func:`mmlrf.analysis.benchmark.run_cases` does. See ``docs/benchmarks.md``.

That allocator setting makes every large allocation a fresh ``mmap`` whose pages the kernel
must zero and fault in, which doubles a CPU training step (measured: 5.4 → 12 s for the 19M
model at 1×512×512). ``run_cases`` therefore times each CPU case in a second process with the
default allocator (:func:`mmlrf.analysis.benchmark.time_interleaved`).
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any, Callable

import torch

MIB = float(1 << 20)

#: Environment for CPU measurement subprocesses (see the module docstring).
CPU_MEASURE_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '0'}
#: Calls of this many ms or more are not also timed back to back (:func:`pipelined_ms`): the
#: host's per-call work, tens of µs, is under 0.1 % of them, and the calls would only spend the
#: time budget of a GPU run.
PIPELINED_MAX_MS = 50.0


def _proc_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``'VmRSS'``, ``'VmHWM'``), in KiB (Linux)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not found in /proc/self/status')


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class PeakMeter:
    """Memory in use and its peaks on one device, in bytes (CUDA: the caching allocator's
    counters; CPU: ``VmRSS`` / ``VmHWM``, see the module docstring): :meth:`start` begins a
    measured pass, :meth:`window` a new peak window within it (e.g. one per module call);
    :meth:`pass_peak` is the highest peak of every window since :meth:`start`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.device = device
        self.highest = 0

    def _reset(self) -> int:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        reset_peak_rss()
        return _proc_status_kib('VmRSS') * 1024

    def peak(self) -> int:
        """The peak of the current window."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status_kib('VmHWM') * 1024

    def start(self) -> int:
        """Start a pass; returns the memory in use now."""
        self.highest = in_use = self._reset()
        return in_use

    def window(self) -> int:
        """Start a new peak window; returns the memory in use now."""
        self.highest = max(self.highest, self.peak())
        return self._reset()

    def pass_peak(self) -> int:
        """The highest peak since :meth:`start`."""
        return max(self.highest, self.peak())


def release_garbage(device: torch.device) -> None:
    """Collect Python garbage and, on CUDA, wait for the device and hand the caching
    allocator's free blocks back, so the memory in use now is what live objects hold."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def check_memory_cap(cap_mib: float) -> None:
    """Raise ``ValueError`` unless ``cap_mib`` (a :func:`cuda_memory_cap`) is > 0."""
    if cap_mib <= 0:
        raise ValueError(f'the memory cap must be > 0 MiB, got {cap_mib}')


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory of one call of ``fn`` above the memory in use just before it, in MiB.

    The result of ``fn`` is held until the peak is read, so it counts (an output is part of
    the run's memory).
    """
    release_garbage(device)
    meter = PeakMeter(device)
    base = meter.start()
    out = fn()
    _sync(device)
    peak = meter.pass_peak() - base
    del out
    return peak / MIB


@contextlib.contextmanager
def cuda_memory_cap(device: torch.device, cap_mib: float | None) -> Iterator[None]:
    """Cap ``device``'s caching allocator at the memory it reserves on entry plus ``cap_mib``
    MiB, for the ``with`` block (``torch.cuda.set_per_process_memory_fraction``, set back to 1
    on exit; wholly free cached segments are released first, so the reserve on entry is the
    segments that live tensors occupy, free blocks inside them included).

    An allocation that would grow the reserve past the cap raises ``torch.OutOfMemoryError``
    (one that fits a free block the allocator already holds does not). PyTorch's cuDNN
    convolutions catch it while choosing an algorithm and try the next one, so under a cap
    they take algorithms whose workspaces fit. None: no cap (a no-op).

    Raises:
        ValueError: for a cap on a non-CUDA device, or a cap ≤ 0.
    """
    if cap_mib is None:
        yield
        return
    check_memory_cap(cap_mib)
    if device.type != 'cuda':
        raise ValueError(f'a memory cap needs a CUDA device, got {device}')
    release_garbage(device)
    # the fraction's setter takes an index (a bare 'cuda' device is refused): the current one
    index = torch.cuda.current_device() if device.index is None else device.index
    total = torch.cuda.get_device_properties(index).total_memory
    allowed = torch.cuda.memory_reserved(index) + cap_mib * MIB
    torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


@contextlib.contextmanager
def gc_pauses() -> Iterator[list[float]]:
    """Yields a list that receives the duration (ms) of each Python cyclic garbage collection
    that runs inside the block (``gc.callbacks``): pauses of the host that a slow step can owe
    to the collector rather than to its own work."""
    pauses: list[float] = []
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == 'start':
            started.append(time.perf_counter())
        elif started:
            pauses.append((time.perf_counter() - started.pop()) * 1e3)

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Collect, then move every object alive into the collector's permanent generation
    (``gc.freeze``) for the block: its collections then scan only what the block creates, not
    the models, modules and imports built before it. Unfrozen on exit."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Wall time of ``repeats`` calls of ``fn`` in ms, each synchronised on CUDA."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def pipelined_ms(fn: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Time per call of ``calls`` back-to-back calls of ``fn``, synchronised only before the
    first and after the last, in ms.

    On CUDA the host queues call i + 1 while the device still runs call i, so the host's
    per-call work (Python, dispatch, kernel launch) is hidden wherever the device work is
    longer: the device time per call in a stream of calls, as inside a model. :func:`time_ms`
    synchronises around every call, so the device idles through each call's host work and that
    time counts as well. On the CPU nothing overlaps: the two differ only by warm-up and noise.
    """
    if calls < 1:
        raise ValueError(f'calls must be >= 1, got {calls}')
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3 / calls


def measure(fn: Callable[[], Any], device: torch.device, warmup: int = 1,
            repeats: int = 3) -> dict[str, Any]:
    """Warm up, then measure the peak memory of one call and the time of ``repeats`` calls.

    Args:
        fn: the work of one iteration (returns its output, which is kept until the peak is read).
        device: where ``fn`` runs.
        warmup: untimed calls first (lazy allocations: thread pools, cuBLAS workspaces).
        repeats: timed calls; the median is reported (0: no timing).

    Returns:
        dict: ``peak_mib`` (float), ``time_ms`` (median, float | None), ``times_ms`` (list).
    """
    for _ in range(warmup):
        fn()
    peak = peak_memory_mib(fn, device)
    times = time_ms(fn, device, repeats) if repeats > 0 else []
    return dict(peak_mib=peak, time_ms=statistics.median(times) if times else None,
                times_ms=times)
