"""Memory / speed benchmark of token mixers and whole segmentors (see docs/benchmarks.md).

Examples::

    # the issue-4 acceptance run: prints LRF-Dyn / official peak-memory ratios
    python tools/analysis/benchmark.py --preset issue4 --out work_dirs/bench/issue4
    # operator sweep
    python tools/analysis/benchmark.py --variants official ssa_kv lrf_ssa lrf_dyn:fft \
        --tokens 1024 4096 --channels 360 --heads 8 --batch 1 8 --modes infer train
    # whole models from a config
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 512x512 1024x2048 --batch 1
    # ... and again with every BatchNorm folded into its conv, in the same run (inference only)
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 1024x2048 --fuse-conv-bn
    # ... at PyTorch's default GPU precision (TF32 in cuDNN convolutions, fp32 matrix products)
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 1024x2048 --tf32 convs
    # ... and replayed as one CUDA graph (GPU only; both settings in the same run)
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 1024x2048 --fuse-conv-bn --cuda-graph
    # ... with the weights stored channels-last (lower CPU inference memory), in the same run
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 1024x2048 --fuse-conv-bn --channels-last
    # ... and under torch.compile (elementwise chains fused; compilation reported apart)
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 1024x2048 --compile
    # mmlrf's CPU conv routes against plain oneDNN convolutions, timed together
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 512x512 --batch 2 --modes train \
        --onednn-convs --interleave
    # a training-step ratio on a shared machine: time both models round-robin in one process
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 512x512 --batch 2 --modes train --interleave
    # ... with the built models frozen out of the garbage collector's scans (gc.freeze)
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 512x512 --batch 2 --modes train --interleave \
        --freeze-gc
    # LRF-Dyn inference at PyTorch's default precision, again with the allocator capped at
    # 1192 MiB (1.25 GB) above weights and inputs: cuDNN then picks algorithms that fit (GPU)
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants lrf_dyn --resolution 1024x2048 --tf32 convs --memory-cap-mib 1192
    # LRF-Dyn with the learnable tridiagonal M (re-diagonalised every step) vs the modal default
    python tools/analysis/benchmark.py --config configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn lrf_dyn_tridiagonal --modes train
"""
import argparse
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch
from mmengine.config import DictAction

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.model_args import parse_hw


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', choices=bm.PRESETS, help='a fixed set of cases (see docs)')
    p.add_argument('--config', help='segmentor config: measure whole models instead of operators')
    p.add_argument('--model-config', default=bm.MODEL_19M_CONFIG,
                   help='19M segmentor config used by the presets')
    p.add_argument('--variants', nargs='+', default=['official', 'ssa_kv', 'lrf_ssa', 'lrf_dyn'],
                   help=f'attention variants: {sorted(bm.VARIANTS)}; lrf_dyn:<mode> picks a '
                        'dynamics path')
    p.add_argument('--tokens', nargs='+', type=int, default=[1024], help='operator token counts N')
    p.add_argument('--channels', type=int, default=360)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--v-ratio', type=int, default=4)
    p.add_argument('--T', nargs='+', type=int, default=[1], dest='ts')
    p.add_argument('--batch', nargs='+', type=int, default=[1])
    p.add_argument('--resolution', nargs='+', default=['512x512'], help='HxW for --config')
    p.add_argument('--modes', nargs='+', choices=bm.MODES, default=['infer'])
    p.add_argument('--dtypes', nargs='+', choices=bm.DTYPES, default=['float32'])
    p.add_argument('--attn-key', default='model.backbone.attn',
                   help='config key of the attention dict a variant replaces')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--budget-mib', type=float, default=None,
                   help='skip cases whose N×N maps alone exceed this (default: 16000 on CPU)')
    p.add_argument('--timeout', type=float, default=None, help='per-case timeout (CPU), s')
    p.add_argument('--interleave', action='store_true',
                   help='time the cases of each ratio group round-robin in one process (all '
                        'of the group alive at once): same-run ratios that a shared, noisy '
                        'machine disturbs less')
    p.add_argument('--freeze-gc', action='store_true',
                   help='with --interleave: collect, then freeze the objects alive (gc.freeze: '
                        'models, inputs, imports) for the timed calls, so the cyclic '
                        "collector's passes inside them scan only what the calls create")
    p.add_argument('--smoke', action='store_true',
                   help='shrink the cases to a quick dry run (toy model, tiny operators)')
    p.add_argument('--fuse-conv-bn', action='store_true',
                   help='--config inference: also measure every case with each BN folded into '
                        'its conv (mmcv fuse_conv_bn), in the same run')
    p.add_argument('--cuda-graph', action='store_true',
                   help='--config inference on CUDA: also measure every case replayed as one '
                        'CUDA graph, in the same run')
    p.add_argument('--channels-last', action='store_true',
                   help='--config inference: also measure every case with the weights stored '
                        'channels-last (mmlrf.hooks.to_channels_last), in the same run')
    p.add_argument('--compile', action='store_true',
                   help='--config: also measure every case under torch.compile (default '
                        'mode; inference: the forward; training: the forward and the loss, '
                        'with their backward; the first call, compilation, is reported as '
                        'compile_s), in the same run')
    p.add_argument('--onednn-convs', action='store_true',
                   help='--config: also measure every case with all convolutions through oneDNN '
                        "(mmlrf's CPU conv routes off, mmlrf.conv.cpu_routes), in the same run; "
                        'with --interleave each case and its twin are timed together')
    p.add_argument('--plain-inference', action='store_true',
                   help='--config inference: also measure every case with lean inference off '
                        '(mmlrf.hooks.set_lean_inference: no row strips, no released maps), '
                        'in the same run')
    p.add_argument('--tf32', nargs='?', const='all', default='off', choices=bm.TF32_MODES,
                   help='TF32 on CUDA: off (default; true fp32), convs (cuDNN convolutions only: '
                        "PyTorch's default), all (convolutions and matrix products; the same as "
                        'a bare --tf32)')
    p.add_argument('--cudnn-benchmark', action='store_true',
                   help="let cuDNN pick the fastest conv algorithms (mmseg's runtime default; "
                        'default here: off)')
    p.add_argument('--memory-cap-mib', type=float, default=None,
                   help='CUDA: also measure every case with the caching allocator capped at this '
                        'many MiB above what the case holds before its measured calls (weights, '
                        'inputs), in the same run after the uncapped cases; cuDNN then takes '
                        'convolution algorithms whose workspaces fit, and a case that does not '
                        'fit reports an out-of-memory error')
    p.add_argument('--out', default='work_dirs/benchmark/benchmark',
                   help='output prefix: writes <out>.json and <out>.png')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    bm.set_cuda_precision(args.tf32, args.cudnn_benchmark)
    highlights = None
    if args.preset and args.config:
        sys.exit('error: --preset and --config are exclusive (a preset picks its model by '
                 '--model-config)')
    for flag, on in (('--fuse-conv-bn', args.fuse_conv_bn), ('--cuda-graph', args.cuda_graph),
                     ('--channels-last', args.channels_last), ('--compile', args.compile),
                     ('--onednn-convs', args.onednn_convs),
                     ('--plain-inference', args.plain_inference)):
        if on and not args.config:
            sys.exit(f'error: {flag} applies to whole models given by --config')
    if args.cuda_graph and not args.device.startswith('cuda'):
        sys.exit(f'error: --cuda-graph needs a CUDA --device, got {args.device!r}')
    if args.onednn_convs and args.device != 'cpu':
        sys.exit('error: --onednn-convs compares the CPU conv routes: it needs --device cpu, '
                 f'got {args.device!r}')
    if args.freeze_gc and not args.interleave:
        sys.exit('error: --freeze-gc applies to the round-robin timing of --interleave')
    if args.memory_cap_mib is not None:
        if not args.device.startswith('cuda'):
            sys.exit(f'error: --memory-cap-mib caps the CUDA allocator: it needs a CUDA '
                     f'--device, got {args.device!r}')
        if args.interleave:
            sys.exit('error: --memory-cap-mib bounds one case at a time, --interleave keeps '
                     'every case of a group alive at once: use one or the other')
    if args.preset:
        cases, highlights = bm.preset_cases(args.preset, args.device, args.model_config)
    elif args.config:
        try:
            res = [parse_hw(r) for r in args.resolution]
            cases = bm.model_cases(args.config, args.variants, res, args.batch, args.modes,
                                   args.dtypes, args.cfg_options, args.attn_key,
                                   (False, True) if args.fuse_conv_bn else (False,),
                                   (False, True) if args.cuda_graph else (False,),
                                   (False, True) if args.channels_last else (False,),
                                   (True, False) if args.onednn_convs else (True,),
                                   (False, True) if args.compile else (False,),
                                   (True, False) if args.plain_inference else (True,))
        except ValueError as err:
            sys.exit(f'error: {err}')
    else:
        cases = bm.operator_cases(args.variants, args.tokens, args.channels, args.heads,
                                  args.v_ratio, args.batch, args.ts, args.modes, args.dtypes)
    if args.smoke:
        cases = bm.smoke_cases(cases)
        highlights = [dict(h, case=bm.smoke_cases([h['case']])[0]) for h in highlights or []]
    if args.memory_cap_mib is not None:
        try:
            cases = bm.with_memory_cap(cases, args.memory_cap_mib)
        except ValueError as err:
            sys.exit(f'error: --memory-cap-mib: {err}')
    budget = args.budget_mib
    if budget is None and args.device == 'cpu':
        budget = 16000.0
    bm.run_benchmark(cases, args.device, args.out, ' '.join(['benchmark.py'] + sys.argv[1:]),
                     highlights, args.warmup, args.repeats, budget, args.timeout,
                     interleave=args.interleave, freeze_gc=args.freeze_gc)
    print(f'wrote {args.out}.json and {args.out}.png')


if __name__ == '__main__':
    main()
