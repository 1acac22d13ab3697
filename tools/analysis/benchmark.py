"""Memory and speed of token mixers or whole models (mmlrf.analysis.benchmark), e.g.

    python tools/analysis/benchmark.py --variants official lrf_dyn --tokens 1024 4096 \
        --modes infer train
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 1024x2048 --fuse-conv-bn --channels-last
    python tools/analysis/benchmark.py \
        --config configs/imagenet/spikformer-8-512-ssa_8xb64_in1k.py --calls tensor \
        --variants ssa_kv lrf_ssa_kv lrf_dyn --reference ssa_kv --resolution 224x224

(the last: an mmpretrain classifier, whose logits its tensor call returns).
"""
import argparse
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch
from mmengine.config import DictAction

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.loading import ATTN_KEY, parse_hw, variant_arg
from mmlrf.analysis.report import command_line
from mmlrf.inference.options import add_inference_options, chosen_inference_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', help='segmentor config: measure whole models, not operators')
    p.add_argument('--variants', nargs='+', type=variant_arg,
                   default=['official', 'ssa_kv', 'lrf_ssa', 'lrf_dyn'],
                   help='attention variants; lrf_dyn:<mode> picks a dynamics path')
    p.add_argument('--reference', type=variant_arg, default=bm.REFERENCE,
                   help='the variant the others are compared with (ratios in the same run)')
    p.add_argument('--modes', nargs='+', choices=bm.MODES, default=['infer'])
    p.add_argument('--dtypes', nargs='+', choices=bm.DTYPES, default=['float32'])
    p.add_argument('--batch', nargs='+', type=int, default=[1])
    p.add_argument('--tokens', nargs='+', type=int, default=[1024], help='operator token counts')
    p.add_argument('--channels', type=int, default=360, help='operator C (of Q, K)')
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--v-ratio', type=int, default=4, help='V has v-ratio·C channels')
    p.add_argument('--T', nargs='+', type=int, default=[1], dest='ts', help='time steps')
    p.add_argument('--resolution', nargs='+', type=parse_hw, default=[(512, 512)],
                   help='HxW of the --config images')
    p.add_argument('--calls', nargs='+', choices=bm.MODEL_CALLS, default=['predict', 'tensor'],
                   help="--config inference: 'predict' (mmseg's predict: logits resized to the "
                        "image, argmax; what a user runs), 'tensor' (the head's logits at its "
                        'stride)')
    p.add_argument('--attn-key', default=ATTN_KEY,
                   help='config key of the attention dict a variant replaces')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--warmup', type=int, default=1, help='untimed calls first')
    p.add_argument('--repeats', type=int, default=3, help='timed calls (the median is reported)')
    p.add_argument('--timeout', type=float, default=None, help='per case and process (CPU), s')
    p.add_argument('--out', default='work_dirs/benchmark/benchmark',
                   help='output prefix: writes <out>.json and <out>.png')
    options = p.add_argument_group('model cases', '--config inference: each case again with '
                                   'the chosen options applied together, in the same run')
    add_inference_options(options)
    options.add_argument('--plain-inference', action='store_true',
                         help='each case again with lean inference off')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    options = [o.dest for o in chosen_inference_options(args)]
    try:
        if (options or args.plain_inference) and not args.config:
            raise ValueError('the model-case options apply to whole models given by --config')
        if args.config:
            cases = bm.model_cases(args.config, args.variants, args.resolution, args.batch,
                                   args.modes, args.dtypes, args.cfg_options, args.attn_key,
                                   options, args.plain_inference, args.calls)
        else:
            cases = bm.operator_cases(args.variants, args.tokens, args.channels, args.heads,
                                      args.v_ratio, args.batch, args.ts, args.modes, args.dtypes)
    except ValueError as err:
        sys.exit(f'error: {err}')
    command = command_line('benchmark.py', argv)
    report = bm.run_benchmark(cases, args.device, args.out, command, args.warmup, args.repeats,
                              args.timeout, reference=args.reference)
    print(f'wrote {args.out}.json and {args.out}.png')
    return report


if __name__ == '__main__':
    main()
