"""Locality of SSA / LRF-SSA / LRF-Dyn models: token-to-token weight vs Manhattan distance
histograms, entropy and effective receptive fields (paper Fig. 2 / Fig. 5a; see
mmlrf.analysis.locality for the definitions).

    python tools/analysis/locality.py CONFIG [CHECKPOINT] [--variant lrf_ssa] --out work_dirs/loc/x
"""
import argparse

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
from mmlrf.analysis import benchmark, locality
from mmlrf.analysis.loading import add_loading_args, image_batches, load_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_loading_args(p)
    p.add_argument('--variant', choices=sorted(benchmark.VARIANTS), default=None,
                   help='replace the attention (at --attn-key) by a benchmark variant')
    p.add_argument('--attn-key', default='model.backbone.attn')
    p.add_argument('--num-images', type=int, default=2, help='images for the ERF')
    p.add_argument('--max-tokens', type=int, default=1024, help='skip larger attention maps')
    p.add_argument('--out', default='work_dirs/locality/locality', help='writes <out>.json/.png')
    return p.parse_args(argv)


def main(argv=None):
    import json
    import os

    import torch
    args = parse_args(argv)
    options = dict(args.cfg_options or {})
    if args.variant:
        mixer, _ = benchmark.parse_variant(args.variant)
        options[args.attn_key] = mixer
    model, cfg = load_model(args.config, args.checkpoint, options, seed=args.seed)
    batches, source = image_batches(model, cfg, args.num_images, args.num_images,
                                    args.data_root, tuple(args.size) if args.size else None)
    images = torch.cat(list(batches))
    report = locality.analyse_model(model, images, args.max_tokens, args.num_images)
    report.update(config=args.config, checkpoint=args.checkpoint, seed=args.seed,
                  variant=args.variant, images_source=source)
    for r in report['layers']:
        print(f"{r['name']:<40} {r['mixer']:<10} grid {r['grid']}: " +
              (r['skipped'] if 'skipped' in r else
               f"mass<=5 {r['mass_within_5']:.3f}  entropy {r['entropy']:.3f}  "
               f"mean distance {r['mean_distance']:.2f}"))
    if report['mean']:
        m = report['mean']
        print(f"MEAN: mass<=5 {m['mass_within_5']:.3f}  entropy {m['entropy']:.3f}  "
              f"mean distance {m['mean_distance']:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(report, f, indent=1)
    erf = torch.tensor(report['erf']) if report['erf'] is not None else None
    locality.plot_locality([r for r in report['layers'] if 'histogram' in r], erf,
                           args.out + '.png', f"{os.path.basename(args.config)} "
                                              f"{args.variant or ''}")
    print(f'wrote {args.out}.json and {args.out}.png')


if __name__ == '__main__':
    main()
