"""Profile one segmentor's inference pass or training step: time per leaf-module type, per
backward node (training), per operator and per CUDA kernel.

Examples::

    # SDT-V3-19M + LRF-Dyn + spiking FPN, one Cityscapes-sized frame, on the GPU
    python tools/analysis/profile_model.py configs/_base_/models/fpn_sdtv3.py \
        --variant lrf_dyn --resolution 1024x2048 --device cuda --out work_dirs/profile/lrfdyn
    # the same with the BatchNorms folded into the convs
    python tools/analysis/profile_model.py configs/_base_/models/fpn_sdtv3.py \
        --variant lrf_dyn --resolution 1024x2048 --device cuda --fuse-conv-bn
    # one 8x512x512 training step (forward, loss on random labels, backward; no optimizer)
    python tools/analysis/profile_model.py configs/_base_/models/fpn_sdtv3.py \
        --variant lrf_dyn --resolution 512x512 --batch 8 --mode train --device cuda

Prints the tables and writes ``<out>.json``. fp32 with TF32 off unless ``--tf32 [convs|all]``.
"""
import argparse
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.model_args import add_model_args, check_model_args, save_model_report
from mmlrf.analysis.loading import random_label_loss
from mmlrf.analysis.profile import format_profile, profile_pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p)
    p.add_argument('--mode', default='infer', choices=('infer', 'train'),
                   help='an inference pass (default) or a training step')
    p.add_argument('--fuse-conv-bn', action='store_true',
                   help='fold every BN into its conv (inference only)')
    p.add_argument('--tf32', nargs='?', const='all', default='off', choices=bm.TF32_MODES,
                   help='TF32 on CUDA: off (default), convs (PyTorch\'s default), all')
    p.add_argument('--iterations', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--top', type=int, default=25, help='operators (and CUDA kernels) to list')
    p.add_argument('--out', default='work_dirs/profile/profile', help='writes <out>.json')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        height, width = check_model_args(args)
    except ValueError as err:
        sys.exit(f'error: {err}')
    if args.iterations < 1:
        sys.exit('error: --iterations must be >= 1')
    train = args.mode == 'train'
    if train and args.fuse_conv_bn:
        sys.exit('error: --fuse-conv-bn folds the BNs for inference; it cannot profile training')
    bm.set_cuda_precision(args.tf32)
    device = torch.device(args.device)
    model, cfg, _ = bm.build_variant_model(args.config, args.variant, args.cfg_options,
                                           args.attn_key, device, args.fuse_conv_bn)
    model.train(train)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, height, width, generator=gen).to(device)
    if train:
        loss = random_label_loss(model, cfg, images, gen)

        def run() -> None:
            model.zero_grad(set_to_none=True)
            loss().backward()
    else:
        def run() -> None:
            model(images, mode='tensor')
    report = profile_pass(model, run, device, args.iterations, args.warmup, args.top, train)
    return save_model_report(report, args, (height, width), format_profile, mode=args.mode,
                             fuse_conv_bn=args.fuse_conv_bn, tf32=args.tf32)


if __name__ == '__main__':
    main()
