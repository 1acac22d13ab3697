"""Firing rates, SOPs / MACs and energy of a segmentor (the field's convention, see
docs/benchmarks.md and mmlrf.analysis.energy).

    python tools/analysis/energy.py CONFIG [CHECKPOINT] --num-images 8 --out work_dirs/energy/x
"""
import argparse

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
from mmlrf.analysis import energy
from mmlrf.analysis.loading import add_loading_args, image_batches, load_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_loading_args(p)
    p.add_argument('--num-images', type=int, default=8)
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--e-mac', type=float, default=energy.E_MAC_PJ, help='pJ per MAC')
    p.add_argument('--e-ac', type=float, default=energy.E_AC_PJ, help='pJ per accumulate')
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default='work_dirs/energy/energy', help='writes <out>.json/.png')
    return p.parse_args(argv)


def main(argv=None):
    import json
    import os
    args = parse_args(argv)
    model, cfg = load_model(args.config, args.checkpoint, args.cfg_options, args.device,
                            args.seed)
    batches, source = image_batches(model, cfg, args.num_images, args.batch_size,
                                    args.data_root, tuple(args.size) if args.size else None,
                                    args.device)
    report = energy.measure_energy(model, batches, args.e_mac, args.e_ac,
                                   forward=lambda m, x: m(x, mode='tensor'))
    report.update(config=args.config, checkpoint=args.checkpoint, seed=args.seed,
                  images_source=source)
    print(energy.format_table(report))
    print(f'images: {source}')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(report, f, indent=1)
    energy.plot_energy(report, args.out + '.png')
    print(f'wrote {args.out}.json and {args.out}.png')


if __name__ == '__main__':
    main()
