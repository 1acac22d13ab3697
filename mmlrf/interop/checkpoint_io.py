"""Checkpoint files that are never half-written and never silently half-read.

Two mmengine extension points, both installed by importing this module:

* ``AtomicLocalBackend`` (registered as mmengine file backend ``'atomic_local'``): writes go to a
  temporary file in the destination folder, are flushed and fsync-ed, and then ``os.replace``-d
  onto the final name. A crash, a full disk or a kill while saving leaves the previous file at that
  name untouched (and no partial file under the final name). Select it for checkpoints with::

      default_hooks = dict(checkpoint=dict(type='CheckpointHook',
                                           backend_args=dict(backend='atomic_local')))

* A local-file checkpoint loader (mmengine's ``CheckpointLoader`` scheme for plain paths) that turns
  ``torch.load``'s low-level errors on a truncated or corrupt file into
  :class:`CorruptCheckpointError` naming the file. It is the stock loader otherwise (same
  ``FileNotFoundError`` for a missing file). ``torch.load`` runs with ``weights_only=True`` (the
  torch >= 2.6 default); the few non-tensor globals of mmengine's Runner checkpoints are
  allow-listed once, exactly, by :func:`mmlrf.compat.allow_mmengine_checkpoint_types`. Any other
  global is still refused by torch's safe unpickler.

Files are created with the permissions the user's umask gives (as mmengine's plain writes), not
the 0600 of a temporary file. Around a run (``tools/train.py``): a killed save's temporary files
are removed at the next start (:func:`remove_stale_temporaries`), and ``--resume`` takes the
newest intact checkpoint inside the work dir (:func:`find_resume_checkpoint`), never the path
recorded in ``last_checkpoint`` (absolute, so it points into the original of a copied or moved
work dir). Loading a whole model's checkpoint is strict and refuses non-finite weights
(:func:`check_checkpoint_fits`, used by ``StrictLoadHook`` and ``tools/demo.py``).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import print_log
from mmengine.runner.checkpoint import (CheckpointLoader, _load_checkpoint,
                                        _load_checkpoint_to_model)
from torch import nn

from .pretrained import (CheckpointMismatchError, LoadReport, check_finite_weights,
                         extract_state_dict, match_state_dict)

ATOMIC_BACKEND = 'atomic_local'
#: The temporary files :func:`atomic_write` creates: ``.<final name>.<random>.tmp``.
TEMPORARY_FILE = re.compile(r'^\..+\.[A-Za-z0-9_]+\.tmp$')
#: Checkpoints a run writes and can resume from: ``iter_<N>.pth`` / ``epoch_<N>.pth``.
RUN_CHECKPOINT = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be deserialised (truncated, corrupt, not a checkpoint)."""


