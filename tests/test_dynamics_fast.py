"""Fast paths of the dendritic dynamics (issue 5): chunked CPU scans and the Triton GPU kernel
equal the reference FFT / token-by-token operators, forward and gradients, for every option."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.attention.dynamics import DendriticDynamics, fft_conv, recurrent_scan
from mmlrf.attention.dynamics_scan import chunked_scan, streaming_scan

ORDERS = ('raster', 'snake', 'column')
CPU_FAST = ('scan', 'stream')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def make(channels=3, k=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    module = DendriticDynamics(channels, k, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


def outputs_and_grads(module, x, weight, mode):
    module.mode = mode
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = module(x)
    (y * weight).sum().backward()
    return y.detach(), [x.grad] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize('chunk_size', [16, 128])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('order', ORDERS)
@pytest.mark.parametrize('mode', CPU_FAST)
def test_cpu_fast_paths_equal_reference(mode, order, bidirectional, chunk_size):
    """N = 7·9 = 63: a partial last chunk (L=16) and a single short chunk (L=128)."""
    module = make(order=order, bidirectional=bidirectional, chunk_size=chunk_size).double()
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    weight = torch.randn_like(x)
    y_ref, g_ref = outputs_and_grads(module, x, weight, 'recurrent')
    y_fft, g_fft = outputs_and_grads(module, x, weight, 'fft')
    y, g = outputs_and_grads(module, x, weight, mode)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(y_fft, y_ref) < 1e-12
    for got, ref, ref2 in zip(g, g_ref, g_fft):
        assert rel_err(got, ref) < 1e-10
        assert rel_err(got, ref2) < 1e-10


@pytest.mark.parametrize('mode', CPU_FAST)
def test_cpu_fast_paths_float32_n4096(mode):
    module = make(channels=2, k=8, seed=1, bidirectional=True, order='snake',
                  dt_min=1e-4, dt_max=1e-2)
    x = torch.randn(2, 2, 64, 64)
    with torch.no_grad():
        module.mode = 'fft'
        ref = module.double()(x.double())
        module.float().mode = mode
        y = module(x)
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize('scan', [chunked_scan, streaming_scan])
def test_chunked_scans_extreme_decays(scan):
    """Very fast and very slow modes (ā from e^-80 to 1 − 1e-7): no overflow, exact."""
    torch.manual_seed(2)
    log_a = torch.tensor([[-80.0, -1e-7, -3.0], [-1e-3, -20.0, -0.5]], dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    d = torch.randn(2, dtype=torch.float64)
    u = torch.randn(3, 2, 200, dtype=torch.float64)
    ref = recurrent_scan(u, torch.exp(log_a), torch.ones_like(w), w, d)
    assert rel_err(fft_conv(u, log_a, w, d), ref) < 1e-10
    assert rel_err(scan(u, log_a, w, d, 32), ref) < 1e-12


def test_auto_uses_scan_on_cpu_and_mode_is_switchable():
    module = make(mode='auto')
    x = torch.randn(1, 3, 5, 6)
    assert module.resolved_mode(x) == 'scan'
    y_auto = module(x)
    module.mode = 'fft'
    assert rel_err(y_auto, module(x)) < 1e-5


@pytest.mark.parametrize('mode', CPU_FAST + ('fft',))
def test_bfloat16_input_cpu(mode):
    module = make(mode=mode, bidirectional=True)
    x = torch.randn(2, 3, 6, 7).bfloat16()
    y = module(x)
    assert y.dtype == torch.bfloat16
    module.mode = 'recurrent'
    ref = module.double()(x.double())
    assert rel_err(y, ref) < 1e-2


def test_triton_kernels_in_interpreter():
    """The Triton kernels' maths on CPU via TRITON_INTERPRET=1 (only where triton is installed
    without a GPU; with CUDA the compiled kernels are tested directly below). The interpreter
    runs 256-token groups (16 chunks of 16), so N = 300 and 420 carry the state across groups,
    forwards and (k = 5, padded modes) backwards."""
    pytest.importorskip('triton')
    if torch.cuda.is_available():
        pytest.skip('CUDA present: the compiled kernels are tested instead of the interpreter')
    script = textwrap.dedent('''
        import torch, mmlrf
        from mmlrf.attention.dynamics import fft_conv
        from mmlrf.attention.dynamics_triton import _TritonDynamics, kernel_head
        torch.manual_seed(0)
        worst = 0.0
        for bsz, ch, n, k, reverse in [(2, 3, 300, 8, False), (1, 5, 420, 5, True)]:
            u = torch.randn(bsz, ch, n, requires_grad=True)
            log_a = (-torch.rand(ch, k) * 0.3).requires_grad_()
            w = torch.randn(ch, k, requires_grad=True)
            d = torch.randn(ch, requires_grad=True)
            g = torch.randn(bsz, ch, n)
            kern = kernel_head(log_a.detach(), w.detach())
            y = _TritonDynamics.apply(u, log_a, w, d, kern, reverse)
            got = [y] + list(torch.autograd.grad((y * g).sum(), (u, log_a, w, d)))
            ref_in = [t.detach().double().requires_grad_() for t in (u, log_a, w, d)]
            seq = ref_in[0].flip(-1) if reverse else ref_in[0]
            ref = fft_conv(seq, *ref_in[1:])
            ref = ref.flip(-1) if reverse else ref
            refs = [ref] + list(torch.autograd.grad((ref * g.double()).sum(), ref_in))
            for a, b in zip(got, refs):
                worst = max(worst, ((a.double() - b).abs().max() / b.abs().max()).item())
        print('WORST', worst)
    ''')
    env = dict(os.environ, TRITON_INTERPRET='1')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split('WORST')[-1]) < 1e-4


# ---------------------------------------------------------------------------- CUDA / Triton
@needs_cuda
@pytest.mark.parametrize('k', [8, 5])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('order', ORDERS)
def test_triton_equals_reference(order, bidirectional, k):
    """C = 7 (not a multiple of the channel block), N = 13·29 = 377 (partial token block)."""
    module = make(channels=7, k=k, order=order, bidirectional=bidirectional).cuda()
    x = torch.randn(2, 7, 13, 29, device='cuda')
    weight = torch.randn_like(x)
    y, g = outputs_and_grads(module, x, weight, 'triton')
    module.double()
    y_ref, g_ref = outputs_and_grads(module, x.double(), weight.double(), 'fft')
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    for got, ref in zip(g, g_ref):
        assert rel_err(got, ref) < 1e-4


@needs_cuda
@pytest.mark.parametrize('bidirectional', [False, True])
def test_triton_bfloat16(bidirectional):
    module = make(channels=16, k=8, bidirectional=bidirectional, order='snake').cuda()
    x = torch.randn(2, 16, 32, 48, device='cuda')
    weight = torch.randn_like(x)
    y, g = outputs_and_grads(module, x.bfloat16(), weight.bfloat16(), 'triton')
    assert y.dtype == torch.bfloat16
    module.double()
    y_ref, g_ref = outputs_and_grads(module, x.bfloat16().double(), weight.bfloat16().double(),
                                     'fft')
    assert rel_err(y, y_ref) < 1e-2
    for got, ref in zip(g, g_ref):
        assert torch.isfinite(got).all() and rel_err(got, ref) < 3e-2


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('reverse', [False, True])
def test_triton_every_forward_config(reverse, dtype):
    """Each autotune candidate compiles and is exact, incl. the carry across token groups
    (N = 8191 > every group of BLOCK_M·CHUNK tokens; odd, so the last group is partial)."""
    from mmlrf.attention.dynamics_triton import kernel_head, launch_forward
    from mmlrf.attention.scan_triton import FORWARD_CONFIGS
    torch.manual_seed(4)
    ch, k = 6, 8
    u = torch.randn(2, ch, 8191, device='cuda').to(dtype)
    log_a = -torch.rand(ch, k, device='cuda', dtype=torch.float64) * torch.logspace(
        -4, 1, k, device='cuda', dtype=torch.float64)
    w = torch.randn(ch, k, device='cuda', dtype=torch.float64)
    d = torch.randn(ch, device='cuda', dtype=torch.float64)
    seq = u.double().flip(-1) if reverse else u.double()
    ref = fft_conv(seq, log_a, w, d)
    ref = ref.flip(-1) if reverse else ref
    kern = kernel_head(log_a, w)
    for config in FORWARD_CONFIGS:
        y = torch.full_like(u, float('nan'))
        launch_forward(u, y, log_a.float(), w.float(), d.float(), kern, reverse, config)
        assert rel_err(y, ref) < (1e-5 if dtype == torch.float32 else 1e-2), config


@needs_cuda
def test_triton_inference_caches_kernel_parameters():
    module = make(channels=4, k=8, mode='triton', bidirectional=True).cuda()
    x = torch.randn(1, 4, 8, 8, device='cuda')
    with torch.no_grad():
        module(x)
        first = module._cache['triton'][1]
        module(x)
        assert module._cache['triton'][1] is first
        module.d.add_(1.0)
        module(x)
        assert module._cache['triton'][1] is not first


@needs_cuda
def test_auto_uses_triton_on_cuda():
    module = make(mode='auto').cuda()
    x = torch.randn(1, 3, 4, 5, device='cuda')
    assert module.resolved_mode(x) == 'triton'


@needs_cuda
def test_triton_long_sequence_and_memory():
    """N = 8192 tokens; extra memory beyond input and output ≤ 2× the output (issue 5 target)."""
    module = make(channels=64, k=8, seed=3, mode='triton', dt_min=1e-4, dt_max=1e-2).cuda()
    x = torch.randn(2, 64, 64, 128, device='cuda')
    with torch.no_grad():
        module(x)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        y = module(x)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base - y.numel() * y.element_size()
        module.mode = 'scan'
        ref = module.double()(x.double())
    assert extra <= 2 * y.numel() * y.element_size()
    assert rel_err(y, ref) < 1e-4
