"""CUDA-graph replay of fixed-shape inference (``GraphedForward``): what capture needs checked
on the CPU (no host synchronisation in an eval forward), argument checks, and on CUDA (skipped
without it) replays equal to eager inference for new inputs, with the model kept alive."""
import contextlib
import gc
import weakref

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch

from mmlrf.inference.cuda_graph import GraphedForward
from mmlrf.ops.dendritic import DendriticDynamics

from devices import needs_cuda
from toy_model import build_toy_model

HOST_SYNCS = ('item', 'cpu', 'tolist', 'numpy', '__bool__', '__int__', '__float__', '__index__')

#: The toy model with each token mixer (and the streaming dynamics).
VARIANTS = {
    'official': (dict(type='SSA', order='qk'), None),
    'lrf_ssa': (dict(type='LRFSSA', order='qk'), None),
    'lrf_dyn': (None, None),
    'lrf_dyn:stream': (None, 'stream'),
}


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


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_inference_has_no_host_synchronisation(variant):
    """What CUDA-graph capture needs, checked on the CPU: after a first call (caches filled), an
    eval forward calls none of the host-synchronising Tensor methods. Control: the tridiagonal
    dynamics in training mode do (their eigh runs on the host)."""
    model = build_toy_model(*VARIANTS[variant]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x, mode='tensor')
        with record_host_syncs() as calls:
            model(x, mode='tensor')
    assert calls == []
    control = DendriticDynamics(4, mode='scan', parameterization='tridiagonal')
    with record_host_syncs() as calls:
        control(torch.randn(1, 4, 3, 3))
    assert 'cpu' in calls


def test_non_cuda_examples_are_refused():
    with pytest.raises(ValueError, match='CUDA example'):
        GraphedForward(lambda x: x * 2, torch.zeros(3))
    with pytest.raises(ValueError, match='CUDA example'):
        GraphedForward(lambda x: x * 2, [0.0])


@needs_cuda
def test_graphed_segmentor_equals_eager_for_new_inputs():
    model = build_toy_model(device='cuda').eval()
    gen = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 64, 64, generator=gen).cuda() for _ in range(3)]
    graphed = GraphedForward(lambda x: model(x, mode='tensor'), frames[0])
    for frame in frames:
        with torch.no_grad():
            expect = model(frame, mode='tensor')
        torch.testing.assert_close(graphed(frame), expect)
    with pytest.raises(ValueError, match='captured for'):
        graphed(torch.zeros(1, 3, 32, 32, device='cuda'))
    with pytest.raises(ValueError, match='warmup'):
        GraphedForward(lambda x: model(x, mode='tensor'), frames[0], warmup=0)


def graphed_toy_model() -> tuple[GraphedForward, weakref.ref, torch.Tensor, torch.Tensor]:
    """A graphed toy LRF-Dyn segmentor whose only reference is the captured forward, a weak
    reference to the model, the frame and its eager output."""
    model = build_toy_model(device='cuda').eval()
    frame = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        expect = model(frame, mode='tensor').clone()
    return (GraphedForward(lambda x: model(x, mode='tensor'), frame), weakref.ref(model), frame,
            expect)


@needs_cuda
def test_graph_keeps_what_its_replay_reads_alive():
    """The graph reads the model's parameters in place: with the caller's references gone, the
    freed memory handed back (empty_cache) and new memory filled with NaN, the model is still
    alive and a replay equals the eager output (a replay over freed parameters would read
    whatever took their place)."""
    graphed, model_ref, frame, expect = graphed_toy_model()
    gc.collect()
    torch.cuda.empty_cache()
    filler = torch.full((64 << 20,), float('nan'), device='cuda')  # 256 MiB
    assert model_ref() is not None
    torch.testing.assert_close(graphed(frame), expect)
    del filler
