"""The chunked PyTorch scans: chunk lengths, what backward keeps, ``torch.compile``."""
import pytest
import torch

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.ops.dendritic import DendriticDynamics, DiscreteModes
from mmlrf.ops.dendritic.reference import fft_conv
from mmlrf.ops.dendritic.scan import causal_toeplitz, chunk_length, chunked_scan

from compiled_graphs import SCATTER_ADDS, backward_ops
from dense_reference import randomise, rel_err


def chunked(chunk_size):
    """``chunked_scan`` as a function of the four tensors ``(u, log_a, w, d)``."""
    return lambda u, log_a, w, d: chunked_scan(u, DiscreteModes(log_a, w, d), chunk_size)


def fft(u, log_a, w, d):
    return fft_conv(u, DiscreteModes(log_a, w, d))


def scan_outputs_and_grads(scan, leaves, grad):
    """``[y, du, d log_a, dw, dd]`` of ``y = scan(u, log_a, w, d)`` on fresh copies of
    ``leaves``, back-propagating ``grad`` (dL/dy)."""
    leaves = [t.clone().requires_grad_() for t in leaves]
    y = scan(*leaves)
    y.backward(grad)
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize('chunk_size', [1, 5, 32, 64])
def test_chunk_length_is_the_largest_power_of_two_with_square_at_most_n(chunk_size):
    """Capped at ``chunk_size`` (any positive length); below the cap a power of two."""
    for n in range(1, 5000):
        length = chunk_length(n, chunk_size)
        assert 1 <= length <= chunk_size and length * length <= n, (n, length)
        if length < chunk_size:
            assert length & (length - 1) == 0 and 4 * length * length > n, (n, length)


@pytest.mark.parametrize('mode', ['scan', 'stream'])
def test_module_scans_in_chunks_of_chunk_length(mode, monkeypatch):
    """The module's scans take ``chunk_length(N, chunk_size)``, in both directions."""
    import mmlrf.ops.dendritic.backends as backends
    lengths = []

    def spy(n, chunk_size):
        lengths.append(chunk_length(n, chunk_size))
        return lengths[-1]
    monkeypatch.setattr(backends, 'chunk_length', spy)
    module = randomise(DendriticDynamics(3, 4, mode=mode, bidirectional=True, chunk_size=16))
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
    for got, ref in zip(scan_outputs_and_grads(chunked(32), leaves, g),
                        scan_outputs_and_grads(fft, leaves, g)):
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
        y = chunked(64)(u, log_a, w, d)
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
    compiled = torch.compile(chunked(16), backend='aot_eager', fullgraph=True)
    expect = scan_outputs_and_grads(chunked(16), leaves, g)
    got = scan_outputs_and_grads(compiled, leaves, g)
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
    ops = backward_ops(chunked(16), *leaves)
    assert 'bmm' in ops, ops  # the graph is the scan's backward
    assert not ops & SCATTER_ADDS, ops
