"""Robustness: checkpoint files (atomic save, truncated file), eval-mode batch independence,
build-time option validation."""
from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

import mmlrf  # noqa: F401
from mmengine.fileio import LocalBackend
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
from mmlrf.interop import ATOMIC_BACKEND, CorruptCheckpointError
from mmseg.registry import MODELS

TINY = {
    'SDTV3': dict(type='SDTV3', arch=None, embed_dims=[8, 16, 32, 32], num_heads=2),
    'Spikformer': dict(type='Spikformer', arch=dict(embed_dims=16, depth=2, num_heads=2), T=2,
                       patch_size=8, out_indices=(0, 0, 1, 1)),
    'QKFormer': dict(type='QKFormer', arch=dict(embed_dims=16, depths=(1, 1, 1), num_heads=2), T=2),
}


def _good_and_half(path: Path) -> tuple[dict, bytes]:
    state = {'state_dict': {'w': torch.arange(2000.)}, 'meta': {'iter': 1}}
    save_checkpoint(state, str(path))
    data = path.read_bytes()
    return state, data


def _failing_write(monkeypatch, fraction: float = 0.5) -> None:
    """Make the next binary file write store only ``fraction`` of its bytes, then fail (disk full)."""
    real_open = builtins.open

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:int(len(data) * fraction)])
            raise OSError(28, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWriter(f) if 'w' in mode and 'b' in mode else f

    monkeypatch.setattr(builtins, 'open', fake_open)
    import os
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, mode='r', *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k))
                        if 'w' in mode else real_fdopen(fd, mode, *a, **k))


@pytest.mark.parametrize('backend,survives', [(None, False), (ATOMIC_BACKEND, True)])
def test_interrupted_save_never_clobbers_last_good_checkpoint(tmp_path, monkeypatch, backend,
                                                              survives):
    path = tmp_path / 'iter_10.pth'
    good, good_bytes = _good_and_half(path)
    args = None if backend is None else dict(backend=backend)
    with monkeypatch.context() as m:
        _failing_write(m)
        with pytest.raises(OSError):
            save_checkpoint({'state_dict': {'w': torch.zeros(2000)}}, str(path), backend_args=args)
    assert (path.read_bytes() == good_bytes) is survives  # plain mmengine: truncated in place
    if survives:
        assert torch.equal(_load_checkpoint(str(path))['state_dict']['w'], good['state_dict']['w'])
        assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_10.pth']  # no temp litter


def test_truncated_checkpoint_raises_clear_error(tmp_path):
    path = tmp_path / 'iter_20.pth'
    _, data = _good_and_half(path)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match='iter_20.pth.*truncated'):
        _load_checkpoint(str(path))
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(CorruptCheckpointError, match='iter_20.pth'):
        _load_checkpoint(str(path))


def test_atomic_backend_is_a_local_backend():
    from mmengine.fileio import get_file_backend
    backend = get_file_backend('x.pth', backend_args=dict(backend=ATOMIC_BACKEND))
    assert isinstance(backend, LocalBackend) and type(backend).__name__ == 'AtomicLocalBackend'


@pytest.mark.parametrize('name', sorted(TINY))
def test_eval_prediction_independent_of_batch_and_repetition(name):
    torch.manual_seed(0)
    model = MODELS.build(TINY[name]).eval()
    images = torch.rand(3, 3, 24, 24) * 4 - 2
    with torch.no_grad():
        alone = model(images[:1])
        again = model(images[:1])
        batch = model(torch.cat([images[2:], images[:1], images[1:2]]))
    for a, r, b in zip(alone, again, batch):
        assert torch.equal(a, r)  # no state carried over from the previous call
        torch.testing.assert_close(b[1:2], a, rtol=1e-5, atol=1e-5)  # position/batch invariant


BAD_OPTIONS = [
    ('SDTV3', dict(arch='XXL', embed_dims=None), 'arch'),
    ('SDTV3', dict(out_indices=(5, )), 'out_indices'),
    ('SDTV3', dict(num_heads=7), 'num_heads'),
    ('Spikformer', dict(arch='8-999'), 'arch'),
    ('Spikformer', dict(patch_size=5), 'patch_size'),
    ('Spikformer', dict(T=0), 'T'),
    ('QKFormer', dict(arch='3-3'), 'arch'),
    ('QKFormer', dict(T=-1), 'T'),
    ('QKFormer', dict(out_indices=(7, )), 'out_indices'),
    ('SDTV3', dict(attn=dict(type='SSA', order='vq')), 'order'),
    ('SDTV3', dict(attn=dict(type='LRFSSA', dilations=(0, ))), 'dilations'),
    ('SDTV3', dict(neuron=dict(type='Sigmoid')), 'neuron'),
]


@pytest.mark.parametrize('name,bad,option', BAD_OPTIONS,
                         ids=[f'{n}-{o}' for n, _, o in BAD_OPTIONS])
def test_invalid_option_raises_value_error_naming_it_at_build_time(name, bad, option):
    with pytest.raises(ValueError, match=option):
        MODELS.build({**TINY[name], **bad})
