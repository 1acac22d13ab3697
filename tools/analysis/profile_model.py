"""Profile one segmentor's inference: time per leaf-module type and per operator.

Examples::

    # SDT-V3-19M + LRF-Dyn + spiking FPN, one Cityscapes-sized frame, on the GPU
    python tools/analysis/profile_model.py configs/_base_/models/fpn_sdtv3.py \
        --variant lrf_dyn --resolution 1024x2048 --device cuda --out work_dirs/profile/lrfdyn
    # the same with the BatchNorms folded into the convs
    python tools/analysis/profile_model.py configs/_base_/models/fpn_sdtv3.py \
        --variant lrf_dyn --resolution 1024x2048 --device cuda --fuse-conv-bn

Prints the tables and writes ``<out>.json``. fp32 with TF32 off unless ``--tf32``.
"""
import argparse
import json
import os
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch
from mmengine.config import DictAction

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.profile import format_profile, profile_forward


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='segmentor config')
    p.add_argument('--variant', default=None,
                   help=f'replace the attention by a benchmark variant: {sorted(bm.VARIANTS)} '
                        '(lrf_dyn may take ":<mode>"); default: the config\'s own')
    p.add_argument('--attn-key', default='model.backbone.attn',
                   help='config key of the attention dict a variant replaces')
    p.add_argument('--resolution', default='512x512', help='HxW')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--fuse-conv-bn', action='store_true', help='fold every BN into its conv')
    p.add_argument('--tf32', action='store_true', help='allow TF32 on CUDA (default: off)')
    p.add_argument('--iterations', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--top', type=int, default=25, help='operators to list')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides')
    p.add_argument('--out', default='work_dirs/profile/profile', help='writes <out>.json')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not os.path.isfile(args.config):
        sys.exit(f'error: config file not found: {args.config!r}')
    try:
        height, width = (int(v) for v in args.resolution.lower().split('x'))
    except ValueError:
        sys.exit(f'error: --resolution must be HxW, got {args.resolution!r}')
    if args.batch < 1 or args.iterations < 1:
        sys.exit('error: --batch and --iterations must be >= 1')
    if args.variant:
        try:
            bm.parse_variant(args.variant)
        except ValueError as err:
            sys.exit(f'error: --{err}')
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    device = torch.device(args.device)
    model, _, _ = bm.build_variant_model(args.config, args.variant, args.cfg_options,
                                         args.attn_key, device, args.fuse_conv_bn)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, height, width, generator=gen).to(device)
    report = profile_forward(model, lambda: model(images, mode='tensor'), device,
                             args.iterations, args.warmup, args.top)
    report.update(config=args.config, variant=args.variant, resolution=[height, width],
                  batch=args.batch, fuse_conv_bn=args.fuse_conv_bn, tf32=args.tf32,
                  device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                  torch=torch.__version__)
    print(format_profile(report))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {args.out}.json')
    return report


if __name__ == '__main__':
    main()
