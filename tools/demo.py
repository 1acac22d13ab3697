"""Segment one image and save the prediction overlaid on it.

Usage::

    python tools/demo.py IMAGE CONFIG CHECKPOINT --out overlay.png [--device cpu] [--opacity 0.5]
        [--fuse-conv-bn] [--channels-last] [--compile] [--allow-partial]

The checkpoint is loaded strictly and must hold finite weights (``--allow-partial`` loads only
the matching tensors on purpose). ``--out`` needs an image extension and may not be the input.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

import mmlrf  # noqa: F401  (must precede mmseg)
import mmcv
from mmengine.structures import PixelData
from mmseg.apis import inference_model, init_model
from mmseg.registry import DATASETS
from mmseg.visualization import SegLocalVisualizer

from mmlrf.datasets.loading import ImageFileError
from mmlrf.datasets.sample_checks import SegSampleError
from mmlrf.inference.options import add_inference_options, chosen_inference_options
from mmlrf.interop import (CheckpointMismatchError, CorruptCheckpointError,
                           NonFiniteWeightsError, load_checkpoint_checked)

#: Extensions OpenCV writes (``--out``).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
#: Errors a user can act on: printed as one message (exit status 1), no traceback.
FAILURES = (FileNotFoundError, ValueError, CheckpointMismatchError, NonFiniteWeightsError,
            CorruptCheckpointError, ImageFileError, SegSampleError)
#: The side below which the overlay is drawn on an enlarged copy (mmengine's visualiser
#: sizes its canvas from the image and fails on a few pixels).
MIN_DRAW_SIDE = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mmlrf single-image segmentation demo')
    parser.add_argument('img', help='input image')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='output overlay image (e.g. overlay.png)')
    parser.add_argument('--device', default='cpu', help="device, e.g. 'cpu' or 'cuda:0'")
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the painted segmentation, in (0, 1]')
    parser.add_argument('--allow-partial', action='store_true',
                        help='load a checkpoint that does not fit the model exactly (only the '
                        'matching tensors; default: refuse it with the key report)')
    add_inference_options(parser)
    return parser.parse_args(argv)


def check_out(out: str, img: str) -> None:
    """Refuse an ``--out`` without an image extension or naming the input image.

    Raises:
        ValueError: naming the path and the fix.
    """
    ext = osp.splitext(out)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f'--out {out!r} has no image extension ({ext or "none"}); give one of '
                         f'{", ".join(IMAGE_EXTENSIONS)}, e.g. --out overlay.png')
    if osp.exists(out) and osp.samefile(out, img) or osp.abspath(out) == osp.abspath(img):
        raise ValueError(f'--out {out!r} is the input image: it would be overwritten. Choose '
                         'another path.')


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    for what, path in (('image', args.img), ('config', args.config),
                       ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file not found: {path!r}')
    if not 0 < args.opacity <= 1:
        raise ValueError(f'--opacity must be in (0, 1], got {args.opacity}')
    check_out(args.out, args.img)
    model = init_model(args.config, None, device='cpu')
    checkpoint = load_checkpoint_checked(model, args.checkpoint, strict=not args.allow_partial,
                                         opt_out='pass --allow-partial')
    meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
    if meta.get('dataset_meta'):
        model.dataset_meta = meta['dataset_meta']
    else:  # a checkpoint saved without meta: the config's test data set's classes
        dataset = DATASETS.get(model.cfg.test_dataloader.dataset.type)
        model.dataset_meta = dict(getattr(dataset, 'METAINFO', {}))
    model.to(args.device).eval()
    for option in chosen_inference_options(args):
        option.apply(model)
    result = inference_model(model, args.img)
    image = mmcv.imread(args.img, channel_order='rgb')
    if min(image.shape[:2]) < MIN_DRAW_SIDE:
        scale = -(-MIN_DRAW_SIDE // min(image.shape[:2]))
        image = mmcv.imrescale(image, scale, interpolation='nearest')
        labels = result.pred_sem_seg.data
        result.pred_sem_seg = PixelData(
            data=labels.repeat_interleave(scale, -2).repeat_interleave(scale, -1))
    visualizer = SegLocalVisualizer(alpha=args.opacity)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('demo', image, result, draw_gt=False, show=False,
                              out_file=args.out)
    print(f'wrote {args.out}')
    return args.out


if __name__ == '__main__':
    try:
        main()
    except FAILURES as err:
        sys.exit(f'error: {err}')
