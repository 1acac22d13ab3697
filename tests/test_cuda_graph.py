"""CUDA-graph replay of fixed-shape inference (mmlrf.cuda_graph) and its benchmark cases."""
import contextlib
import gc
import os
import subprocess
import sys
import weakref

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch

from mmlrf.analysis import benchmark as bm
from mmlrf.cuda_graph import GraphedForward
from devices import needs_cuda
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


HOST_SYNCS = ('item', 'cpu', 'tolist', 'numpy', '__bool__', '__int__', '__float__', '__index__')


@contextlib.contextmanager
def record_host_syncs():
    """Record calls of the Tensor methods that would synchronise a CUDA tensor with the host."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_SYNCS}

    def spy(name):
        def method(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)
        return method
    for name in HOST_SYNCS:
        setattr(torch.Tensor, name, spy(name))
    try:
        yield calls
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize('variant', ['official', 'lrf_ssa', 'lrf_dyn', 'lrf_dyn:stream'])
def test_inference_has_no_host_synchronisation(variant):
    """What CUDA-graph capture needs, checked on the CPU: after a first call (caches filled), an
    eval forward calls none of the host-synchronising Tensor methods. Control: the tridiagonal
    dynamics in training mode do (their eigh runs on the host)."""
    model, _, _ = bm.build_variant_model(os.path.join(ROOT, bm.TOY_CONFIG), variant)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x, mode='tensor')
        with record_host_syncs() as calls:
            model(x, mode='tensor')
    assert calls == []
    from mmlrf.attention.dynamics import DendriticDynamics
    control = DendriticDynamics(4, mode='scan', parameterization='tridiagonal')
    with record_host_syncs() as calls:
        control(torch.randn(1, 4, 3, 3))
    assert 'cpu' in calls


def test_non_cuda_examples_are_refused():
    with pytest.raises(ValueError, match='CUDA example'):
        GraphedForward(lambda x: x * 2, torch.zeros(3))
    with pytest.raises(ValueError, match='CUDA example'):
        GraphedForward(lambda x: x * 2, [0.0])


def test_graphed_cases_are_inference_only_and_need_cuda():
    with pytest.raises(ValueError, match='infer mode'):
        bm.model_cases(bm.MODEL_19M_CONFIG, ['official'], [(64, 64)], modes=['train'],
                       graphed=(True,))
    cases = bm.model_cases(bm.MODEL_19M_CONFIG, ['official'], [(64, 64)], fused=(False, True),
                           graphed=(False, True))
    assert [(c['fuse_conv_bn'], c['cuda_graph']) for c in cases] == [
        (False, False), (False, True), (True, False), (True, True)]
    assert bm.group_key(cases[3]).endswith(' fused-BN cuda-graph')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'analysis', 'benchmark.py'),
                          '--config', bm.TOY_CONFIG, '--cuda-graph', '--device', 'cpu'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and '--cuda-graph needs a CUDA --device' in out.stderr


@needs_cuda
def test_graphed_segmentor_equals_eager_for_new_inputs():
    model, _, _ = bm.build_variant_model(os.path.join(ROOT, bm.TOY_CONFIG), 'lrf_dyn',
                                         device='cuda')
    model.eval()
    gen = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 64, 64, generator=gen).cuda() for _ in range(3)]
    graphed = GraphedForward(lambda x: model(x, mode='tensor'), frames[0])
    for frame in frames:
        with torch.no_grad():
            expect = model(frame, mode='tensor')
        torch.testing.assert_close(graphed(frame), expect)
    with pytest.raises(ValueError, match='captured for'):
        graphed(torch.zeros(1, 3, 32, 32, device='cuda'))


def graphed_toy_model() -> tuple[GraphedForward, weakref.ref, torch.Tensor, torch.Tensor]:
    """A graphed toy LRF-Dyn segmentor whose only reference is the captured forward (as in the
    benchmark's graphed cases), a weak reference to the model, the frame and its eager output."""
    model, _, _ = bm.build_variant_model(os.path.join(ROOT, bm.TOY_CONFIG), 'lrf_dyn',
                                         device='cuda')
    model.eval()
    frame = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        expect = model(frame, mode='tensor').clone()
    return (GraphedForward(lambda x: model(x, mode='tensor'), frame), weakref.ref(model), frame,
            expect)


@needs_cuda
def test_graph_keeps_what_its_replay_reads_alive():
    """The graph reads the model's parameters in place: with the caller's references gone, the
    freed memory handed back (empty_cache) and new memory filled with NaN, the model is still
    alive and a replay equals the eager output. (Before the fix the benchmark's graphed case
    replayed over freed parameters: an illegal memory access on the H200.)"""
    graphed, model_ref, frame, expect = graphed_toy_model()
    gc.collect()
    torch.cuda.empty_cache()
    filler = torch.full((64 << 20,), float('nan'), device='cuda')  # 256 MiB
    assert model_ref() is not None
    torch.testing.assert_close(graphed(frame), expect)
    del filler


@needs_cuda
def test_graphed_benchmark_case_reports_its_pool():
    cases = bm.model_cases(os.path.join(ROOT, bm.TOY_CONFIG), ['lrf_dyn'], [(64, 64)],
                           graphed=(True,))
    row = bm.run_case(cases[0], 'cuda', warmup=1, repeats=2)
    assert 'error' not in row, row['error']
    assert row['graph_pool_mib'] > 0 and row['time_ms'] > 0


@needs_cuda
def test_bench_dynamics_cuda_graph_row_replays_the_forward():
    """The CUDA-graph row times a replay that recomputes the eager forward of its input."""
    tool = load_tool('analysis/bench_dynamics_gpu')
    module = tool.make_module(32, torch.device('cuda'))
    module.mode = 'triton'
    x = torch.randn(2, 32, 8, 16, device='cuda')
    rows = []
    graphed = tool.graphed_row(module, x, lambda name, fn, extra: rows.append((name, fn)))
    (name, replay), = rows
    graphed.static_output.zero_()
    replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        torch.testing.assert_close(graphed.static_output, module(x))
    assert name == 'triton fwd (CUDA graph)'
