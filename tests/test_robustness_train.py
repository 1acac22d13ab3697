"""Robustness of training: a long high-learning-rate LRF-Dyn run stays finite, bf16 autocast
matches fp32 where spikes cannot flip, and a Runner resumed from an (atomically saved) iteration
checkpoint continues exactly like the uninterrupted run."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import mmlrf  # noqa: F401
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmlrf.attention import DendriticDynamics
from mmlrf.interop import CorruptCheckpointError
from mmseg.registry import DATASETS, HOOKS, MODELS
from mmseg.structures import SegDataSample


# --------------------------------------------------------------------------- numerics
def _lrf_dyn_block() -> nn.Module:
    return MODELS.build(dict(type='SpikingAttention', embed_dims=8, num_heads=2,
                             mixer=dict(type='LRFDyn', num_dendrites=4)))


def test_lrf_dyn_2000_steps_at_lr_0_1_stay_finite():
    """AdamW lr 1e-1 on random data/labels: the dendritic parameters get large, noisy updates."""
    torch.manual_seed(0)
    block = _lrf_dyn_block()
    head = nn.Conv2d(8, 3, 1)
    params = list(block.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=1e-1)
    dyn = block.mixer.dynamics if hasattr(block.mixer, 'dynamics') else next(
        m for m in block.modules() if isinstance(m, DendriticDynamics))
    start = {k: v.detach().clone() for k, v in dyn.named_parameters()}
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for step in range(2000):
        x = torch.randn(1, 2, 8, 4, 4, generator=g) * 3
        target = torch.randint(0, 3, (2, 4, 4), generator=g)
        loss = nn.functional.cross_entropy(head(block(x)[0]), target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        assert torch.isfinite(loss), f'loss {loss.item()} at step {step}'
        if step % 250 == 249:
            bad = [n for n, p in dyn.named_parameters() if not torch.isfinite(p).all()]
            assert not bad, f'non-finite dynamics parameters {bad} at step {step}'
    assert time.perf_counter() - t0 < 60
    assert all(torch.isfinite(p).all() for p in params)
    moved = {k: (v - start[k]).abs().max().item() for k, v in dyn.named_parameters()}
    assert min(moved.values()) > 0.1, moved  # the run did push every dynamics parameter
    with torch.no_grad():  # and the trained operator still maps bounded input to finite output
        assert torch.isfinite(dyn(torch.randn(2, 8, 16, 16) * 100)).all()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_bf16_autocast_matches_fp32_where_spikes_cannot_flip():
    """Compared: (1) the dynamics operator on bf16 input, (2) the LRF-Dyn mixer (dynamics + LRF
    depth-wise convs) under CPU bf16 autocast, both on the same spike inputs, relative L2 error
    <= 2e-2. Not compared: whole-model outputs, where a bf16 rounding near a threshold flips a
    spike and the flip propagates (a discrete, not a numerical, difference)."""
    torch.manual_seed(0)
    block = _lrf_dyn_block().eval()
    dyn = next(m for m in block.modules() if isinstance(m, DendriticDynamics))
    u = torch.randn(2, 8, 8, 12)
    with torch.no_grad():
        ref = dyn(u)
        assert _rel(dyn(u.bfloat16()), ref) <= 2e-2
        v = (torch.rand(1, 2, 8, 8, 12) * 4).round() / 4  # MultiSpike-like values, exact in bf16
        ref = block.mixer(None, None, v, None)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = block.mixer(None, None, v, None)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert _rel(low, ref) <= 2e-2


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
    """Appends ``(iteration number from 1, loss)`` of every training iteration to ``RecordLossHook.losses``."""

    losses: list = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        RecordLossHook.losses.append((runner.iter + 1, outputs['loss'].item()))


def _runner(work_dir: Path, **overrides):
    from mmengine.config import Config
    from mmengine.runner import Runner
    root = Path(__file__).resolve().parents[1]
    cfg = Config.fromfile(root / 'configs/toy/fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')
    cfg.model.data_preprocessor.size = (32, 32)
    loader = dict(batch_size=2, num_workers=0, dataset=dict(type='GeneratedSegImages'))
    cfg.train_dataloader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=True))
    cfg.val_dataloader = dict(loader, sampler=dict(type='DefaultSampler', shuffle=False))
    cfg.val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=6, val_interval=2)
    cfg.param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False,
                                begin=0, end=6)]
    # As the lead sets it in configs/_base_/default_runtime.py, plus rotation and best-keeping.
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
