"""One-off: where the host time of one no_grad Triton forward of DendriticDynamics goes."""
import cProfile, io, pstats, sys, time
import torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
import mmlrf  # noqa
from mmlrf.attention.dynamics import DendriticDynamics
from mmlrf.attention import dynamics_triton as dt
from mmlrf.attention.scan_triton import forward_kernel
dev = torch.device('cuda')
torch.manual_seed(0)
m = DendriticDynamics(1440, 8)
with torch.no_grad():
    for p in m.parameters():
        p.add_(0.3 * torch.randn_like(p))
m = m.to(dev)
m.mode = 'triton'
x = torch.randn(8, 1440, 64, 128, device=dev)
with torch.no_grad():
    ref = m(x)
torch.cuda.synchronize()
(log_a, w, d, kern), = m._cached('triton', m._triton_parameters)
u = x.flatten(2)
out = torch.empty_like(u)
tuned = dt.tuned_forward(u.dtype, 8, u.device)
best = next(iter(tuned.cache.values()))
print('best', best, flush=True)
k = log_a.shape[-1]
def direct():
    forward_kernel[(u.shape[0] * u.shape[1],)](u, out, log_a, w, d, kern, u.shape[2], u.shape[1], k,
        REVERSE=False, K=dt.modes_padded(k), KERN_STRIDE=dt.CHUNK_MAX, **best.all_kwargs())
variants = {
    'module forward': lambda: m(x),
    'triton_scan': lambda: dt.triton_scan(u, log_a, w, d, False, kern),
    'triton_scan.__wrapped__': lambda: getattr(dt.triton_scan, '__wrapped__', dt.triton_scan)(u, log_a, w, d, False, kern),
    'Function.apply': lambda: dt._TritonDynamics.apply(u, log_a, w, d, kern, False),
    'launch_forward (autotuner)': lambda: dt.launch_forward(u, out, log_a, w, d, kern, False),
    'forward_kernel[grid] best config': direct,
    'empty_like': lambda: torch.empty_like(u),
    '_cached params': lambda: m._cached('triton', m._triton_parameters),
}
def host_us(fn, n=300):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    h = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return h
def call_ms(fn, n=50):
    ts = []
    for _ in range(n):
        torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort(); return ts[len(ts) // 2]
with torch.no_grad():
    direct(); torch.cuda.synchronize()
    print('direct == module:', torch.equal(out.view_as(ref), ref), flush=True)
    for rnd in range(2):
        for name, fn in variants.items():
            fn()
            print(f'round {rnd} {name:36s} host {host_us(fn):8.1f} us  per call {call_ms(fn):.3f} ms', flush=True)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(500):
        m(x)
    pr.disable()
    torch.cuda.synchronize()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(25)
print(s.getvalue())
