"""Profile one inference pass or training step of a segmentor: time per leaf-module type, per
backward node, per operator and per CUDA kernel (mmlrf.analysis.profile).

    python tools/analysis/profile_model.py configs/_base_/models/fpn_sdtv3.py --variant lrf_dyn \
        --resolution 1024x2048 --fuse-conv-bn --out work_dirs/profile/lrfdyn
"""
import argparse
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.loading import add_model_args, parse_hw
from mmlrf.analysis.profile import format_profile, profile_pass
from mmlrf.analysis.report import write_json
from mmlrf.inference.options import INFERENCE_OPTIONS

#: The inference options of a profile (compiled code has no module boundaries to time).
OPTIONS = [o for o in INFERENCE_OPTIONS if o.dest != 'compile']


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p, weights=False)
    p.add_argument('--mode', default='infer', choices=bm.MODES,
                   help='an inference pass or a training step (loss on random labels)')
    p.add_argument('--resolution', type=parse_hw, default=(512, 512), help='HxW')
    p.add_argument('--batch', type=int, default=1)
    for option in OPTIONS:
        p.add_argument(option.flag, action='store_true', help=option.help)
    p.add_argument('--plain-inference', action='store_true', help='lean inference off')
    p.add_argument('--iterations', type=int, default=3, help='passes timed (each way)')
    p.add_argument('--warmup', type=int, default=2, help='passes first')
    p.add_argument('--top', type=int, default=25, help='operators (and CUDA kernels) to list')
    p.add_argument('--out', default='work_dirs/profile/profile', help='writes <out>.json')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        case = bm.model_cases(args.config, [args.variant], [args.resolution], [args.batch],
                              [args.mode], cfg_options=args.cfg_options, attn_key=args.attn_key,
                              options=[o.dest for o in OPTIONS if getattr(args, o.dest)])[-1]
    except ValueError as err:
        sys.exit(f'error: {err}')
    case['lean'] = not args.plain_inference
    device = torch.device(args.device)
    model, cfg = bm.build_case_model(case, device)
    report = profile_pass(model, bm.model_step(model, cfg, case, device), device,
                          args.iterations, args.warmup, args.top, args.mode == 'train')
    print(format_profile(report))
    report.update(case, torch=torch.__version__, device=torch.cuda.get_device_name(device)
                  if device.type == 'cuda' else 'cpu')
    write_json(report, args.out + '.json')
    print(f'wrote {args.out}.json')
    return report


if __name__ == '__main__':
    main()
