"""One training run per work dir at a time.

Two runs sharing a ``--work-dir`` would write the same timestamped log folder and overwrite each
other's ``iter_N.pth`` and ``last_checkpoint``. :class:`WorkDirLock` takes an exclusive
``flock`` on ``<work_dir>/.run.lock`` for the life of the run and records the holder's process
id, host and command line in it; a second run refuses to start, naming them. The kernel drops
the lock when the holding process ends, however it ends (``kill -9`` included), so a crashed run
never leaves the work dir locked: the file stays, the lock does not. In a distributed run the
first process (:func:`holds_work_dir_lock`) takes the lock for all of them.
"""
from __future__ import annotations

import fcntl
import os
import os.path as osp
import socket
import sys
from types import TracebackType

LOCK_NAME = '.run.lock'
#: Environment variables holding a process's global rank, per launcher (as mmengine's
#: ``init_dist`` reads them; the process group does not exist yet when the lock is taken).
RANK_VARIABLES = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}


def holds_work_dir_lock(launcher: str) -> bool:
    """Whether this process takes the work dir's lock: the only process without a launcher,
    rank 0 with one (the others run in the same work dir as parts of the same run)."""
    variable = RANK_VARIABLES.get(launcher)
    return variable is None or int(os.environ.get(variable, '0')) == 0


class WorkDirBusyError(RuntimeError):
    """Another live run holds the work dir."""


class WorkDirLock:
    """Exclusive, crash-safe lock of a work dir (see the module docstring).

    Args:
        work_dir (str): the run's work dir (created if missing).

    Raises:
        WorkDirBusyError: from :meth:`acquire`, naming the running process.
    """

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self.path = osp.join(work_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> WorkDirLock:
        """Take the lock (without waiting) and record this process in the lock file."""
        os.makedirs(self.work_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(fd, encoding='utf-8', errors='replace') as f:
                holder = f.read().strip() or 'a process that has not recorded itself yet'
            raise WorkDirBusyError(
                f'work dir {self.work_dir!r} is in use by another run ({holder}); it was not '
                'started. Wait for that run to end, stop it, or give this one its own '
                '--work-dir.') from None
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}: '
                     f'{" ".join(sys.argv)}\n'.encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process ends)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
