"""The Triton kernels of the dendritic operator: in Triton's interpreter on a CPU (where Triton
is installed), compiled on CUDA."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from packaging.version import Version

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.ops.dendritic import PARAMETERIZATIONS, DendriticDynamics, DiscreteModes
from mmlrf.ops.dendritic.reference import fft_conv

from dense_reference import randomise, rel_err
from devices import needs_cuda

ORDERS = ('raster', 'snake', 'column')


def make(channels=3, k=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomise(DendriticDynamics(channels, k, **kwargs), seed=seed)


def outputs_and_grads(module, x, weight, mode):
    module.mode = mode
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = module(x)
    (y * weight).sum().backward()
    return y.detach(), [x.grad] + [p.grad.clone() for p in module.parameters()]


def triton_interpreter():
    """Skip unless Triton's interpreter can run here; returns the environment that selects it."""
    triton = pytest.importorskip('triton')
    if (Version(triton.__version__) < Version('3.7')
            and Version(np.__version__) >= Version('2.4')):
        # the interpreter's scalar loop bounds call int() on a 1-element array, an error since
        # NumPy 2.4 (a warning before); Triton 3.7 squeezes the array first
        pytest.skip(f'Triton {triton.__version__} interpreter cannot run on NumPy '
                    f'{np.__version__}: install triton>=3.7')
    if torch.cuda.is_available():
        pytest.skip('CUDA present: the compiled kernels are tested instead of the interpreter')
    return dict(os.environ, TRITON_INTERPRET='1')


INTERPRETER_SCRIPT = textwrap.dedent('''
    import torch, mmlrf
    from mmlrf.ops.dendritic.reference import DiscreteModes, fft_conv
    from mmlrf.ops.dendritic.triton_ops import (_TritonScan, complex64, kernel_head,
                                                launch_forward, launch_param_grad)
    from mmlrf.ops.dendritic.triton.scan_kernels import FP32_CONFIGS, GRAD_CONFIG, LOWP_CONFIGS

    def err(a, b):
        return ((a.to(b.dtype) - b).abs().max() / b.abs().max()).item()

    def case(bsz, ch, n, k, seed, complex_modes=True):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(bsz, ch, n, generator=g)
        # decays from ~1 − 1e-3 to e^-3 (fast modes vanish within a chunk), phases up to ~6
        real = -torch.rand(ch, k, generator=g) * torch.logspace(-3, 0.5, k)
        imag = torch.randn(ch, k, generator=g) * 2.0 * complex_modes
        w = torch.randn(ch, k, generator=g, dtype=torch.complex64)
        if not complex_modes:
            w = complex64(w.real)
        return u, torch.complex(real, imag), w, torch.randn(ch, generator=g)

    def reference(u, log_a, w, d, reverse, gy):
        ref_in = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
                  .requires_grad_() for t in (u, log_a, w, d)]
        seq = ref_in[0].flip(-1) if reverse else ref_in[0]
        ref = fft_conv(seq, DiscreteModes(*ref_in[1:]))
        ref = ref.flip(-1) if reverse else ref
        return [ref] + list(torch.autograd.grad((ref * gy.double()).sum(), ref_in))

    worst = {}
    # Autograd through the default (interpreter) tiles: 256-token groups; complex and real modes.
    for bsz, ch, n, k, reverse, cm in [(2, 3, 300, 8, False, True), (1, 2, 37, 8, True, False),
                                       (2, 2, 513, 5, False, True)]:
        u, log_a, w, d = case(bsz, ch, n, k, n, cm)
        inputs = [t.requires_grad_() for t in (u, log_a, w, d)]
        gy = torch.randn(bsz, ch, n)
        y = _TritonScan.apply(*inputs, kernel_head(log_a.detach(), w.detach()), reverse)
        got = [y] + list(torch.autograd.grad((y * gy).sum(), inputs))
        for name, a, b in zip(('y', 'u', 'log_a', 'w', 'd'), got,
                              reference(u, log_a, w, d, reverse, gy)):
            worst[name] = max(worst.get(name, 0.0), err(a, b))
    # The GPU tiles (every autotune candidate, the gradient config), anti-causal with padded
    # modes: N crosses their token groups.
    u, log_a, w, d = case(1, 2, 2100, 5, 5)
    gy = torch.randn_like(u)
    ref = reference(u, log_a, w, d, True, gy)
    kern = kernel_head(log_a, w)
    # one config per tile shape: the interpreter computes every dot precision in fp32 alike
    tiles = {(c.kwargs['CHUNK'], c.kwargs['BLOCK_M']): c for c in FP32_CONFIGS + LOWP_CONFIGS}
    for config in tiles.values():
        y = torch.full_like(u, float('nan'))
        launch_forward(u, y, log_a, w, d, kern, True, config)
        worst['y'] = max(worst['y'], err(y, ref[0]))
    grads = launch_param_grad(u, gy, log_a, w, True, GRAD_CONFIG)
    for name, a, b in zip(('log_a', 'w', 'd'), grads, ref[2:]):
        worst[name] = max(worst[name], err(a, b))
    print('WORST', max(worst.values()), worst)
''')