def umask() -> int:
    """The process' file-creation mask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(data: bytes | str, filepath: str | Path,
                 encoding: str = 'utf-8') -> None:
    """Write ``data`` to ``filepath`` so that readers see either the old file or the new one.

    Args:
        data (bytes | str): the content; ``str`` is encoded with ``encoding``.
        filepath (str | Path): destination; its folder is created if needed.
        encoding (str): text encoding for ``str`` data.
    """
    filepath = osp.abspath(os.fspath(filepath))
    folder = osp.dirname(filepath)
    os.makedirs(folder, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp_path = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.', suffix='.tmp', dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, filepath)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put`` / ``put_text`` are atomic (see :func:`atomic_write`)."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        """Atomically write bytes to ``filepath``."""
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        """Atomically write text to ``filepath``."""
        atomic_write(obj, filepath, encoding=encoding)


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location: Any = None) -> Any:
    """Load a local checkpoint, naming the file when it is missing or unreadable.

    Args:
        filename (str): local path (``~`` is expanded).
        map_location: as for :func:`torch.load`.

    Returns:
        The deserialised checkpoint object.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptCheckpointError: the file exists but is truncated, corrupt or not a checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and zipfile.is_zipfile(filename):
            raise  # an intact archive holding types weights_only refuses: torch's message fits
        raise CorruptCheckpointError(
            f'checkpoint file {filename!r} ({osp.getsize(filename)} bytes) is truncated, corrupt '
            f'or not a PyTorch checkpoint, and was not loaded ({type(err).__name__}: {err}). '
            'If a run was stopped while saving it, resume from the previous checkpoint; save with '
            f"backend_args=dict(backend='{ATOMIC_BACKEND}') so this cannot happen.") from err


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporary files that interrupted atomic saves left in ``folder``.

    Only call it while no other process writes into ``folder`` (``tools/train.py`` holds the
    work dir's lock).

    Returns:
        list[str]: the removed paths (each also logged).
    """
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = osp.join(folder, name)
        if TEMPORARY_FILE.match(name) and osp.isfile(path):
            os.remove(path)
            removed.append(path)
            print_log(f'removed {path!r}, left by an interrupted checkpoint save',
                      logger='current')
    return removed


def _intact(path: str) -> str | None:
    """Why ``path`` is not an intact checkpoint archive, or None if it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        return f'{type(err).__name__}: {err}'
    return None if bad is None else f'member {bad!r} fails its CRC check'


def find_resume_checkpoint(work_dir: str) -> str | None:
    """The newest intact ``iter_N.pth`` / ``epoch_N.pth`` inside ``work_dir``.

    ``last_checkpoint`` is not read: it holds an absolute path, which in a copied work dir
    points into the original and in a moved one points nowhere. Newest is the highest ``N``;
    a truncated or corrupt file (a zip archive whose directory or CRCs do not check out) is
    skipped with a warning naming it.

    Returns:
        str | None: the path, or None when ``work_dir`` holds no checkpoint at all.

    Raises:
        CorruptCheckpointError: every checkpoint in ``work_dir`` is damaged.
    """
    found = []
    if osp.isdir(work_dir):
        for name in os.listdir(work_dir):
            match = RUN_CHECKPOINT.match(name)
            if match:
                found.append((int(match.group(2)), match.group(1) == 'iter', name))
    damaged = []
    for _, _, name in sorted(found, reverse=True):
        path = osp.join(work_dir, name)
        reason = _intact(path)
        if reason is None:
            return path
        damaged.append(path)
        print_log(f'--resume: skipping {path!r}, not an intact checkpoint ({reason})',
                  logger='current', level=logging.WARNING)
    if damaged:
        raise CorruptCheckpointError(
            f'--resume: no intact checkpoint in {work_dir!r}; damaged: {damaged}. Start '
            'without --resume, or load weights with --cfg-options load_from=PATH.')
    return None


def check_checkpoint_fits(module: nn.Module, checkpoint: Any, source: str,
                          strict: bool = True, opt_out: str = 'strict=False') -> LoadReport:
    """Compare a whole model's checkpoint with ``module``, key by key, before it is loaded.

    Every tensor is checked to be finite. With ``strict``, any missing, unexpected or
    shape-mismatched key is an error listing them; without, the report is logged as a warning
    and the caller loads the matching tensors.

    Args:
        module (nn.Module): the model the checkpoint is for (not a DDP wrapper).
        checkpoint: the loaded checkpoint (mmengine's dict, or a bare state dict).
        source (str): its path, for messages.
        strict (bool): refuse a checkpoint that does not fit exactly.
        opt_out (str): how the caller's user loads non-strictly, named in the error.

    Returns:
        LoadReport: the comparison.

    Raises:
        NonFiniteWeightsError: a tensor is NaN or infinite.
        CheckpointMismatchError: ``strict`` and a key does not fit, or no tensor fits at all.
    """
    state_dict = extract_state_dict(checkpoint, source=source)
    check_finite_weights(state_dict, source)
    _, report = match_state_dict(module, state_dict, prefix='', source=source)
    report.missing += report.new  # a whole model's checkpoint has every tensor
    report.new = []
    name = type(module).__name__
    if not report.loaded:
        raise CheckpointMismatchError(
            f'no tensor of {source!r} fits the {name} built from the config: a checkpoint of '
            f'another model?\n{report.format()}')
    if not report.complete:
        if strict:
            raise CheckpointMismatchError(
                f'{source!r} does not fit the {name} built from the config (strict loading):\n'
                f'{report.format()}\nTo load only the matching tensors on purpose: {opt_out}.')
        print_log(f'{name}: PARTIAL load of {source!r} (non-strict, asked for)\n'
                  f'{report.format()}', logger='current', level=logging.WARNING)
    return report


def load_checkpoint_checked(module: nn.Module, filename: str, strict: bool = True,
                            opt_out: str = 'strict=False',
                            map_location: str = 'cpu') -> dict:
    """Load a whole model's checkpoint into ``module`` after :func:`check_checkpoint_fits`.

    Returns:
        dict: the checkpoint (its ``meta`` holds the data set's classes and palette).
    """
    checkpoint = _load_checkpoint(filename, map_location=map_location)
    check_checkpoint_fits(module, checkpoint, filename, strict=strict, opt_out=opt_out)
    if not isinstance(checkpoint, Mapping) or 'state_dict' not in checkpoint:
        checkpoint = dict(state_dict=extract_state_dict(checkpoint, source=filename))
    _load_checkpoint_to_model(module, checkpoint, strict=False)
    return checkpoint
