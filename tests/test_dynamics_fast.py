"""Fast paths of the dendritic dynamics (issue 5): chunked CPU scans and the Triton GPU kernel
equal the reference FFT / token-by-token operators, forward and gradients, for every option."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from packaging.version import Version

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.attention.dynamics import (PARAMETERIZATIONS, DendriticDynamics, fft_conv,
                                      recurrent_scan)
from mmlrf.attention.dynamics_scan import (causal_toeplitz, chunk_length, chunked_scan,
                                          streaming_scan)

from compiled_graphs import SCATTER_ADDS, backward_ops
from devices import needs_cuda

ORDERS = ('raster', 'snake', 'column')
CPU_FAST = ('scan', 'stream')


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


def scan_outputs_and_grads(scan, leaves, grad):
    """``[y, du, d log_a, dw, dd]`` of ``y = scan(u, log_a, w, d)`` on fresh copies of
    ``leaves``, back-propagating ``grad`` (dL/dy)."""
    leaves = [t.clone().requires_grad_() for t in leaves]
    y = scan(*leaves)
    y.backward(grad)
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
@pytest.mark.parametrize('chunk_size', [2, 128])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('order', ORDERS)
@pytest.mark.parametrize('mode', CPU_FAST)
def test_cpu_fast_paths_equal_reference(mode, order, bidirectional, chunk_size,
                                        parameterization):
    """N = 7·9 = 63: partial last chunks of L = 2 and of L = chunk_length(63) = 4 (cap 128)."""
    module = make(order=order, bidirectional=bidirectional, chunk_size=chunk_size,
                  parameterization=parameterization).double()
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


@pytest.mark.parametrize('chunk_size', [1, 5, 32, 64])
def test_chunk_length_is_the_largest_power_of_two_with_square_at_most_n(chunk_size):
    """Capped at ``chunk_size`` (any positive length); below the cap a power of two."""
    for n in range(1, 5000):
        length = chunk_length(n, chunk_size)
        assert 1 <= length <= chunk_size and length * length <= n, (n, length)
        if length < chunk_size:
            assert length & (length - 1) == 0 and 4 * length * length > n, (n, length)


@pytest.mark.parametrize('mode, scan', [('scan', 'chunked_scan'), ('stream', 'streaming_scan')])
def test_module_scans_in_chunks_of_chunk_length(mode, scan, monkeypatch):
    """The module passes ``chunk_length(N, chunk_size)`` to the scan, in both directions."""
    import mmlrf.attention.dynamics as dynamics
    lengths = []
    real = getattr(dynamics, scan)

    def spy(*args):
        lengths.append(args[-1])
        return real(*args)
    monkeypatch.setattr(dynamics, scan, spy)
    module = make(mode=mode, bidirectional=True, chunk_size=16)
    with torch.no_grad():
        module(torch.randn(1, 3, 10, 10))   # N = 100: L = 8
        module(torch.randn(1, 3, 30, 40))   # N = 1200: L = 32, capped at 16
    assert lengths == [8, 8, 16, 16]


def test_chunked_scan_in_one_chunk_has_the_reference_gradients():
    """L ≥ N: one chunk, no state carried in (the backward's no-carry branch)."""
    torch.manual_seed(5)
    leaves = [torch.randn(2, 3, 20, dtype=torch.float64), -torch.rand(3, 4, dtype=torch.float64),
              torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    g = torch.randn(2, 3, 20, dtype=torch.float64)
    for got, ref in zip(scan_outputs_and_grads(lambda *t: chunked_scan(*t, 32), leaves, g),
                        scan_outputs_and_grads(fft_conv, leaves, g)):
        assert rel_err(got, ref) < 1e-10


def test_chunked_scan_keeps_only_its_inputs_for_backward():
    """No chunk operator ([C, L, L] Toeplitz, [C, k, L] powers) and no copy of u is kept for
    backward: every saved tensor shares the storage of an input."""
    torch.manual_seed(3)
    u = torch.randn(2, 16, 256, requires_grad=True)
    log_a = (-torch.rand(16, 4)).requires_grad_()
    w, d = torch.randn(16, 4, requires_grad=True), torch.randn(16, requires_grad=True)
    inputs = {t.untyped_storage().data_ptr() for t in (u, log_a, w, d)}
    saved = []

    def pack(t):
        saved.append((t.untyped_storage().data_ptr(), tuple(t.shape)))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = chunked_scan(u, log_a, w, d, 64)
    assert saved and all(ptr in inputs for ptr, _ in saved), saved
    y.sum().backward()
    assert all(t.grad is not None for t in (u, log_a, w, d))


def test_chunked_scan_trains_under_torch_compile():
    """Training under ``torch.compile``: the scan traces whole (its custom backward, which calls
    ``torch.autograd.grad``, is replaced by autograd through the chunk products) and gives the
    eager output and gradients, with a padded last chunk."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(4)
    leaves = [torch.randn(2, 6, 50), -torch.rand(6, 4), torch.randn(6, 4), torch.randn(6)]
    g = torch.randn(2, 6, 50)
    compiled = torch.compile(chunked_scan, backend='aot_eager', fullgraph=True)
    expect = scan_outputs_and_grads(lambda *t: chunked_scan(*t, 16), leaves, g)
    got = scan_outputs_and_grads(lambda *t: compiled(*t, 16), leaves, g)
    for a, b in zip(got, expect):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize('length', [1, 2, 5, 16])
def test_causal_toeplitz_eager_and_compiled_match_the_definition(length):
    """``T[s, t] = K[t−s]`` for t ≥ s, else 0, and ``dK[m] = Σ_{t−s=m} dT[s, t]``: the eager view
    and the compiled periodic buffer alike."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(length)
    kernel = torch.randn(3, 2, length, dtype=torch.float64)
    grad = torch.randn(3, 2, length, length, dtype=torch.float64)
    expect = torch.zeros_like(grad)
    expect_grad = torch.zeros_like(kernel)
    for s in range(length):
        for t in range(s, length):
            expect[..., s, t] = kernel[..., t - s]
            expect_grad[..., t - s] += grad[..., s, t]
    for fn in (causal_toeplitz, torch.compile(causal_toeplitz, backend='aot_eager',
                                              fullgraph=True)):
        leaf = kernel.clone().requires_grad_()
        out = fn(leaf)
        out.backward(grad)
        assert torch.equal(out, expect)
        assert torch.allclose(leaf.grad, expect_grad, rtol=0, atol=1e-12)


def test_compiled_scan_backward_has_no_scatter():
    """The backward of the compiled scan holds no scatter-add (``unfold`` had one): inductor's
    CPU code for one fused into a transposed tile writes out of bounds (torch 2.13)."""
    leaves = [torch.randn(2, 6, 50), -torch.rand(6, 4), torch.randn(6, 4), torch.randn(6)]
    ops = backward_ops(lambda *t: chunked_scan(*t, 16), *leaves)
    assert 'bmm' in ops, ops  # the graph is the scan's backward
    assert not ops & SCATTER_ADDS, ops


def test_auto_uses_scan_on_cpu_and_mode_is_switchable():
    module = make(mode='auto')
    x = torch.randn(1, 3, 5, 6)
    assert module.resolved_mode(x) == 'scan'
    y_auto = module(x)
    module.mode = 'fft'
    assert rel_err(y_auto, module(x)) < 1e-5


def test_torch_compile_traces_the_dynamics_whole():
    """Inference under ``torch.compile``: one graph (the parameter cache and the Triton check do
    not break it) and the eager output, bidirectional, in snake order."""
    import torch._dynamo
    from mmlrf.attention.dynamics_triton import triton_available
    torch._dynamo.reset()
    module = make(mode='scan', bidirectional=True, order='snake', chunk_size=8).eval()
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        y_ref = module(x)
        explained = torch._dynamo.explain(module)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        y = torch.compile(module)(x)
    assert rel_err(y, y_ref) < 1e-6
    # resolving 'auto' asks triton_available(): a constant for the compiler, not a break
    probe = torch.compile(lambda t: t + 1 if triton_available() else t - 1, fullgraph=True,
                          backend='eager')
    assert torch.equal(probe(x), x + 1 if triton_available() else x - 1)


@pytest.mark.parametrize('mode', CPU_FAST + ('fft',))
def test_bfloat16_input_cpu(mode):
    module = make(mode=mode, bidirectional=True)
    x = torch.randn(2, 3, 6, 7).bfloat16()
    y = module(x)
    assert y.dtype == torch.bfloat16
    module.mode = 'recurrent'
    ref = module.double()(x.double())
    assert rel_err(y, ref) < 1e-2


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
    from mmlrf.attention.dynamics import fft_conv
    from mmlrf.attention.dynamics_triton import (_TritonDynamics, kernel_head, launch_forward,
                                                 launch_param_grad)
    from mmlrf.attention.scan_triton import FP32_CONFIGS, GRAD_CONFIG, LOWP_CONFIGS

    def err(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    def case(bsz, ch, n, k, seed):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(bsz, ch, n, generator=g)
        # decays from ~1 − 1e-3 to e^-3 (fast modes vanish within a chunk)
        log_a = -torch.rand(ch, k, generator=g) * torch.logspace(-3, 0.5, k)
        return u, log_a, torch.randn(ch, k, generator=g), torch.randn(ch, generator=g)

    def reference(u, log_a, w, d, reverse, gy):
        ref_in = [t.detach().double().requires_grad_() for t in (u, log_a, w, d)]
        seq = ref_in[0].flip(-1) if reverse else ref_in[0]
        ref = fft_conv(seq, *ref_in[1:])
        ref = ref.flip(-1) if reverse else ref
        return [ref] + list(torch.autograd.grad((ref * gy.double()).sum(), ref_in))

    worst = {}
    # Autograd through the default (interpreter) tiles: 256-token groups.
    for bsz, ch, n, k, reverse in [(2, 3, 300, 8, False), (1, 5, 420, 5, True),
                                   (1, 2, 37, 8, True), (2, 2, 513, 5, False)]:
        u, log_a, w, d = case(bsz, ch, n, k, n)
        inputs = [t.requires_grad_() for t in (u, log_a, w, d)]
        gy = torch.randn(bsz, ch, n)
        y = _TritonDynamics.apply(*inputs, kernel_head(log_a.detach(), w.detach()), reverse)
        got = [y] + list(torch.autograd.grad((y * gy).sum(), inputs))
        for name, a, b in zip(('y', 'u', 'log_a', 'w', 'd'), got,
                              reference(u, log_a, w, d, reverse, gy)):
            worst[name] = max(worst.get(name, 0.0), err(a, b))
    # The GPU tiles (every autotune candidate, the gradient config): N crosses their groups.
    for reverse, k in [(False, 8), (True, 5)]:
        u, log_a, w, d = case(1, 2, 2100, k, k)
        gy = torch.randn_like(u)
        ref = reference(u, log_a, w, d, reverse, gy)
        kern = kernel_head(log_a, w)
        for config in FP32_CONFIGS + LOWP_CONFIGS:
            y = torch.full_like(u, float('nan'))
            launch_forward(u, y, log_a, w, d, kern, reverse, config)
            worst['y'] = max(worst['y'], err(y, ref[0]))
        grads = launch_param_grad(u, gy, log_a, w, reverse, GRAD_CONFIG)
        for name, a, b in zip(('log_a', 'w', 'd'), grads, ref[2:]):
            worst[name] = max(worst[name], err(a, b))
    print('WORST', max(worst.values()), worst)
''')


def test_triton_kernels_in_interpreter():
    """The Triton kernels' maths on CPU via TRITON_INTERPRET=1 (only where triton is installed
    without a GPU; with CUDA the compiled kernels are tested directly below): forward and every
    gradient against float64 FFT autograd, k = 8 and 5 (padded modes), both directions. The
    default interpreter tiles run 256-token groups (N = 300, 420, 513 carry the state across
    groups, N = 37 is less than one group); every GPU autotune candidate and the gradient config
    run on N = 2100 (more than one group of each)."""
    out = subprocess.run([sys.executable, '-c', INTERPRETER_SCRIPT], env=triton_interpreter(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split('WORST')[-1].split()[0]) < 1e-5, out.stdout


DISCRETISE_SCRIPT = textwrap.dedent('''
    import copy, torch, mmlrf
    from mmlrf.attention import dynamics_triton
    from mmlrf.attention.dynamics import DendriticDynamics

    def err(a, b):  # exact zeros (the anti-causal skip) compare as 0, not 0/0
        diff = (a.double() - b.double()).abs().max()
        return (diff / b.double().abs().max().clamp_min(1e-30)).item()

    worst = 0.0
    for seed, (bidirectional, k, spread) in enumerate([(False, 8, 1.0), (True, 5, 1.0),
                                                        (True, 1, 8.0), (False, 3, 8.0)]):
        torch.manual_seed(seed)
        module = DendriticDynamics(37, k, bidirectional=bidirectional)  # 37: partial row block
        with torch.no_grad():
            for p in module.parameters():
                p.add_(spread * torch.randn_like(p))
        weights = None
        results = []
        # the fused kernels on the fp32 module; the PyTorch path on a float64 copy
        for fused, net in ((True, module), (False, copy.deepcopy(module).double())):
            dynamics_triton.fused_discretisation_works = lambda device, fused=fused: fused
            values = [t for direction in net._triton_parameters() for t in direction]
            if weights is None:
                weights = [torch.randn_like(t) for t in values]
            sum((t * g).sum() for t, g in zip(values, weights)).backward()
            results.append([t.detach() for t in values] + [p.grad for p in net.parameters()])
        worst = max([worst] + [err(a, b) for a, b in zip(*results)])
    print('WORST', worst)
    check = dynamics_triton._fused_discretisation_check.__wrapped__  # uncached
    with torch.no_grad():
        no_grad = check(torch.device('cpu'))
    with torch.inference_mode():
        inference = check(torch.device('cpu'))
    print('CHECK', check(torch.device('cpu')) and no_grad and inference)
''')


def test_fused_discretisation_in_interpreter():
    """The fused Triton discretisation on CPU (TRITON_INTERPRET=1) gives the module's Triton
    parameters (log ā, w, d, kernel head per direction) and every parameter gradient of the
    PyTorch path: causal and bidirectional, k = 8, 5, 3, 1, 37 channels (more than two row
    blocks, the last partial), raw parameters spread wide (leaks and step sizes near both
    ends of their ranges). The device check passes on the interpreter, also when first called
    without autograd (no_grad, inference mode: a model's first call may be inference)."""
    out = subprocess.run([sys.executable, '-c', DISCRETISE_SCRIPT], env=triton_interpreter(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split('WORST')[-1].split()[0]) < 2e-7, out.stdout
    assert out.stdout.split('CHECK')[-1].split()[0] == 'True', out.stdout


def test_fused_discretisation_check_falls_back_with_a_warning(monkeypatch):
    """The device check accepts the reference maths, refuses (with a warning) a kernel that
    fails to launch or is off by 1e-3, and is never run off CUDA."""
    pytest.importorskip('triton')
    from mmlrf.attention import discretise_triton
    from mmlrf.attention.dynamics import modal_discretisation
    from mmlrf.attention.dynamics_triton import (_fused_discretisation_check,
                                                 fused_discretisation_works, kernel_head)
    check = _fused_discretisation_check.__wrapped__  # uncached
    cpu = torch.device('cpu')
    assert not fused_discretisation_works(cpu)
    if os.environ.get('TRITON_INTERPRET') != '1':  # the compiled kernel cannot take CPU tensors
        with pytest.warns(UserWarning, match='fused discretisation unavailable'):
            assert not check(cpu)

    def pytorch(scale):
        def discretise(leak_raw, dt_raw, b, c, dt_min, dt_max, head):
            log_a, b_bar, c_mode = modal_discretisation(leak_raw, dt_raw, b, c, dt_min, dt_max)
            w = b_bar * c_mode
            return (log_a * scale).float(), w.float(), kernel_head(log_a.detach(), w.detach())
        return discretise

    monkeypatch.setattr(discretise_triton, 'discretise', pytorch(1.0))
    assert check(cpu)
    monkeypatch.setattr(discretise_triton, 'discretise', pytorch(1.001))
    with pytest.warns(UserWarning, match='fused discretisation inaccurate'):
        assert not check(cpu)


# ---------------------------------------------------------------------------- CUDA / Triton
@needs_cuda
def test_fused_discretisation_works_on_cuda():
    """On a GPU the module takes the fused discretisation (the fallback would hide a kernel
    that does not compile there); its values are checked by the module tests below."""
    from mmlrf.attention.dynamics_triton import fused_discretisation_works, triton_available
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
    from mmlrf.attention.dynamics_triton import (forward_configs, kernel_head, launch_forward,
                                                 usable_configs)
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
    for config in forward_configs(dtype):
        y = torch.full_like(u, float('nan'))
        launch_forward(u, y, log_a.float(), w.float(), d.float(), kern, reverse, config)
        assert rel_err(y, ref) < (1e-5 if dtype == torch.float32 else 1e-2), config
    assert len(usable_configs(dtype, k, u.device)) == len(forward_configs(dtype))


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('k', [8, 5])
@pytest.mark.parametrize('reverse', [False, True])
def test_triton_gradients_long_sequence(reverse, k, dtype):
    """Input and parameter gradients of the default (autotuned / gradient) configs on N = 4500
    (crosses two token groups of the gradient kernel), against float64 FFT autograd."""
    from mmlrf.attention.dynamics_triton import triton_scan
    torch.manual_seed(5)
    ch = 3
    u = torch.randn(2, ch, 4500, device='cuda').to(dtype)
    gy = torch.randn_like(u)
    params = [-torch.rand(ch, k, device='cuda') * torch.logspace(-3, 0.5, k, device='cuda'),
              torch.randn(ch, k, device='cuda'), torch.randn(ch, device='cuda')]
    inputs = [t.requires_grad_() for t in [u] + params]
    y = triton_scan(*inputs, reverse=reverse)
    got = [y] + list(torch.autograd.grad((y * gy).sum(), inputs))
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    seq = ref_in[0].flip(-1) if reverse else ref_in[0]
    ref = fft_conv(seq, *ref_in[1:])
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
