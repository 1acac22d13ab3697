"""TorchThreadsHook: the intra-op thread count of a run."""
import pytest
import torch
from mmseg.registry import HOOKS

import mmlrf  # noqa: F401  (registers the hooks)
from mmlrf.engine.hooks import TorchThreadsHook


def test_sets_the_thread_count_when_the_run_starts():
    threads = torch.get_num_threads()
    hook = HOOKS.build(dict(type='TorchThreadsHook', num_threads=2))
    assert isinstance(hook, TorchThreadsHook) and hook.priority == 'VERY_HIGH'
    try:
        hook.before_run(None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('bad', [0, -1, 1.5, True, '2'])
def test_invalid_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match='num_threads'):
        TorchThreadsHook(bad)
