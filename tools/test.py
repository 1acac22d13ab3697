"""Test (and evaluate) a segmentor checkpoint (mmseg ``tools/test.py`` CLI).

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show-dir DIR]
        [--fuse-conv-bn] [--channels-last] [--compile] [--allow-partial]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The checkpoint is loaded strictly (``StrictLoadHook``): missing, unexpected or mis-shaped keys
and NaN weights stop the run with the key report; ``--allow-partial`` loads the matching
tensors on purpose. A label outside the data set's classes stops it too, naming the file.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import mmlrf  # noqa: E402,F401  (must precede mmseg)
from mmengine.config import Config  # noqa: E402
from train import (FAILURES, add_check_hooks, add_custom_hook, build_runner,  # noqa: E402
                   load_config, parse_common_args)

from mmlrf.engine.preflight import check_data_roots  # noqa: E402

from mmlrf.inference.options import add_inference_options, chosen_inference_options  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a segmentor (mmlrf)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for the metric json and logs')
    parser.add_argument('--out', help='directory to save predictions for offline evaluation')
    parser.add_argument('--show-dir', help='directory (inside the run dir) to save painted '
                        'predictions')
    add_inference_options(parser)
    return parse_common_args(parser, argv)


def enable_show_dir(cfg: Config, show_dir: str) -> None:
    """Make the ``SegVisualizationHook`` draw every test prediction into ``show_dir``."""
    if 'visualization' not in cfg.default_hooks:
        raise ValueError("--show-dir needs default_hooks.visualization "
                         "(dict(type='SegVisualizationHook'))")
    cfg.default_hooks.visualization.update(draw=True, interval=1)
    cfg.visualizer.save_dir = show_dir


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {args.checkpoint!r}')
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    add_check_hooks(cfg, args.allow_partial)
    check_data_roots(cfg, loaders=('test_dataloader',), config_file=args.config)
    if args.show_dir:
        enable_show_dir(cfg, args.show_dir)
    for option in chosen_inference_options(args):
        add_custom_hook(cfg, option.hook)
    if args.out:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return build_runner(cfg).test()


if __name__ == '__main__':
    try:
        main()
    except FAILURES as err:
        sys.exit(f'error: {err}')
