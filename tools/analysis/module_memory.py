"""Where a segmentor's inference memory peak comes from: per leaf module, the memory in use
when each call starts and the transient peak during it (cuDNN workspaces included on CUDA).

Examples::

    # SDT-V3-19M + LRF-Dyn + spiking FPN, one 1024x2048 frame, BNs folded, PyTorch's default
    # precision (TF32 in cuDNN convolutions): which module raises the peak?
    python tools/analysis/module_memory.py configs/_base_/models/fpn_sdtv3.py \\
        --variant lrf_dyn --resolution 1024x2048 --device cuda --fuse-conv-bn --tf32 convs \\
        --out work_dirs/memory/lrfdyn_tf32

Prints the modules with the highest peaks and writes ``<out>.json``. On the CPU the tool runs
itself again in a process started with ``CPU_MEASURE_ENV`` (see ``mmlrf.analysis.memory``)
unless its environment already has it.
"""
import argparse
import os
import subprocess
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.memory import CPU_MEASURE_ENV
from mmlrf.analysis.model_args import add_model_args, check_model_args, save_model_report
from mmlrf.analysis.module_memory import format_leaf_memory, leaf_memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p)
    p.add_argument('--fuse-conv-bn', action='store_true', help='fold every BN into its conv')
    p.add_argument('--channels-last', action='store_true', help='weights stored channels-last')
    p.add_argument('--tf32', nargs='?', const='all', default='off', choices=bm.TF32_MODES,
                   help='TF32 on CUDA: off (default), convs (PyTorch\'s default), all')
    p.add_argument('--warmup', type=int, default=2, help='unmeasured passes first')
    p.add_argument('--top', type=int, default=20, help='modules to list')
    p.add_argument('--out', default='work_dirs/memory/modules', help='writes <out>.json')
    return p.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    try:
        height, width = check_model_args(args)
    except ValueError as err:
        sys.exit(f'error: {err}')
    if args.warmup < 0 or args.top < 1:
        sys.exit('error: --warmup must be >= 0 and --top >= 1')
    device = torch.device(args.device)
    if device.type == 'cpu' and any(os.environ.get(k) != v for k, v in CPU_MEASURE_ENV.items()):
        cmd = [sys.executable, os.path.abspath(__file__),
               *(sys.argv[1:] if argv is None else argv)]
        sys.exit(subprocess.call(cmd, env={**os.environ, **CPU_MEASURE_ENV}))
    bm.set_cuda_precision(args.tf32)
    model, _, _ = bm.build_variant_model(args.config, args.variant, args.cfg_options,
                                         args.attn_key, device, args.fuse_conv_bn,
                                         args.channels_last)
    model.eval()
    images = torch.randn(args.batch, 3, height, width,
                         generator=torch.Generator().manual_seed(0)).to(device)
    report = leaf_memory(model, lambda: model(images, mode='tensor'), device, args.warmup,
                         args.top)
    return save_model_report(report, args, (height, width), format_leaf_memory,
                             fuse_conv_bn=args.fuse_conv_bn, channels_last=args.channels_last,
                             tf32=args.tf32)


if __name__ == '__main__':
    main()
