"""Suite-wide test settings."""
import pytest
import torch
from mmengine.registry import DefaultScope


@pytest.fixture(scope='session', autouse=True)
def single_thread():
    """One intra-op thread: the suite's models are tiny, and on a 2-core machine (CI) two
    OpenMP threads competing with other processes made steps 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def mmseg_default_scope():
    """Every test starts in mmseg's registry scope (what mmlrf's configs set) and cannot leak
    the scope of a Runner it created into the next test."""
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with Dynamo's ``eager`` backend (captures, generates no code: tests of
    what is compiled stay short); yields the list of the functions compiled so far."""
    compiled = []
    torch_compile = torch.compile

    def compile_eager(fn, **kwargs):
        compiled.append(fn)
        return torch_compile(fn, backend='eager', **kwargs)
    monkeypatch.setattr(torch, 'compile', compile_eager)
    yield compiled


@pytest.fixture
def strips_on_small_maps(monkeypatch):
    """Row strips (:mod:`mmlrf.inference.strips`) on the tests' small maps too, which would
    otherwise run whole (``MIN_STRIP_BYTES``)."""
    monkeypatch.setattr('mmlrf.inference.strips.MIN_STRIP_BYTES', 0)


@pytest.fixture
def cuda_precision():
    """Restores the process-wide CUDA precision flags (TF32 in matrix products and in cuDNN
    convolutions, cuDNN autotuning) after the test."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark) = saved
