"""What the measurement tools measure: segmentors from configs (the attention optionally replaced
by a variant), input images, random training targets, and the arguments that choose them."""
from __future__ import annotations

import argparse
import copy
from typing import Callable, Iterator

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import DefaultScope
from mmengine.runner import Runner, load_checkpoint
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules
from torch import Tensor, nn

from ..models.mixers import set_dynamics_mode

#: Token mixer of each attention variant; ``'<variant>:<mode>'`` also puts every dendritic
#: operator on one evaluation path (:data:`mmlrf.ops.dendritic.DYNAMICS_MODES`).
VARIANTS: dict[str, dict] = {
    'official': dict(type='SSA', order='qk'),      # SDT-V3's SDSA: (Q Kᵀ) V, N×N map per head
    'ssa_kv': dict(type='SSA', order='kv'),        # Q (Kᵀ V), d×dv state per head
    'lrf_ssa': dict(type='LRFSSA', order='qk'),    # SDT-V3 + LRF-SSA (paper)
    'lrf_ssa_kv': dict(type='LRFSSA', order='kv'),
    'lrf_dyn': dict(type='LRFDyn'),                # modal parameters (default)
    'lrf_dyn_tridiagonal': dict(type='LRFDyn', dynamics_cfg=dict(parameterization='tridiagonal')),
}
#: Config key of the attention dict a variant replaces (SDT-V3, Spikformer, QKFormer).
ATTN_KEY = 'model.backbone.attn'


def parse_variant(name: str) -> tuple[dict, str | None]:
    """``'lrf_dyn:scan'`` → (the mixer config, the dynamics mode or None); ValueError naming
    the variants for an unknown name or a mode on a non-LRFDyn variant."""
    base, _, mode = name.partition(':')
    if base not in VARIANTS:
        raise ValueError(f'variant must be one of {sorted(VARIANTS)} (lrf_dyn may take '
                         f'":<mode>"), got {name!r}')
    if mode and VARIANTS[base]['type'] != 'LRFDyn':
        raise ValueError(f'variant {name!r}: only LRFDyn variants take a ":<mode>" suffix')
    return copy.deepcopy(VARIANTS[base]), mode or None


def build_model(config: str, variant: str | None = None, cfg_options: dict | None = None,
                attn_key: str = ATTN_KEY, checkpoint: str | None = None,
                device: str | torch.device = 'cpu', seed: int = 0) -> tuple[nn.Module, Config]:
    """(model, mmengine Config): ``cfg.model`` of ``config`` (``cfg_options`` merged; built in
    the config's ``default_scope``, mmseg's or mmpretrain's) in eval mode on ``device``, the
    attention dict at ``attn_key`` (dotted) replaced by ``variant`` (None: the config's own),
    the ``checkpoint`` loaded strictly; without one the initial weights, drawn after
    ``torch.manual_seed(seed)``, are the same in every run."""
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    mode = None
    if variant is not None:
        mixer, mode = parse_variant(variant)
        cfg.merge_from_dict({attn_key: dict(mixer, _delete_=True)})
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmseg')):
        model = MODELS.build(cfg.model)
    if mode:
        set_dynamics_mode(model, mode)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.to(device).eval(), cfg


