"""Locality of a segmentor's token mixers: token-to-token weight against Manhattan distance,
entropy and the effective receptive field (mmlrf.analysis.locality; paper Fig. 2 / Fig. 5a).

    python tools/analysis/locality.py CONFIG [CHECKPOINT] --variant lrf_ssa --out work_dirs/loc/x
"""
import argparse
import os

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch

from mmlrf.analysis import locality
from mmlrf.analysis.loading import add_model_args, load_from_args
from mmlrf.analysis.report import write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p, num_images=2)
    p.add_argument('--max-tokens', type=int, default=1024, help='skip larger attention maps')
    p.add_argument('--out', default='work_dirs/locality/locality', help='writes <out>.json/.png')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, batches, settings = load_from_args(args, args.num_images)
    report = locality.analyse_model(model, torch.cat(list(batches)), args.max_tokens,
                                    args.num_images)
    report.update(settings)
    mean = [dict(report['mean'], name='MEAN', mixer='', grid='')] if report['mean'] else []
    for r in report['layers'] + mean:
        print(f"{r['name']:<40} {r['mixer']:<10} {r['grid']}: " + (
            r['skipped'] if 'skipped' in r else f"local mass {r['local_mass']:.3f}  entropy "
            f"{r['entropy']:.3f}  mean distance {r['mean_distance']:.2f}"))
    write_json(report, args.out + '.json')
    locality.plot_locality(report, args.out + '.png',
                           f"{os.path.basename(args.config)} {args.variant or ''}")
    print(f'wrote {args.out}.json and {args.out}.png')
    return report


if __name__ == '__main__':
    main()
