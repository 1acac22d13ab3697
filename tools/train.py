"""Train a segmentor with mmseg's workflow and mmlrf's components (mmseg ``tools/train.py`` CLI).

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--compile]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import Any

import mmlrf  # noqa: F401  (must precede mmseg: compat fixes + registration)
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
from mmseg.registry import RUNNERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor (mmlrf)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (AmpOptimWrapper)')
    parser.add_argument('--compile', action='store_true',
                        help='run the training forward (with its backward) and the validation '
                        'under torch.compile (CompileHook; compiles at the first batch; on the '
                        'CPU slower and more memory than eager, see docs/benchmarks.md)')
    return parse_common_args(parser, argv)


def parse_common_args(parser: argparse.ArgumentParser,
                      argv: list[str] | None = None) -> argparse.Namespace:
    """Add the options shared by the train and test CLIs (``--cfg-options``, ``--launcher``,
    ``--local_rank``), parse ``argv`` and export ``LOCAL_RANK`` for the launcher."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100 '
                        'or model.backbone.embed_dims="[32,64,128,256]"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def set_data_root(cfg: Config, data_root: str) -> None:
    """Set ``data_root`` of every dataloader's data set (through wrappers such as
    ``RepeatDataset``' ``dataset`` key)."""
    for name in DATALOADERS:
        dataset = (cfg.get(name) or {}).get('dataset')
        while dataset is not None:
            if 'data_root' in dataset:
                dataset['data_root'] = data_root
            dataset = dataset.get('dataset')


def load_config(config: str, work_dir: str | None, cfg_options: dict | None,
                launcher: str) -> Config:
    """Load ``config``, apply ``--cfg-options`` and resolve the work dir (CLI > file > name).

    A top-level ``data_root=PATH`` option also sets the root of every dataloader's data set.

    Raises:
        FileNotFoundError: if ``config`` does not exist.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config!r}')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
        if 'data_root' in cfg_options:
            set_data_root(cfg, cfg_options['data_root'])
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def check_pretrained(cfg: Any, key: str = 'model') -> None:
    """Refuse to start when a ``Pretrained`` init checkpoint is a missing local file.

    Raises:
        FileNotFoundError: naming the config key, the path and how to set it.
    """
    if isinstance(cfg, dict):
        if cfg.get('type') == 'Pretrained':
            path = cfg.get('checkpoint')
            if isinstance(path, str) and '://' not in path and not osp.isfile(path):
                raise FileNotFoundError(
                    f'pretrained checkpoint {path!r} ({key}.checkpoint) not found. For SDT-V3, '
                    'convert the official ImageNet weights: python tools/convert_sdtv3.py '
                    f'OFFICIAL.pth {path} (README, "Pretrained weights"); or point to a file '
                    f'with the MMLRF_PRETRAINED environment variable or --cfg-options '
                    f'{key}.checkpoint=PATH; to train from scratch on purpose: --cfg-options '
                    f'{key}=None')
        for name, value in cfg.items():
            check_pretrained(value, f'{key}.{name}')
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_pretrained(value, f'{key}[{i}]')


def add_custom_hook(cfg: Config, hook_type: str) -> None:
    """Append ``dict(type=hook_type)`` to ``cfg.custom_hooks``."""
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type=hook_type)]


def enable_amp(cfg: Config) -> None:
    """Switch the optimiser wrapper to ``AmpOptimWrapper`` (dynamic loss scale)."""
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        return
    if wrapper != 'OptimWrapper':
        raise ValueError(f"--amp needs optim_wrapper.type 'OptimWrapper', got {wrapper!r}")
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def build_runner(cfg: Config) -> Runner:
    """Build the default Runner, or ``cfg.runner_type`` from mmseg's ``RUNNERS``."""
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def main(argv: list[str] | None = None) -> Runner:
    args = parse_args(argv)
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.amp:
        enable_amp(cfg)
    if args.compile:
        add_custom_hook(cfg, 'CompileHook')
    cfg.resume = args.resume
    check_pretrained(cfg.model)
    runner = build_runner(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    try:
        main()
    except FileNotFoundError as err:
        sys.exit(f'error: {err}')
