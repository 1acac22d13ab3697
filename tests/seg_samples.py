"""Test helper: random segmentation targets and a short training of an mmseg segmentor."""
from __future__ import annotations

import copy

import torch
from torch import nn


def random_seg_samples(batch: int, hw: tuple[int, int], num_classes: int,
                       gen: torch.Generator | None = None) -> list:
    """``batch`` mmseg ``SegDataSample`` s with uniform random labels ``[1, H, W]`` in
    ``[0, num_classes)``, drawn in order with ``gen``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    h, w = hw
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w),
                                             ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, h, w), generator=gen))
        samples.append(sample)
    return samples


def seg_batch(n: int = 2, size: int = 16, num_classes: int = 3) -> dict:
    """A data batch as a data loader gives it: uint8 images ``[3, size, size]`` and samples."""
    g = torch.Generator().manual_seed(0)
    samples = random_seg_samples(n, (size, size), num_classes, gen=g)
    return dict(inputs=[torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
                        for _ in range(n)], data_samples=samples)


def seg_data_preprocessor(size: int = 16) -> dict:
    """mmseg's data preprocessor with the configs' mean and std, padding to ``size``."""
    return dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375], bgr_to_rgb=True, size=(size, size))


def build_segmentor(cfg: dict) -> nn.Module:
    """Build a segmentor config in mmseg's registry scope."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg)


def train_two_iterations(model: nn.Module) -> None:
    """Two AdamW steps on :func:`seg_batch`: every loss finite, the backbone's weights move."""
    from mmengine.optim import OptimWrapper
    model.init_weights()
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = copy.deepcopy(model.backbone.state_dict())
    for _ in range(2):
        losses = model.train_step(seg_batch(), optim)
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
    after = model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after
               if after[k].is_floating_point())
