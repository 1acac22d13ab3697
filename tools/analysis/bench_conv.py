"""CPU convolutions of the 19M segmentor: oneDNN against mmlrf's routes (mmlrf.conv).

Times the forward (``F.conv2d`` vs ``mmlrf.conv.conv2d_forward``: a matrix product for 1×1
convs) and the backward (``aten::convolution_backward``, what autograd runs, vs
``mmlrf.conv.conv2d_backward``: matrix products for 1×1 convs, two forward convolutions for
depth-wise ones) on each shape, in the same run, and prints the ratios and the largest relative
difference of outputs and gradients.

Examples::

    python tools/analysis/bench_conv.py --out work_dirs/bench/conv.json
    python tools/analysis/bench_conv.py --batch 8 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os

import mmlrf  # noqa: F401

from mmlrf.analysis.benchmark import environment
from mmlrf.analysis.conv_bench import SDTV3_19M_CONVS, compare_conv


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=None, help='override the batch size B')
    p.add_argument('--repeats', type=int, default=5, help='timed calls per route (median)')
    p.add_argument('--out', help='write the rows as JSON')
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.batch is not None and args.batch < 1):
        p.error('--repeats and --batch must be positive')
    rows = []
    print(f"{'conv':<45} {'input':<18} {'fwd oneDNN':>10} {'mmlrf':>8} {'ratio':>6} "
          f"{'bwd oneDNN':>10} {'mmlrf':>8} {'ratio':>6} {'rel diff':>9}")
    for label, shape, out_channels, kernel, dilation in SDTV3_19M_CONVS:
        row = dict(label=label, **compare_conv(shape, out_channels, kernel, dilation,
                                               args.batch, args.repeats))
        rows.append(row)
        print(f"{label:<45} {'x'.join(map(str, row['shape'])):<18} "
              f"{row['forward_onednn_ms']:10.2f} {row['forward_mmlrf_ms']:8.2f} "
              f"{row['forward_ratio']:6.3f} {row['backward_onednn_ms']:10.2f} "
              f"{row['backward_mmlrf_ms']:8.2f} {row['backward_ratio']:6.3f} "
              f"{row['max_rel_diff']:9.1e}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(meta=environment('cpu'), rows=rows), f, indent=1)
        print(f'wrote {args.out}')
    return rows


if __name__ == '__main__':
    main()