def variant_arg(name: str) -> str:
    """argparse type of a variant name (:func:`parse_variant`)."""
    try:
        parse_variant(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


def parse_hw(text: str) -> tuple[int, int]:
    """argparse type of a resolution: ``'HxW'`` → ``(H, W)``, both ≥ 1."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'resolution must be HxW, H and W >= 1, got {text!r}')
    return int(parts[0]), int(parts[1])


def add_model_args(parser: argparse.ArgumentParser, weights: bool = True,
                   num_images: int = 0) -> None:
    """Add the arguments of :func:`build_model`: ``config``, ``--variant``, ``--attn-key``,
    ``--cfg-options``, ``--device``; with ``weights`` an optional ``checkpoint`` and ``--seed``;
    with ``num_images`` those of :func:`image_batches` (for :func:`load_from_args`)."""
    parser.add_argument('config', help='segmentor config')
    if weights:
        parser.add_argument('checkpoint', nargs='?', default=None,
                            help='weights (default: the initial weights drawn with --seed)')
        parser.add_argument('--seed', type=int, default=0, help='seed of the initial weights')
    parser.add_argument('--variant', type=variant_arg, default=None,
                        help=f'attention variant {sorted(VARIANTS)} replacing the config\'s '
                             '(lrf_dyn may take ":<mode>"); default: the config\'s own')
    parser.add_argument('--attn-key', default=ATTN_KEY,
                        help='config key of the attention dict a variant replaces')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    if num_images:
        parser.add_argument('--num-images', type=int, default=num_images)
        parser.add_argument('--data-root', default=None, help='override the data set root')
        parser.add_argument('--size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                            help='size of generated images (where no data set is found)')


def load_from_args(args: argparse.Namespace,
                   batch_size: int) -> tuple[nn.Module, Iterator[Tensor], dict]:
    """The model and image batches that the arguments of :func:`add_model_args` (with weights
    and images) choose, and the settings to record with a report."""
    model, cfg = build_model(args.config, args.variant, args.cfg_options, args.attn_key,
                             args.checkpoint, args.device, args.seed)
    batches, source = image_batches(model, cfg, args.num_images, batch_size, args.data_root,
                                    args.size, args.device)
    return model, batches, dict(config=args.config, checkpoint=args.checkpoint,
                                variant=args.variant, seed=args.seed, images_source=source)


def image_batches(model: nn.Module, cfg: Config, num_images: int, batch_size: int = 1,
                  data_root: str | None = None, size: tuple[int, int] | None = None,
                  device: str | torch.device = 'cpu') -> tuple[Iterator[Tensor], str]:
    """(batches, source): ``num_images`` preprocessed images in batches ``[B, 3, H, W]`` from
    the config's validation set (source ``'dataset:<type>'``) or, where it cannot be built
    (e.g. not downloaded), uniform noise in [0, 255] of ``size`` (default: the config's crop
    size) through the model's data preprocessor (source ``'generated (<why>)'``)."""
    try:
        loader_cfg = copy.deepcopy(cfg['val_dataloader'])
        loader_cfg.update(batch_size=batch_size, num_workers=0, persistent_workers=False)
        if data_root:
            loader_cfg['dataset']['data_root'] = data_root
        loader = Runner.build_dataloader(loader_cfg)
        if len(loader.dataset) == 0:
            raise FileNotFoundError('empty data set')
        source = f"dataset:{loader_cfg['dataset']['type']}"
    except (FileNotFoundError, KeyError, OSError, ValueError) as e:
        loader, source = None, f'generated ({type(e).__name__}: {str(e)[:80]})'
    crop = cfg.model.get('data_preprocessor', {}).get('size') or cfg.get('crop_size')
    h, w = size or crop or (512, 512)

    def batches() -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(0)
        seen, it = 0, iter(loader) if loader is not None else None
        while seen < num_images:
            n = min(batch_size, num_images - seen)
            data = next(it, None) if it is not None else dict(inputs=[
                (torch.rand(3, h, w, generator=gen) * 255).to(torch.uint8) for _ in range(n)])
            if data is None:
                return
            x = model.data_preprocessor(data, False)['inputs'].to(device)
            seen += x.shape[0]
            yield x
    return batches(), source


def random_seg_samples(batch: int, hw: tuple[int, int], num_classes: int,
                       device: str | torch.device = 'cpu',
                       gen: torch.Generator | None = None) -> list:
    """``batch`` mmseg ``SegDataSample`` s with uniform random labels ``[1, H, W]`` in
    ``[0, num_classes)``, drawn in order with ``gen`` (training targets for benchmarks and
    tests)."""
    return [SegDataSample(metainfo=dict(img_shape=hw, pad_shape=hw, ori_shape=hw),
                          gt_sem_seg=PixelData(data=torch.randint(
                              0, num_classes, (1, *hw), generator=gen).to(device)))
            for _ in range(batch)]


def random_label_loss(model: nn.Module, cfg: Config, images: Tensor,
                      gen: torch.Generator | None = None) -> Callable[[], Tensor]:
    """A function returning the segmentor's total training loss (``model.loss`` summed by
    ``parse_losses``) on ``images`` ``[B, 3, H, W]`` against :func:`random_seg_samples` labels
    of the decode head's classes (drawn now, with ``gen``)."""
    samples = random_seg_samples(images.shape[0], tuple(images.shape[-2:]),
                                 cfg.model.decode_head.num_classes, images.device, gen)
    return lambda: model.parse_losses(model.loss(images, samples))[0]
