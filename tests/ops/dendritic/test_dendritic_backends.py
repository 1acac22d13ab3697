"""Every evaluation path of the dendritic operator against the reference: one grid over backend,
parameterisation, scan order, direction and chunk length, forward and every gradient."""
import pytest
import torch

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.ops.dendritic import BACKENDS, PARAMETERIZATIONS, DendriticDynamics, DiscreteModes
from mmlrf.ops.dendritic.reference import fft_conv, recurrent_scan
from mmlrf.ops.dendritic.scan import chunked_scan, streaming_scan

from dense_reference import naive_forward, randomise, rel_err

ORDERS = ('raster', 'snake', 'column')
CPU_BACKENDS = tuple(name for name in BACKENDS if name != 'triton')


def outputs_and_grads(module, x, weight, mode):
    """The module's output on ``x`` in ``mode`` and the gradients of ``Σ weight·y`` with respect
    to ``x`` and every parameter."""
    module.mode = mode
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = module(x)
    (y * weight).sum().backward()
    return y.detach(), [x.grad] + [p.grad.clone() for p in module.parameters()]


def reference(module, x, weight):
    """The dense loops' output (:func:`naive_forward`) and, as gradients, autograd through the
    token-by-token recurrence of elementary operations (``'recurrent'``)."""
    _, grads = outputs_and_grads(module, x, weight, 'recurrent')
    return naive_forward(module, x), grads


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
@pytest.mark.parametrize('chunk_size', [2, 128])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('order', ORDERS)
@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_backend_equals_reference(backend, order, bidirectional, chunk_size, parameterization):
    """N = 7·9 = 63 tokens: partial last chunks of L = 2 and of L = chunk_length(63) = 4;
    float64, relative error ≤ 1e-10 for the output and every gradient (input and parameters)
    (the dense loops round differently: matrix_exp and solve instead of the modal formulas)."""
    torch.manual_seed(0)
    module = randomise(DendriticDynamics(3, 4, order=order, bidirectional=bidirectional,
                                         chunk_size=chunk_size,
                                         parameterization=parameterization)).double()
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    weight = torch.randn_like(x)
    y_ref, g_ref = reference(module, x, weight)
    y, g = outputs_and_grads(module, x, weight, backend)
    assert rel_err(y, y_ref) < 1e-10
    for got, ref in zip(g, g_ref):
        assert rel_err(got, ref) < 1e-10


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_backend_float32_n4096(backend):
    """N = 64·64 = 4096 tokens in float32 against the float64 reference."""
    torch.manual_seed(1)
    module = randomise(DendriticDynamics(2, 8, bidirectional=True, order='snake',
                                         dt_min=1e-4, dt_max=1e-2), seed=1)
    x = torch.randn(1 if backend == 'recurrent' else 2, 2, 64, 64)
    with torch.no_grad():
        module.mode = backend
        y = module(x)
        module.double().mode = 'fft'
        ref = module(x.double())
    assert y.dtype == torch.float32
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_backend_bfloat16(backend):
    """A bfloat16 input is computed in float32 and returned in bfloat16."""
    torch.manual_seed(2)
    module = randomise(DendriticDynamics(3, 4, mode=backend, bidirectional=True))
    x = torch.randn(2, 3, 6, 7).bfloat16()
    y = module(x)
    assert y.dtype == torch.bfloat16
    ref = naive_forward(module, x.double())
    assert rel_err(y, ref) < 1e-2


@pytest.mark.parametrize('scan', [chunked_scan, streaming_scan])
def test_chunked_scans_extreme_decays(scan):
    """Very fast and very slow modes (ā from e^-80 to 1 − 1e-7): no overflow, exact."""
    torch.manual_seed(2)
    log_a = torch.tensor([[-80.0, -1e-7, -3.0], [-1e-3, -20.0, -0.5]], dtype=torch.float64)
    modes = DiscreteModes(log_a, torch.randn(2, 3, dtype=torch.float64),
                          torch.randn(2, dtype=torch.float64))
    u = torch.randn(3, 2, 200, dtype=torch.float64)
    ref = recurrent_scan(u, modes)
    assert rel_err(fft_conv(u, modes), ref) < 1e-10
    assert rel_err(scan(u, modes, 32), ref) < 1e-12


def test_backend_table_shares_one_signature():
    """Each backend is ``fn(u, modes, reverse, chunk_size)`` and the reverse direction is the
    causal operator on the reversed sequence."""
    torch.manual_seed(3)
    u = torch.randn(2, 3, 40, dtype=torch.float64)
    modes = DiscreteModes(-torch.rand(3, 4, dtype=torch.float64),
                          torch.randn(3, 4, dtype=torch.float64),
                          torch.randn(3, dtype=torch.float64))
    expect = fft_conv(u, modes)
    for name in CPU_BACKENDS:
        assert rel_err(BACKENDS[name](u, modes, False, 8), expect) < 1e-12, name
        reverse = BACKENDS[name](u, modes, True, 8)
        assert rel_err(reverse, fft_conv(u.flip(-1), modes).flip(-1)) < 1e-12, name
