"""Hook fixing torch's intra-op CPU thread count for a run."""
from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class TorchThreadsHook(Hook):
    """Set ``torch.set_num_threads(num_threads)`` when the run starts.

    Small CPU models gain nothing from intra-op parallelism, and on a shared machine OpenMP's
    busy-waiting threads make them several times slower.

    Args:
        num_threads (int): intra-op threads, >= 1.
    """

    priority = 'VERY_HIGH'

    def __init__(self, num_threads: int = 1) -> None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f'num_threads must be an integer >= 1, got {num_threads!r}')
        self.num_threads = num_threads

    def before_run(self, runner: Any) -> None:
        torch.set_num_threads(self.num_threads)
