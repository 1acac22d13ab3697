"""mmlrf.compat: mmseg importable with mmcv-lite; mmengine checkpoints load with weights_only."""
import importlib
import importlib.util
import io
import os
import pickle
import sys

import mmlrf  # noqa: F401  (first: installs the compat fixes)
import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel
from torch import nn

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

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = Config.fromfile(os.path.join(root, 'configs', '_base_', 'datasets', 'ade20k.py'))
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'


class _TinyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, inputs, mode='loss'):
        return {'loss': self.fc(torch.stack(inputs)).pow(2).mean()}


def _runner(work_dir, max_iters, **kwargs):
    from mmengine.runner import Runner

    return Runner(
        model=_TinyModel(), work_dir=str(work_dir), experiment_name=f'compat{max_iters}',
        train_dataloader=dict(dataset=[dict(inputs=torch.ones(2))] * 4,
                              sampler=dict(type='DefaultSampler'), batch_size=2,
                              collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        **kwargs)


def test_runner_checkpoint_loads_with_weights_only(tmp_path):
    """A checkpoint saved by a real Runner (2 iterations) loads with torch's default
    ``weights_only=True`` via ``torch.load``, ``load_from`` and ``resume``."""
    first = _runner(tmp_path, 2)
    first.train()
    path = tmp_path / 'iter_2.pth'
    ckpt = torch.load(path, map_location='cpu')  # weights_only default
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    loaded = _runner(tmp_path, 2, load_from=str(path))
    loaded.load_or_resume()
    assert torch.equal(loaded.model.fc.weight, first.model.fc.weight)
    resumed = _runner(tmp_path, 4, load_from=str(path), resume=True)
    resumed.train()
    assert resumed.iter == 4


def test_allow_list_is_exact():
    """Exactly the message hub's globals are allowed: no general getattr, no other numpy type."""
    hub = MessageHub.get_instance('test_compat_hub')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    loaded = torch.load(io.BytesIO(_torch_save(hub.state_dict())), map_location='cpu')
    assert loaded['log_scalars']['train/loss'].mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # getattr on anything else is refused
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        compat._history_buffer_method(HistoryBuffer, '__init__')
    with pytest.raises(pickle.UnpicklingError, match='not allowed'):
        compat._history_buffer_method(np, 'min')
    # a numpy type that mmengine checkpoints never contain is still refused
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(_torch_save({'x': np.complex64(1 + 2j)})), map_location='cpu')


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
