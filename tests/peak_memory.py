"""Test helper: the peak resident memory of one call on the CPU (Linux).

The process's peak resident set (``VmHWM``) only follows the call's tensors when freed memory
goes back to the OS at once: measure in a fresh process started with :data:`CPU_MEASURE_ENV`
(glibc maps every allocation of 64 KiB or more on its own and unmaps it when freed), e.g. with
:func:`measure_in_subprocess`.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any, Callable

MIB = float(1 << 20)
#: Environment of a measuring process (see the module docstring).
CPU_MEASURE_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '0'}


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not found in /proc/self/status')


def peak_rss_mib(fn: Callable[[], Any]) -> float:
    """Peak resident memory of one call of ``fn`` above the resident memory just before it, in
    MiB; the result of ``fn`` is held until the peak is read (an output counts)."""
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:  # reset VmHWM to VmRSS
        f.write('5')
    base = _status_kib('VmRSS')
    out = fn()
    peak = _status_kib('VmHWM') - base
    del out
    return peak * 1024 / MIB


def measure_in_subprocess(script: str, timeout: float = 120) -> dict:
    """Run ``script`` (a test file whose ``__main__`` prints one JSON line of peaks) in a fresh
    process with :data:`CPU_MEASURE_ENV`; returns the printed dict."""
    helpers = os.path.dirname(os.path.abspath(__file__))  # the tests' helper modules
    path = os.pathsep.join(p for p in (helpers, os.environ.get('PYTHONPATH')) if p)
    proc = subprocess.run([sys.executable, os.path.abspath(script)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, **CPU_MEASURE_ENV, 'PYTHONPATH': path})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])
