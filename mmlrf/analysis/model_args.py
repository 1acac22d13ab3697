"""Command-line arguments shared by the whole-segmentor analysis tools (the config, the attention
variant(s) that replace the config's attention, and the input size) and their report output."""
from __future__ import annotations

import argparse
import json
import os
from typing import Callable

import torch
from mmengine.config import DictAction

from .benchmark import VARIANTS, parse_variant


def parse_hw(text: str) -> tuple[int, int]:
    """``'HxW'`` → ``(H, W)``, both ≥ 1.

    Raises:
        ValueError: for anything else.
    """
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'resolution must be HxW, got {text!r}') from None
    if height < 1 or width < 1:
        raise ValueError(f'resolution must be positive, got {text!r}')
    return height, width


def add_model_args(parser: argparse.ArgumentParser, several_variants: bool = False,
                   batch: int = 1) -> None:
    """Add ``config``, ``--variant`` (or ``--variants``), ``--attn-key``, ``--resolution``,
    ``--batch``, ``--device`` and ``--cfg-options`` to ``parser``."""
    parser.add_argument('config', help='segmentor config')
    variant_help = (f'attention variant(s) {sorted(VARIANTS)} replacing the config\'s own '
                    '(lrf_dyn may take ":<mode>"); default: the config\'s own attention')
    if several_variants:
        parser.add_argument('--variants', nargs='+', default=[None], help=variant_help)
    else:
        parser.add_argument('--variant', default=None, help=variant_help)
    parser.add_argument('--attn-key', default='model.backbone.attn',
                        help='config key of the attention dict a variant replaces')
    parser.add_argument('--resolution', default='512x512', help='HxW')
    parser.add_argument('--batch', type=int, default=batch)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='config overrides')


def check_model_args(args: argparse.Namespace) -> tuple[int, int]:
    """Validate the arguments of :func:`add_model_args`.

    Returns:
        tuple[int, int]: the resolution ``(H, W)``.

    Raises:
        ValueError: a missing config, a bad resolution, batch or variant name.
    """
    if not os.path.isfile(args.config):
        raise ValueError(f'config file not found: {args.config!r}')
    hw = parse_hw(args.resolution)
    if args.batch < 1:
        raise ValueError(f'--batch must be >= 1, got {args.batch}')
    for variant in getattr(args, 'variants', None) or [getattr(args, 'variant', None)]:
        if variant is not None:
            parse_variant(variant)
    return hw


def save_model_report(report: dict, args: argparse.Namespace, hw: tuple[int, int],
                      formatted: Callable[[dict], str], **fields) -> dict:
    """Add the run's settings to ``report``, print ``formatted(report)`` and write
    ``<args.out>.json``.

    Args:
        report (dict): a tool's measurements; updated in place.
        args (argparse.Namespace): the arguments of :func:`add_model_args` and ``out``.
        hw (tuple[int, int]): the resolution ``(H, W)``.
        formatted (Callable[[dict], str]): the report as text.
        **fields: further settings to record (e.g. ``fuse_conv_bn``).

    Returns:
        dict: ``report``, with ``config``, ``variant``, ``resolution``, ``batch``, ``device``
        (the GPU's name or 'cpu'), ``torch`` and ``fields``.
    """
    device = torch.device(args.device)
    report.update(config=args.config, variant=args.variant, resolution=list(hw),
                  batch=args.batch, **fields,
                  device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
                  torch=torch.__version__)
    print(formatted(report))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {args.out}.json')
    return report
