"""Convert an official SDT-V3 / E-SpikeFormer checkpoint to mmlrf's layout.

Accepts official segmentation checkpoints (keys ``backbone.``/``neck.``/``decode_head.``) and
official ImageNet classification checkpoints (``{'model': ...}`` without prefixes). Strict: the
report lists missing, unexpected and shape-mismatched keys, and nothing is written when the
result would be partial unless ``--allow-partial``. ImageNet checkpoints have no layer scales:
they are filled with ``--layer-scale`` (default 1e-6, the official fine-tuning recipe; 1.0
reproduces the ImageNet model's function). See :mod:`mmlrf.convert.sdtv3`.

Usage::

    python tools/convert_sdtv3.py SRC DST [--allow-partial] [--layer-scale VALUE]
"""
from __future__ import annotations

import argparse
import sys

import mmlrf  # noqa: F401  (must precede mmseg: compat fixes + registration)
from mmlrf.convert.sdtv3 import DEFAULT_IMAGENET_LAYER_SCALE, convert_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Convert an official SDT-V3 checkpoint')
    parser.add_argument('src', help='official checkpoint (segmentation or ImageNet)')
    parser.add_argument('dst', help='output file ({"state_dict", "meta"})')
    parser.add_argument('--allow-partial', action='store_true',
                        help='write the result even if keys are missing/unexpected/mismatched')
    parser.add_argument('--layer-scale', type=float, default=DEFAULT_IMAGENET_LAYER_SCALE,
                        help='value of the layer scales an ImageNet checkpoint lacks '
                        '(default: %(default)g, the official recipe; 1.0 = ImageNet function)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = convert_checkpoint(args.src, args.dst, args.allow_partial, args.layer_scale)
    print(report.format())
    if report.ok:
        print(f'wrote {args.dst}')
        return 0
    if args.allow_partial:
        print(f'wrote PARTIAL result to {args.dst} (--allow-partial)')
        return 0
    print('refusing to write a partial result (use --allow-partial to force)', file=sys.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
