"""Speed / memory / accuracy of the dendritic dynamics operator alone (issue 5 operator target).

For each case (shape, dtype) and each evaluation path (``triton``, ``scan``, ``fft``) of one
:class:`~mmlrf.attention.dynamics.DendriticDynamics` (k = 8, causal, raster order), measures

- time: median of CUDA-event-timed repeats after warm-up (``perf_counter`` on CPU), forward
  under ``no_grad`` and forward + backward (``y.backward(g)``, gradients of x and parameters);
  and, for calls under ``PIPELINED_MAX_MS``, the time per call of as many calls back to back
  (``ms_pipelined``, :func:`mmlrf.analysis.memory.pipelined_ms`): there the host's per-call
  work overlaps the device's, as inside a model, while a synchronised call counts it too; with
  it the host's time per call alone (``host_us``: median wall time of a call from a synchronised
  start to its return, no synchronisation after it: Python, dispatch, kernel launches);
- on CUDA, the ``triton`` forward captured once as a CUDA graph and replayed (``triton fwd
  (CUDA graph)``: the device work without the host's launch path;
  :class:`mmlrf.cuda_graph.GraphedForward`, replayed in place, no input copy);
- the ``triton`` forward + backward without the parameter path (``triton kernels fwd+bwd``),
  and the ``triton`` mode's parameter path alone, forward + backward, no tokens: 'modal' with
  the fused discretisation kernels (``triton params (fused)``, CUDA) and with the PyTorch path
  (``(ATen)``), and 'tridiagonal' (plus the diagonalisation), each with the number of ATen
  operators it dispatches (``aten_ops``: on a GPU, the kernel launches the host pays for);
- extra memory: ``max_memory_allocated`` above the baseline that already holds the input, the
  upstream gradient and the cached parameters, minus the results themselves (the output ``y``;
  for forward + backward also ``x.grad``), reported in bytes and relative to the output tensor;
- accuracy: max-abs error relative to the max-abs of the float64 ``fft`` reference on the same
  weights and the same (dtype-rounded) input, for ``y`` and (forward + backward) for ``x.grad``.

The floor row is ``y.copy_(x)`` into a preallocated ``y`` (read + write the tokens once).

Examples::

    # the GPU slot (N = 8192 tokens, C = 1440, k = 8; ~60 s incl. Triton compile + autotune)
    python tools/analysis/bench_dynamics_gpu.py --out work_dirs/bench/dynamics.json
    # CPU dry run of the same code with tiny sizes (no Triton)
    python tools/analysis/bench_dynamics_gpu.py --smoke --out /tmp/dyn_smoke.json

Prints a table and writes JSON (``--out``). A wall-clock ``--budget`` (s) skips the remaining
rows once spent (recorded as ``skipped``), the most important rows first.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch

from mmlrf.analysis.memory import PIPELINED_MAX_MS, pipelined_ms
from mmlrf.analysis.profile import aten_op_count
from mmlrf.attention import dynamics_triton
from mmlrf.attention.dynamics import DendriticDynamics

MODES = ('triton', 'scan', 'fft')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='JSON output path')
    p.add_argument('--smoke', action='store_true', help='tiny sizes on CPU (no Triton)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--budget', type=float, default=80.0, help='wall-clock budget, s')
    return p.parse_args(argv)


def cases(smoke: bool) -> list[dict]:
    """(batch, channels, H, W, dtype) in order of importance."""
    if smoke:
        return [dict(batch=2, channels=16, height=8, width=16, dtype='float32'),
                dict(batch=2, channels=16, height=8, width=16, dtype='bfloat16')]
    return [dict(batch=8, channels=1440, height=64, width=128, dtype='float32'),
            dict(batch=8, channels=1440, height=64, width=128, dtype='bfloat16'),
            dict(batch=1, channels=1440, height=64, width=128, dtype='float32')]


class Meter:
    """Times and measures the extra peak memory of a callable on one device."""

    def __init__(self, device: torch.device, warmup: int, repeats: int) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self.cuda = device.type == 'cuda'

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, stop = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    def host_us(self, fn) -> float:
        """Median host time of one call in µs: from a synchronised start until ``fn`` returns,
        without waiting for the device."""
        times = []
        for _ in range(self.repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            times.append(1e6 * (time.perf_counter() - t0))
        self.sync()
        return statistics.median(times)

    def peak_extra(self, fn) -> int | None:
        """Peak bytes allocated by ``fn()`` above the current allocation (None on CPU)."""
        if not self.cuda:
            fn()
            return None
        self.sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        self.sync()
        return torch.cuda.max_memory_allocated() - base


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def make_module(channels: int, device: torch.device) -> DendriticDynamics:
    torch.manual_seed(0)
    module = DendriticDynamics(channels, 8)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.to(device)


def reference(module: DendriticDynamics, x: torch.Tensor, g: torch.Tensor):
    """float64 fft output and x-gradient on the same weights."""
    ref = copy.deepcopy(module).double()
    ref.mode = 'fft'
    xd = x.double().requires_grad_()
    y = ref(xd)
    y.backward(g.double())
    return y.detach(), xd.grad


def bench_case(case: dict, meter: Meter, device: torch.device, deadline: float,
               parameters: bool = True) -> list[dict]:
    dtype = getattr(torch, case['dtype'])
    shape = (case['batch'], case['channels'], case['height'], case['width'])
    torch.manual_seed(1)
    x = torch.randn(shape, device=device).to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    out_bytes = x.numel() * x.element_size()
    module = make_module(case['channels'], device)
    y_ref, gx_ref = reference(module, x, g)
    rows = []

    def record(name, fn, result_bytes, check=None):
        row = dict(case, op=name, out_mib=out_bytes / 2**20)
        if time.perf_counter() > deadline:
            rows.append(dict(row, skipped='budget'))
            return
        try:
            row['ms'] = meter.time_ms(fn)
            if row['ms'] < PIPELINED_MAX_MS:
                row['ms_pipelined'] = pipelined_ms(fn, device, meter.repeats)
                row['host_us'] = meter.host_us(fn)
            extra = meter.peak_extra(fn)
            if extra is not None:
                row['extra_mib'] = (extra - result_bytes) / 2**20
                row['extra_vs_out'] = (extra - result_bytes) / out_bytes
            if check is not None:
                row.update(check())
        except Exception as exc:  # a failing path must not lose the other rows
            row['error'] = f'{type(exc).__name__}: {exc}'[:300]
        rows.append(row)
        print(format_row(row), flush=True)

    y_floor = torch.empty_like(x)
    record('floor copy', lambda: y_floor.copy_(x), 0)
    del y_floor
    if parameters:
        parameter_rows(case['channels'], device, record)
    for mode in MODES:
        if mode == 'triton' and device.type != 'cuda':
            continue
        module.mode = mode
        with torch.no_grad():
            module(x)  # compile / autotune / fill the parameter cache outside the measurements

        def forward():
            with torch.no_grad():
                return module(x)

        record(f'{mode} fwd', forward, out_bytes,
               lambda: dict(err_y=rel_err(forward(), y_ref)))
        xg = x.detach().clone().requires_grad_()

        def train_step(keep: bool = False):
            module(xg).backward(g)
            grad = xg.grad
            xg.grad = None
            module.zero_grad(set_to_none=True)
            return grad if keep else None

        def check_grad():
            return dict(err_gx=rel_err(train_step(keep=True), gx_ref))

        record(f'{mode} fwd+bwd', train_step, 2 * out_bytes, check_grad)
        del xg
        if mode == 'triton':
            kernel_rows(module, x, g, record, out_bytes)
            graphed_row(module, x, record)
    return rows


def graphed_row(module: DendriticDynamics, x: torch.Tensor, record):
    """``triton fwd (CUDA graph)``: the forward captured once, replayed in place (the captured
    input is ``x``'s copy and stays put: no copy per call); no extra memory per replay, the
    graph's pool holds its output. Returns the :class:`~mmlrf.cuda_graph.GraphedForward`."""
    from mmlrf.cuda_graph import GraphedForward
    graphed = GraphedForward(module, x)
    record('triton fwd (CUDA graph)', graphed.graph.replay, 0)
    return graphed


def kernel_rows(module: DendriticDynamics, x: torch.Tensor, g: torch.Tensor, record,
                out_bytes: int) -> None:
    """``triton fwd+bwd`` without the parameter path: ``triton_scan`` on leaf fp32 modal
    parameters, forward + backward of x and the parameters."""
    from mmlrf.attention.dynamics_triton import triton_scan
    with torch.no_grad():
        log_a, b, c = (p[0] for p in module.modal_parameters())
    leaves = [t.float().contiguous().requires_grad_() for t in (log_a, b * c, module.d)]
    xs = x.detach().flatten(2).requires_grad_()
    gs = g.flatten(2)

    def kernels():
        triton_scan(xs, *leaves).backward(gs)
        for t in [xs] + leaves:
            t.grad = None

    record('triton kernels fwd+bwd', kernels, 2 * out_bytes)


@contextlib.contextmanager
def fused_discretisation(enabled: bool):
    """Let the 'modal' modules take the fused discretisation only if ``enabled`` (and it works
    on the device): the ATen row measures the PyTorch path on the same GPU."""
    works = dynamics_triton.fused_discretisation_works
    dynamics_triton.fused_discretisation_works = lambda device: enabled and works(device)
    try:
        yield
    finally:
        dynamics_triton.fused_discretisation_works = works


def parameter_rows(channels: int, device: torch.device, record) -> None:
    """The 'triton' mode's parameter path alone (``_triton_parameters``: discretisation, kernel
    head, fp32 casts; forward + backward, no tokens; runs once per training step and layer):
    'modal' with the fused kernels (``triton params (fused)``, CUDA only) and with the PyTorch
    path (``(ATen)``), and 'tridiagonal' (plus the diagonalisation). Each row counts the ATen
    operators it dispatches (``aten_ops``; the fused path's two Triton launches are not ATen
    operators)."""
    def parameters(module: DendriticDynamics) -> None:
        sum(t.sum() for direction in module._triton_parameters()
            for t in direction[:3]).backward()
        module.zero_grad(set_to_none=True)

    cases = [('fused', 'modal', True), ('ATen', 'modal', False),
             ('tridiagonal', 'tridiagonal', False)]
    for label, name, fused in cases:
        module = DendriticDynamics(channels, 8, parameterization=name).to(device)
        if fused and not dynamics_triton.fused_discretisation_works(device):
            continue  # CPU (smoke) or no working kernel: the ATen row is the path
        with fused_discretisation(fused):
            def run(module=module):
                parameters(module)
            record(f'triton params ({label})', run, 0,
                   lambda run=run: dict(aten_ops=aten_op_count(run)))


def format_row(row: dict) -> str:
    shape = f"[{row['batch']},{row['channels']},{row['height']},{row['width']}] {row['dtype']}"
    if 'skipped' in row or 'error' in row:
        return f"{shape:34s} {row['op']:28s} {row.get('skipped') or row.get('error')}"
    mem = (f"{row['extra_mib']:9.1f} MiB ({row['extra_vs_out']:.2f}x out)"
           if 'extra_mib' in row else '        -')
    errs = ' '.join([f'{k}={row[k]:.1e}' for k in ('err_y', 'err_gx') if k in row]
                    + ([f"{row['aten_ops']} ATen ops"] if 'aten_ops' in row else []))
    piped = (f" ({row['ms_pipelined']:.3f} back to back, host {row['host_us']:.0f} µs)"
             if 'ms_pipelined' in row else '')
    return f"{shape:34s} {row['op']:28s} {row['ms']:9.3f} ms{piped}  extra {mem}  {errs}"


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device('cpu' if args.smoke or not torch.cuda.is_available() else 'cuda')
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity for the scan path
        torch.backends.cudnn.allow_tf32 = False
    meter = Meter(device, args.warmup, args.repeats)
    deadline = time.perf_counter() + args.budget
    info = dict(device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
                torch=torch.__version__)
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = None
    print(info, flush=True)
    rows = []
    for i, case in enumerate(cases(args.smoke)):
        # the parameter path depends on neither batch nor dtype: the first case measures it
        rows += bench_case(case, meter, device, deadline, parameters=i == 0)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    from mmlrf.attention.dynamics_triton import TUNED_FORWARD, chosen_configs
    info['triton_configs'] = chosen_configs() or None  # None: no triton / no GPU, nothing tuned
    info['triton_candidates'] = {str(key): [str(c) for c in tuned.configs]
                                 for key, tuned in TUNED_FORWARD.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(info=info, rows=rows), f, indent=1)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
