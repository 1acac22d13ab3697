"""Checkpoint files: atomic saves never clobber the last good file, a truncated or foreign file
fails naming it, and a Runner resumed from an (atomically saved) iteration checkpoint continues
exactly like the uninterrupted run."""
from __future__ import annotations

import builtins
import copy
import os
from pathlib import Path

import pytest
import torch
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
from mmengine.structures import PixelData

import mmlrf  # noqa: F401
from mmlrf.interop import ATOMIC_BACKEND, CorruptCheckpointError
from mmseg.registry import DATASETS, HOOKS
from mmseg.structures import SegDataSample

ROOT = Path(__file__).resolve().parents[2]


def _good_and_half(path: Path) -> tuple[dict, bytes]:
    state = {'state_dict': {'w': torch.arange(2000.)}, 'meta': {'iter': 1}}
    save_checkpoint(state, str(path))
    data = path.read_bytes()
    return state, data


def _failing_write(monkeypatch, fraction: float = 0.5) -> None:
    """Make the next binary file write store only ``fraction`` of its bytes, then fail (disk
    full)."""
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
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, mode='r', *a, **k: HalfWriter(
        real_fdopen(fd, mode, *a, **k)) if 'w' in mode else real_fdopen(fd, mode, *a, **k))


@pytest.mark.parametrize('backend,survives', [(None, False), (ATOMIC_BACKEND, True)])
def test_interrupted_save_never_clobbers_last_good_checkpoint(tmp_path, monkeypatch, backend,
                                                              survives):
    path = tmp_path / 'iter_10.pth'
    good, good_bytes = _good_and_half(path)
    args = None if backend is None else dict(backend=backend)
    with monkeypatch.context() as m:
        _failing_write(m)
        with pytest.raises(OSError):
            save_checkpoint({'state_dict': {'w': torch.zeros(2000)}}, str(path),
                            backend_args=args)
    assert (path.read_bytes() == good_bytes) is survives  # plain mmengine: truncated in place
    if survives:
        assert torch.equal(_load_checkpoint(str(path))['state_dict']['w'],
                           good['state_dict']['w'])
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


# --------------------------------------------------------------------------- runner resume
@DATASETS.register_module(force=True)
class GeneratedSegImages(torch.utils.data.Dataset):
    """``n`` random uint8 images ``[3, 32, 32]`` with random 3-class labels."""

    metainfo = dict(classes=('a', 'b', 'c'))

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        self.labels = torch.randint(0, 3, (n, 1, 32, 32), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        sample = SegDataSample(metainfo=dict(img_shape=(32, 32), ori_shape=(32, 32)))
        sample.gt_sem_seg = PixelData(data=self.labels[i])
        return dict(inputs=self.images[i], data_samples=sample)


@HOOKS.register_module(force=True)
class RecordLossHook(Hook):
    """Appends ``(iteration number from 1, loss)`` of every training iteration to
    ``RecordLossHook.losses``."""

    losses: list = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        RecordLossHook.losses.append((runner.iter + 1, outputs['loss'].item()))


def _runner(work_dir: Path, **overrides):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(ROOT / 'configs/toy/fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')
    cfg.model.data_preprocessor.size = (32, 32)
    cfg.model.backbone.depths = (1, 1)  # one transformer block per stage: quicker iterations
    loader = dict(batch_size=2, num_workers=0, dataset=dict(type='GeneratedSegImages'))
    cfg.train_dataloader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=True))
    cfg.val_dataloader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=False))
    cfg.val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=6, val_interval=2)
    cfg.param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False,
                                begin=0, end=6)]
    # The config's atomic saves, plus rotation and best-keeping.
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2,
                                        max_keep_ckpts=2, save_best='mIoU',
                                        backend_args=dict(backend='atomic_local'))
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=100)
    cfg.custom_hooks = [dict(type='NeuronResetHook'), dict(type='RecordLossHook')]
    cfg.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(overrides)
    return Runner.from_cfg(cfg)


@pytest.fixture
def restore_default_scope():
    saved = copy.copy(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


def test_resume_continues_like_the_uninterrupted_run(tmp_path, restore_default_scope):
    RecordLossHook.losses = []
    _runner(tmp_path / 'full').train()
    full = dict(RecordLossHook.losses)
    assert sorted(full) == [1, 2, 3, 4, 5, 6] and len(set(full.values())) > 1
    files = sorted(p.name for p in (tmp_path / 'full').iterdir() if p.suffix == '.pth')
    # max_keep_ckpts=2 removed iter_2; save_best kept one best file; no temporary files left.
    assert [f for f in files if f.startswith('iter_')] == ['iter_4.pth', 'iter_6.pth']
    assert len([f for f in files if f.startswith('best_mIoU_iter_')]) == 1
    assert not [p for p in (tmp_path / 'full').iterdir() if p.name.endswith('.tmp')]
    assert (tmp_path / 'full' / 'last_checkpoint').read_text().endswith('iter_6.pth')

    RecordLossHook.losses = []
    _runner(tmp_path / 'resumed', resume=True,
            load_from=str(tmp_path / 'full' / 'iter_4.pth')).train()
    resumed = dict(RecordLossHook.losses)
    assert sorted(resumed) == [5, 6]
    for it in (5, 6):
        assert resumed[it] == pytest.approx(full[it], rel=1e-6, abs=1e-7), (it, resumed, full)


def test_resume_from_truncated_checkpoint_names_the_file(tmp_path, restore_default_scope):
    good = tmp_path / 'good.pth'
    _runner(tmp_path / 'w', train_cfg=dict(max_iters=2, val_interval=100)).train()
    data = (tmp_path / 'w' / 'iter_2.pth').read_bytes()
    bad = tmp_path / 'iter_2.pth'
    bad.write_bytes(data[:len(data) // 2])
    good.write_bytes(data)
    with pytest.raises(CorruptCheckpointError, match=r'iter_2\.pth.*truncated'):
        _runner(tmp_path / 'r', resume=True, load_from=str(bad)).train()
    assert good.read_bytes() == data