def test_triton_kernels_in_interpreter():
    """The Triton kernels' maths on CPU via TRITON_INTERPRET=1 (only where triton is installed
    without a GPU; with CUDA the compiled kernels are tested directly below): forward and every
    gradient (complex ones for complex modes) against float64 FFT autograd, complex and real
    modes, k = 8 and 5 (padded modes), both directions; the kernels compute in fp32. The
    default interpreter tiles run 256-token groups (N = 300 and 513 carry the state across
    groups, N = 37 is less than one group); every tile shape of the GPU autotune candidates and
    the gradient config run anti-causally on N = 2100 (more than one group of each)."""
    out = subprocess.run([sys.executable, '-c', INTERPRETER_SCRIPT], env=triton_interpreter(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split('WORST')[-1].split()[0]) < 1e-5, out.stdout


DISCRETISE_SCRIPT = textwrap.dedent('''
    import copy, torch, mmlrf
    import mmlrf.ops.dendritic.module as module_file
    from mmlrf.ops.dendritic import DendriticDynamics, triton_ops

    def err(a, b):  # exact zeros (the anti-causal skip) compare as 0, not 0/0
        diff = (a.double() - b.double()).abs().max()
        return (diff / b.double().abs().max().clamp_min(1e-30)).item()

    worst = 0.0
    for seed, (bidirectional, k, spread) in enumerate([(False, 8, 1.0), (True, 5, 1.0),
                                                        (True, 1, 8.0), (False, 3, 8.0)]):
        torch.manual_seed(seed)
        module = DendriticDynamics(37, k, bidirectional=bidirectional)  # 37: partial row block
        # (the default 'pmsn' parameterisation, the one with a fused discretisation)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(spread * torch.randn_like(p))
        weights = None
        results = []
        # the fused kernels on the fp32 module; the PyTorch path on a float64 copy
        for fused, net in ((True, module), (False, copy.deepcopy(module).double())):
            module_file.fused_discretisation_works = lambda device, fused=fused: fused
            values = [t.to(torch.complex128 if t.is_complex() else torch.float64)
                      for direction in net._triton_modes() for t in direction]
            if weights is None:
                weights = [torch.randn_like(t) for t in values]
            sum((t * g.conj()).real.sum() for t, g in zip(values, weights)).backward()
            results.append([t.detach() for t in values] + [p.grad for p in net.parameters()])
        worst = max([worst] + [err(a, b) for a, b in zip(*results)])
    print('WORST', worst)
    check = triton_ops._fused_discretisation_check.__wrapped__  # uncached
    with torch.no_grad():
        no_grad = check(torch.device('cpu'))
    with torch.inference_mode():
        inference = check(torch.device('cpu'))
    print('CHECK', check(torch.device('cpu')) and no_grad and inference)
''')


def test_fused_discretisation_in_interpreter():
    """The fused Triton discretisation of the 'pmsn' parameters on CPU (TRITON_INTERPRET=1)
    gives the module's Triton modes (complex log ā and w, d, kernel head per direction) and
    every parameter gradient of the PyTorch path: causal and bidirectional, k = 8, 5, 3, 1,
    37 channels (more than two row blocks, the last partial), raw parameters spread wide. The
    device check passes on the interpreter, also when first called without autograd (no_grad,
    inference mode: a model's first call may be inference)."""
    out = subprocess.run([sys.executable, '-c', DISCRETISE_SCRIPT], env=triton_interpreter(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split('WORST')[-1].split()[0]) < 1e-6, out.stdout
    assert out.stdout.split('CHECK')[-1].split()[0] == 'True', out.stdout


def test_fused_discretisation_check_falls_back_with_a_warning(monkeypatch):
    """The device check accepts the reference maths, refuses (with a warning) a kernel that
    fails to launch or is off by 1e-3, and is never run off CUDA."""
    pytest.importorskip('triton')
    from mmlrf.ops.dendritic import triton_ops
    from mmlrf.ops.dendritic.reference import pmsn_discretisation
    from mmlrf.ops.dendritic.triton_ops import (_fused_discretisation_check, complex64,
                                                fused_discretisation_works, kernel_head)
    check = _fused_discretisation_check.__wrapped__  # uncached
    cpu = torch.device('cpu')
    assert not fused_discretisation_works(cpu)
    if os.environ.get('TRITON_INTERPRET') != '1':  # the compiled kernel cannot take CPU tensors
        with pytest.warns(UserWarning, match='fused discretisation unavailable'):
            assert not check(cpu)

    def pytorch(scale):
        def discretise(log_a_real, a_imag, b, c, log_dt, head):
            log_a, w = pmsn_discretisation(log_a_real, a_imag, torch.view_as_complex(b),
                                           torch.view_as_complex(c), log_dt)
            return (complex64(log_a * scale), complex64(w),
                    kernel_head(log_a.detach(), w.detach()))
        return discretise

    monkeypatch.setattr(triton_ops, 'discretise', pytorch(1.0))
    assert check(cpu)
    monkeypatch.setattr(triton_ops, 'discretise', pytorch(1.001))
    with pytest.warns(UserWarning, match='fused discretisation inaccurate'):
        assert not check(cpu)


# ---------------------------------------------------------------------------- CUDA / Triton
@needs_cuda
def test_fused_discretisation_works_on_cuda():
    """On a GPU the module takes the fused discretisation (the fallback would hide a kernel
    that does not compile there); its values are checked by the module tests below."""
    from mmlrf.ops.dendritic.triton_ops import fused_discretisation_works, triton_available
    if not triton_available():
        pytest.skip('no triton')
    assert fused_discretisation_works(torch.device('cuda', torch.cuda.current_device()))


@needs_cuda
@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
@pytest.mark.parametrize('k', [8, 5])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('order', ORDERS)
def test_triton_equals_reference(order, bidirectional, k, parameterization):
    """C = 7 (not a multiple of the channel block), N = 13·29 = 377 (partial token block)."""
    module = make(channels=7, k=k, order=order, bidirectional=bidirectional,
                  parameterization=parameterization).cuda()
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
    (N = 8191 > every group of BLOCK_M·CHUNK tokens; odd, so the last group is partial), and the
    guarded autotuner keeps all of them."""
    from mmlrf.ops.dendritic.triton_ops import (complex64, forward_configs, kernel_head,
                                                launch_forward, usable_configs)
    torch.manual_seed(4)
    ch, k = 6, 8
    u = torch.randn(2, ch, 8191, device='cuda').to(dtype)
    log_a = torch.complex(
        -torch.rand(ch, k, device='cuda', dtype=torch.float64) * torch.logspace(
            -4, 1, k, device='cuda', dtype=torch.float64),
        2 * torch.randn(ch, k, device='cuda', dtype=torch.float64))
    w = torch.randn(ch, k, device='cuda', dtype=torch.complex128)
    d = torch.randn(ch, device='cuda', dtype=torch.float64)
    seq = u.double().flip(-1) if reverse else u.double()
    ref = fft_conv(seq, DiscreteModes(log_a, w, d))
    ref = ref.flip(-1) if reverse else ref
    kern = kernel_head(log_a, w)
    for config in forward_configs(dtype):
        y = torch.full_like(u, float('nan'))
        launch_forward(u, y, complex64(log_a), complex64(w), d.float(), kern, reverse, config)
        assert rel_err(y, ref) < (1e-5 if dtype == torch.float32 else 1e-2), config
    assert len(usable_configs(dtype, k, u.device)) == len(forward_configs(dtype))


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('k', [8, 5])
@pytest.mark.parametrize('reverse', [False, True])
def test_triton_gradients_long_sequence(reverse, k, dtype):
    """Input and parameter gradients of the default (autotuned / gradient) configs on N = 4500
    (crosses two token groups of the gradient kernel), against float64 FFT autograd."""
    from mmlrf.ops.dendritic.triton_ops import triton_scan
    torch.manual_seed(5)
    ch = 3
    u = torch.randn(2, ch, 4500, device='cuda').to(dtype)
    gy = torch.randn_like(u)
    params = [torch.complex(-torch.rand(ch, k, device='cuda') * torch.logspace(
                  -3, 0.5, k, device='cuda'), 2 * torch.randn(ch, k, device='cuda')),
              torch.randn(ch, k, device='cuda', dtype=torch.complex64),
              torch.randn(ch, device='cuda')]
    inputs = [t.requires_grad_() for t in [u] + params]
    y = triton_scan(inputs[0], DiscreteModes(*inputs[1:]), reverse=reverse)
    got = [y] + list(torch.autograd.grad((y * gy).sum(), inputs))
    ref_in = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
              .requires_grad_() for t in inputs]
    seq = ref_in[0].flip(-1) if reverse else ref_in[0]
    ref = fft_conv(seq, DiscreteModes(*ref_in[1:]))
    ref = ref.flip(-1) if reverse else ref
    refs = [ref] + list(torch.autograd.grad((ref * gy.double()).sum(), ref_in))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(('y', 'u', 'log_a', 'w', 'd'), got, refs):
        assert torch.isfinite(a).all() and rel_err(a, b) < tol, name


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
    """N = 8192 tokens; extra memory beyond input and output ≤ 2× the output."""
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
