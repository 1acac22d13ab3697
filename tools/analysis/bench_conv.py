"""Convolutions of the 19M segmentor: torch's kernels against mmlrf's routes (mmlrf.conv).

Times the forward (``F.conv2d`` vs a matrix product for 1×1 convs) and the backward
(``aten::convolution_backward``, what autograd runs, vs matrix products for 1×1 convs and two
forward convolutions for depth-wise ones) on each shape, in the same run, and prints the ratios
and the largest relative difference of outputs and gradients. torch's kernels are oneDNN on the
CPU and cuDNN on CUDA; the models take the routes on the CPU only, and a CUDA run shows whether
they would pay off there.

Examples::

    python tools/analysis/bench_conv.py --out work_dirs/bench/conv.json
    python tools/analysis/bench_conv.py --batch 8 --repeats 3
    python tools/analysis/bench_conv.py --device cuda --out work_dirs/bench/conv_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import mmlrf  # noqa: F401

from mmlrf.analysis.benchmark import environment
from mmlrf.analysis.conv_bench import SDTV3_19M_CONVS, compare_conv


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=None, help='override the batch size B')
    p.add_argument('--repeats', type=int, default=5, help='timed calls per route (median)')
    p.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda[:i]'")
    p.add_argument('--out', help='write the rows as JSON')
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.batch is not None and args.batch < 1):
        p.error('--repeats and --batch must be positive')
    if args.device != 'cpu' and not (args.device.startswith('cuda')
                                     and torch.cuda.is_available()):
        p.error(f"--device must be 'cpu' or an available CUDA device, got {args.device!r}")
    kernels = 'oneDNN' if args.device == 'cpu' else 'cuDNN'
    rows = []
    print(f"{'conv':<45} {'input':<18} {'fwd ' + kernels:>10} {'mmlrf':>8} {'ratio':>6} "
          f"{'bwd ' + kernels:>10} {'mmlrf':>8} {'ratio':>6} {'rel diff':>9}")
    for label, shape, out_channels, kernel, dilation in SDTV3_19M_CONVS:
        row = dict(label=label, **compare_conv(shape, out_channels, kernel, dilation,
                                               args.batch, args.repeats, device=args.device))
        rows.append(row)
        print(f"{label:<45} {'x'.join(map(str, row['shape'])):<18} "
              f"{row['forward_torch_ms']:10.2f} {row['forward_mmlrf_ms']:8.2f} "
              f"{row['forward_ratio']:6.3f} {row['backward_torch_ms']:10.2f} "
              f"{row['backward_mmlrf_ms']:8.2f} {row['backward_ratio']:6.3f} "
              f"{row['max_rel_diff']:9.1e}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(meta=environment(args.device), rows=rows), f, indent=1)
        print(f'wrote {args.out}')
    return rows


if __name__ == '__main__':
    main()
