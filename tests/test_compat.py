"""mmlrf.compat: mmseg importable with mmcv-lite; mmengine checkpoints load with weights_only."""
import importlib
import importlib.util
import pickle
import sys

import mmlrf  # noqa: F401  (first: installs the compat fixes)
import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from mmlrf import compat

STAND_IN = getattr(sys.modules.get('mmcv._ext'), 'is_mmlrf_stand_in', False)


def test_mmseg_modules_import():
    for name in ('mmseg.models', 'mmseg.apis', 'mmseg.datasets'):
        assert importlib.import_module(name) is not None


@pytest.mark.skipif(not STAND_IN, reason='a real mmcv._ext is installed')
def test_stand_in_op_raises_naming_the_op():
    import mmcv
    from mmcv.utils import ext_loader

    ext = ext_loader.load_ext('_ext', ['roi_align_forward'])
    with pytest.raises(compat.MissingCompiledOpError, match='roi_align_forward'):
        ext.roi_align_forward(torch.zeros(1))
    assert mmcv._ext is sys.modules['mmcv._ext']


@pytest.mark.skipif(not STAND_IN, reason='a real mmcv._ext is installed')
def test_stand_in_has_a_proper_spec():
    module = sys.modules['mmcv._ext']
    assert module.__spec__ is not None and module.__spec__.name == 'mmcv._ext'
    assert importlib.util.find_spec('mmcv._ext') is module.__spec__
    with pytest.raises(AttributeError):
        module.__wrapped__  # dunder look-ups are not turned into ops


def test_stand_in_is_idempotent():
    before = sys.modules['mmcv._ext']
    compat.apply()
    assert sys.modules['mmcv._ext'] is before


def test_pkg_resources_for_mmseg_base_configs():
    from mmengine.config import Config

    cfg = Config.fromfile('configs/_base_/datasets/ade20k.py')
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'


def _message_hub_state() -> dict:
    hub = MessageHub.get_instance('test_compat_hub')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('iter', 3)
    return hub.state_dict()


def test_runner_checkpoint_loads_with_weights_only(tmp_path):
    """A checkpoint saved by a real Runner loads via load_from (default torch.load)."""
    from mmengine.runner import Runner
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def train_step(self, *args, **kwargs):
            return {}

    runner = Runner(model=Tiny(), work_dir=str(tmp_path), experiment_name='compat')
    runner.message_hub.update_scalar('train/loss', 0.5)
    runner.message_hub.update_scalar('val/mIoU', np.float64(0.25))
    runner.save_checkpoint(str(tmp_path), 'ckpt.pth')
    ckpt = torch.load(tmp_path / 'ckpt.pth', map_location='cpu')  # weights_only default
    assert ckpt['message_hub']['log_scalars']['train/loss'].current() == 0.5
    runner2 = Runner(model=Tiny(), work_dir=str(tmp_path), experiment_name='compat2',
                     load_from=str(tmp_path / 'ckpt.pth'))
    runner2.load_or_resume()
    assert torch.equal(runner2.model.fc.weight, runner.model.fc.weight)


def test_allow_list_is_exact():
    """Exactly the message hub's globals are allowed: no general getattr, no other numpy type."""
    buffer = HistoryBuffer([1.0, 2.0], [1, 1])
    blob = pickle.dumps({'hub': _message_hub_state(), 'buf': buffer}, protocol=2)
    import io
    loaded = torch.load(io.BytesIO(_torch_save({'buf': buffer})), map_location='cpu')
    assert loaded['buf'].mean() == 1.5
    assert blob  # plain pickling works too
    # getattr on anything else is refused
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        compat._history_buffer_method(HistoryBuffer, '__init__')
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        compat._history_buffer_method(np, 'min')
    # a numpy type that mmengine checkpoints never contain is still refused
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(_torch_save({'x': np.complex64(1 + 2j)})), map_location='cpu')


def _torch_save(obj) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
