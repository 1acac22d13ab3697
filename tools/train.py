"""Train a segmentor with mmseg's workflow and mmlrf's components (mmseg ``tools/train.py`` CLI).

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--compile] [--smoke]
        [--allow-partial] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Before anything runs: every ``--cfg-options`` key must name something in the config
(``+KEY=VALUE`` adds one on purpose), the data roots and a ``Pretrained`` checkpoint must exist,
and no other run may hold the work dir. The run then fails loudly (see ``FAILURES``): a model
that does not fit the data set, a checkpoint that does not fit the model or holds NaN weights, a
non-finite loss, a label or annotation size that does not fit its image.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

import mmlrf  # noqa: F401  (must precede mmseg: compat fixes + registration)
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from mmlrf.datasets.sample_checks import SegSampleError
from mmlrf.engine.cfg_options import CfgOptionError, check_cfg_options
from mmlrf.engine.hooks import ModelDataMismatchError, NonFiniteError
from mmlrf.engine.preflight import check_data_roots, check_pretrained
from mmlrf.engine.smoke import apply_smoke
from mmlrf.engine.work_dir_lock import WorkDirBusyError, WorkDirLock, holds_work_dir_lock
from mmlrf.interop import (CheckpointMismatchError, CorruptCheckpointError,
                           NonFiniteWeightsError, find_resume_checkpoint,
                           remove_stale_temporaries)

#: Errors a user can act on: printed as one message (exit status 1), no traceback.
FAILURES = (FileNotFoundError, CfgOptionError, WorkDirBusyError, NonFiniteError,
            CheckpointMismatchError, NonFiniteWeightsError, CorruptCheckpointError,
            SegSampleError, ModelDataMismatchError)
#: The checks every run gets, whether or not its config lists them (mmlrf.engine.hooks).
CHECK_HOOKS = ('ModelDataCheckHook', 'StrictLoadHook', 'FiniteCheckHook')


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
    parser.add_argument('--smoke', action='store_true',
                        help='shrink the config to a run of seconds on data generated in the '
                        'data set\'s layout under WORK_DIR/smoke_data: 2 iterations, 32-pixel '
                        'crops, no workers, validation and a checkpoint, no pretrained weights')
    return parse_common_args(parser, argv)


def parse_common_args(parser: argparse.ArgumentParser,
                      argv: list[str] | None = None) -> argparse.Namespace:
    """Add the options shared by the train and test CLIs (``--cfg-options``, ``--launcher``,
    ``--local_rank``), parse ``argv`` and export ``LOCAL_RANK`` for the launcher."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100 '
                        'or model.backbone.embed_dims="[32,64,128,256]"; a key must name '
                        'something in the config: write +KEY=VALUE to add one on purpose')
    parser.add_argument('--allow-partial', action='store_true',
                        help='load a checkpoint (load_from, --resume, the test checkpoint) that '
                        'does not fit the model exactly: only the matching tensors, the rest '
                        'reported (default: refuse it with the key report)')
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
        CfgOptionError: an option's key names nothing in the config.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config!r}')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    cfg_options = check_cfg_options(cfg, cfg_options, handled=('data_root',))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
        if 'data_root' in cfg_options:
            set_data_root(cfg, cfg_options['data_root'])
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def add_custom_hook(cfg: Config, hook_type: str) -> None:
    """Append ``dict(type=hook_type)`` to ``cfg.custom_hooks``."""
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type=hook_type)]


def add_check_hooks(cfg: Config, allow_partial: bool = False) -> None:
    """Make sure the run has :data:`CHECK_HOOKS` (a config from elsewhere may lack them);
    ``allow_partial`` turns ``StrictLoadHook``'s strictness off."""
    hooks = list(cfg.get('custom_hooks', []))
    present = {str(h.get('type')).split('.')[-1] for h in hooks}
    hooks += [dict(type=name) for name in CHECK_HOOKS if name not in present]
    for hook in hooks:
        if str(hook.get('type')).split('.')[-1] == 'StrictLoadHook' and allow_partial:
            hook['strict'] = False
    cfg.custom_hooks = hooks


def prepare_work_dir(cfg: Config, resume: bool) -> WorkDirLock | None:
    """Lock the work dir and remove a killed save's temporary files (one process of a
    distributed run: :func:`holds_work_dir_lock`) and, for ``resume``, point ``load_from`` at
    the newest intact checkpoint inside the work dir (``last_checkpoint`` is not read: its
    absolute path belongs to the original of a copied or moved work dir).

    Returns:
        WorkDirLock | None: held, released by the caller (or the end of the process); None in
        the processes that do not take it.
    """
    lock = None
    if holds_work_dir_lock(cfg.launcher):
        lock = WorkDirLock(osp.abspath(cfg.work_dir)).acquire()
        remove_stale_temporaries(cfg.work_dir)
    cfg.resume = resume
    if resume and cfg.get('load_from') is None:
        found = find_resume_checkpoint(cfg.work_dir)
        if found is None:
            print_log(f'--resume: no checkpoint in {cfg.work_dir!r}; starting from iteration 0',
                      logger='current')
            cfg.resume = False
        cfg.load_from = found
    return lock


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
    if args.smoke:
        for note in apply_smoke(cfg, osp.join(osp.abspath(cfg.work_dir), 'smoke_data')):
            print_log(f'--smoke: {note}', logger='current')
    if args.amp:
        enable_amp(cfg)
    if args.compile:
        add_custom_hook(cfg, 'CompileHook')
    add_check_hooks(cfg, args.allow_partial)
    check_pretrained(cfg.model)
    check_data_roots(cfg, config_file=args.config)
    lock = prepare_work_dir(cfg, args.resume)
    try:
        runner = build_runner(cfg)
        runner.train()
    finally:
        if lock is not None:
            lock.release()
    return runner


if __name__ == '__main__':
    try:
        main()
    except FAILURES as err:
        sys.exit(f'error: {err}')
