"""What one training step of a segmentor keeps for backward, per module and per kind.

Examples::

    # SDT-V3-19M + spiking FPN: official attention vs LRF-Dyn, 2x512x512 (the CPU training case)
    python tools/analysis/saved_tensors.py configs/_base_/models/fpn_sdtv3.py \
        --variants official lrf_dyn --resolution 512x512 --batch 2 --depth 3 \
        --out work_dirs/saved/fpn_sdtv3

Runs ``model.loss()`` on random images and labels in training mode (no backward needed: what
autograd saves is decided in the forward pass) under
:class:`mmlrf.analysis.saved_tensors.SavedTensorMeter`, and prints per variant the total, the
modules that saved the most (names cut to ``--depth`` components) and the bytes per (class of
the saving module, dtype). Writes ``<out>.json``.
"""
import argparse
import json
import os
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import torch

from mmlrf.analysis import benchmark as bm
from mmlrf.analysis.loading import random_label_loss
from mmlrf.analysis.model_args import add_model_args, check_model_args
from mmlrf.analysis.saved_tensors import SavedTensorMeter


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p, several_variants=True, batch=2)
    p.add_argument('--depth', type=int, default=3,
                   help='module-name components per row (backbone.block3.0: 3)')
    p.add_argument('--top', type=int, default=20, help='rows per table')
    p.add_argument('--out', default='work_dirs/saved/saved', help='writes <out>.json')
    return p.parse_args(argv)


def measure_variant(args, variant, hw: tuple[int, int], device: torch.device) -> dict:
    """The :meth:`SavedTensorMeter.summary` of one training forward of ``variant``."""
    model, cfg, _ = bm.build_variant_model(args.config, variant, args.cfg_options,
                                           args.attn_key, device)
    model.train()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, *hw, generator=gen).to(device)
    loss = random_label_loss(model, cfg, images, gen)
    with SavedTensorMeter(model.parameters(), model, args.depth) as meter:
        loss()
    return dict(variant=variant, **meter.summary(args.top))


def format_summary(summary: dict) -> str:
    lines = [f"{summary['variant'] or 'config attention'}: saved for backward "
             f"{summary['saved_mib']:.1f} MiB  ("
             + ', '.join(f'{k} {v:.1f}' for k, v in summary['by_dtype'].items()) + ')']
    lines += [f'  {mib:9.1f} MiB  {name}' for name, mib in summary['by_module']]
    lines.append('  by saving module class and dtype:')
    lines += [f'  {mib:9.1f} MiB  {cls} {dtype}' for cls, dtype, mib in summary['by_kind']]
    return '\n'.join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        hw = check_model_args(args)
    except ValueError as err:
        sys.exit(f'error: {err}')
    if args.depth < 1 or args.top < 1:
        sys.exit('error: --depth and --top must be >= 1')
    device = torch.device(args.device)
    summaries = [measure_variant(args, v, hw, device) for v in args.variants]
    for summary in summaries:
        print(format_summary(summary))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(config=args.config, resolution=list(hw), batch=args.batch,
                       depth=args.depth, device=str(device), torch=torch.__version__,
                       variants=summaries), f, indent=1)
    print(f'wrote {args.out}.json')
    return summaries


if __name__ == '__main__':
    main()
