"""CPU backward of the 19M segmentor's depth-wise convolutions: autograd vs mmlrf's route.

Times ``aten::convolution_backward`` (what autograd runs for ``F.conv2d``) and
``mmlrf.depthwise.conv2d_backward`` (two forward convolutions) on each shape, in the same run,
and prints the ratio and the gradients' largest relative difference.

Examples::

    python tools/analysis/bench_depthwise.py --out work_dirs/bench/depthwise.json
    python tools/analysis/bench_depthwise.py --batch 8 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os

import mmlrf  # noqa: F401

from mmlrf.analysis.benchmark import environment
from mmlrf.analysis.depthwise_bench import SDTV3_19M_DEPTHWISE, compare_depthwise_backward


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=None, help='override the batch size B')
    p.add_argument('--repeats', type=int, default=5, help='timed calls per route (median)')
    p.add_argument('--out', help='write the rows as JSON')
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.batch is not None and args.batch < 1):
        p.error('--repeats and --batch must be positive')
    rows = []
    print(f"{'conv':<34} {'input':<20} {'fwd ms':>8} {'autograd bwd':>13} {'mmlrf bwd':>10} "
          f"{'ratio':>6} {'rel diff':>9}")
    for label, shape, kernel, dilation in SDTV3_19M_DEPTHWISE:
        row = dict(label=label, **compare_depthwise_backward(shape, kernel, dilation,
                                                             args.batch, args.repeats))
        rows.append(row)
        print(f"{label:<34} {'x'.join(map(str, row['shape'])):<20} {row['forward_ms']:8.2f} "
              f"{row['autograd_ms']:13.2f} {row['mmlrf_ms']:10.2f} {row['ratio']:6.3f} "
              f"{row['max_rel_diff']:9.1e}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(meta=environment('cpu'), rows=rows), f, indent=1)
        print(f'wrote {args.out}')
    return rows


if __name__ == '__main__':
    main()
