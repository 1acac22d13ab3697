"""Generate the toy texture-segmentation data set (ADE20K folder layout).

Usage::

    python tools/dataset/make_toy_dataset.py data/toy [--num-train 240] [--num-val 40]
        [--size 64] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys

import mmlrf  # noqa: F401  (applies the mmcv-lite compat fixes before mmseg is imported)
from mmlrf.datasets import make_toy_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', help='data set root to create (must not exist)')
    parser.add_argument('--num-train', type=int, default=240, help='training images')
    parser.add_argument('--num-val', type=int, default=40, help='validation images')
    parser.add_argument('--size', type=int, default=64, help='image side length in pixels')
    parser.add_argument('--seed', type=int, default=0, help='generator seed')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        make_toy_dataset(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                         size=args.size, seed=args.seed)
    except (FileExistsError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {args.num_train} training and {args.num_val} validation images to '
          f'{args.out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
