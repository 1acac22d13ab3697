"""Segment one image and save the prediction overlaid on it.

Usage::

    python tools/demo.py IMAGE CONFIG CHECKPOINT --out overlay.png [--device cpu] [--opacity 0.5]
        [--fuse-conv-bn] [--channels-last] [--compile]
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

import mmlrf  # noqa: F401  (must precede mmseg)
import mmcv
from mmseg.apis import inference_model, init_model
from mmseg.visualization import SegLocalVisualizer

from mmlrf.inference.options import add_inference_options, chosen_inference_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mmlrf single-image segmentation demo')
    parser.add_argument('img', help='input image')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='output overlay image (e.g. overlay.png)')
    parser.add_argument('--device', default='cpu', help="device, e.g. 'cpu' or 'cuda:0'")
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the painted segmentation, in (0, 1]')
    add_inference_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    for what, path in (('image', args.img), ('config', args.config),
                       ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file not found: {path!r}')
    if not 0 < args.opacity <= 1:
        raise ValueError(f'--opacity must be in (0, 1], got {args.opacity}')
    model = init_model(args.config, args.checkpoint, device=args.device)
    for option in chosen_inference_options(args):
        option.apply(model)
    result = inference_model(model, args.img)
    visualizer = SegLocalVisualizer(alpha=args.opacity)
    visualizer.dataset_meta = model.dataset_meta
    image = mmcv.imread(args.img, channel_order='rgb')
    visualizer.add_datasample('demo', image, result, draw_gt=False, show=False,
                              out_file=args.out)
    print(f'wrote {args.out}')
    return args.out


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
