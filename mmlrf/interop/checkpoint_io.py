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
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader

ATOMIC_BACKEND = 'atomic_local'


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be deserialised (truncated, corrupt, not a checkpoint)."""


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
