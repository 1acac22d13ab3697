"""Build a segmentor from a config (+ checkpoint), get input batches and random segmentation
targets for the analysis tools."""
from __future__ import annotations

import argparse
from typing import Callable, Iterator

import torch
from torch import Tensor, nn


def init_mmseg() -> None:
    """Register mmseg's modules and make 'mmseg' the default registry scope (idempotent)."""
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def load_model(config: str, checkpoint: str | None = None, cfg_options: dict | None = None,
               device: str = 'cpu', seed: int = 0) -> tuple[nn.Module, object]:
    """``MODELS.build(cfg.model)``, weights from ``checkpoint`` (strict), in eval mode.

    The model is built after ``torch.manual_seed(seed)``: without a checkpoint its random
    initial weights, and so every number measured on them, are the same in every run.

    Returns:
        (model, cfg)
    """
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS
    init_mmseg()
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.to(device).eval(), cfg


def add_loading_args(parser: argparse.ArgumentParser) -> None:
    """Add what :func:`load_model` and :func:`image_batches` take: ``config``, an optional
    ``checkpoint``, ``--data-root``, ``--size``, ``--seed`` and ``--cfg-options``."""
    from mmengine.config import DictAction
    parser.add_argument('config', help='segmentor config')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='weights (default: random initial weights, see --seed)')
    parser.add_argument('--data-root', default=None, help='override the data set root')
    parser.add_argument('--size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='size of generated images (when no data set is found)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the initial weights (what is measured without a '
                             'checkpoint)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides')


def config_crop_size(cfg, default: tuple[int, int] = (512, 512)) -> tuple[int, int]:
    """The input size of a config (``model.data_preprocessor.size`` or ``crop_size``)."""
    size = cfg.get('model', {}).get('data_preprocessor', {}).get('size') or cfg.get('crop_size')
    return tuple(size) if size else default


def image_batches(model: nn.Module, cfg, num_images: int, batch_size: int = 1,
                  data_root: str | None = None, size: tuple[int, int] | None = None,
                  device: str = 'cpu') -> tuple[Iterator[Tensor], str]:
    """Preprocessed image batches ``[B, 3, H, W]`` from the config's validation set.

    Falls back to generated images (uniform noise in [0, 255] at the config's crop size, through
    the model's data preprocessor) when the data set cannot be built (e.g. not downloaded).

    Returns:
        (iterator of batches, source): ``source`` is ``'dataset:<type>'`` or ``'generated'``.
    """
    try:
        from mmengine.runner import Runner
        loader_cfg = cfg.copy().get('val_dataloader') or cfg.get('test_dataloader')
        if loader_cfg is None:
            raise FileNotFoundError('no val_dataloader in the config')
        loader_cfg = loader_cfg.copy()
        loader_cfg.update(batch_size=batch_size, num_workers=0, persistent_workers=False)
        if data_root:
            loader_cfg['dataset']['data_root'] = data_root
        loader = Runner.build_dataloader(loader_cfg)
        source = f"dataset:{loader_cfg['dataset']['type']}"
        if len(loader.dataset) == 0:
            raise FileNotFoundError('empty data set')
    except (FileNotFoundError, KeyError, OSError, ValueError) as e:
        loader, source = None, f'generated ({type(e).__name__}: {str(e)[:80]})'

    def batches() -> Iterator[Tensor]:
        seen = 0
        gen = torch.Generator().manual_seed(0)
        h, w = size or config_crop_size(cfg)
        it = iter(loader) if loader is not None else None
        while seen < num_images:
            n = min(batch_size, num_images - seen)
            if it is not None:
                try:
                    data = next(it)
                except StopIteration:
                    return
            else:
                data = dict(inputs=[(torch.rand(3, h, w, generator=gen) * 255).to(torch.uint8)
                                    for _ in range(n)])
            data = model.data_preprocessor(data, False)
            x = data['inputs'].to(device)
            seen += x.shape[0]
            yield x
    return batches(), source


def random_seg_samples(batch: int, hw: tuple[int, int], num_classes: int,
                       device: str | torch.device = 'cpu',
                       gen: torch.Generator | None = None) -> list:
    """``batch`` mmseg ``SegDataSample`` s with uniform random labels ``[1, H, W]`` in
    ``[0, num_classes)``, drawn in order with ``gen`` (training targets for benchmarks and
    tests)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    h, w = hw
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(h, w),
                                             ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, h, w), generator=gen).to(device))
        samples.append(sample)
    return samples


def random_label_loss(model: nn.Module, cfg, images: Tensor,
                      gen: torch.Generator | None = None) -> Callable[[], Tensor]:
    """A function returning the segmentor's total training loss (``model.loss``, summed by
    ``parse_losses``) on ``images`` ``[B, 3, H, W]`` with :func:`random_seg_samples` labels
    over the config's decode-head classes (drawn now, with ``gen``)."""
    samples = random_seg_samples(images.shape[0], tuple(images.shape[-2:]),
                                 cfg.model.decode_head.num_classes, images.device, gen)
    return lambda: model.parse_losses(model.loss(images, samples))[0]
