"""Firing rates, SOPs / MACs and energy of a segmentor (mmlrf.analysis.energy).

    python tools/analysis/energy.py CONFIG [CHECKPOINT] --num-images 8 --out work_dirs/energy/x
"""
import argparse

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
from mmlrf.analysis import energy
from mmlrf.analysis.loading import add_model_args, load_from_args
from mmlrf.analysis.report import write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p, num_images=8)
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--e-mac', type=float, default=energy.E_MAC_PJ, help='pJ per MAC')
    p.add_argument('--e-ac', type=float, default=energy.E_AC_PJ, help='pJ per accumulate')
    p.add_argument('--out', default='work_dirs/energy/energy', help='writes <out>.json/.png')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, batches, settings = load_from_args(args, args.batch_size)
    report = energy.measure_energy(model, batches, args.e_mac, args.e_ac,
                                   forward=lambda m, x: m(x, mode='tensor'))
    report.update(settings)
    print(energy.format_table(report) + f"\nimages: {settings['images_source']}")
    write_json(report, args.out + '.json')
    energy.plot_energy(report, args.out + '.png')
    print(f'wrote {args.out}.json and {args.out}.png')
    return report


if __name__ == '__main__':
    main()
