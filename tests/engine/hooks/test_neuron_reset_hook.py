"""NeuronResetHook: stateful neurons must not leak membrane state between iterations."""
import mmlrf  # noqa: F401
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmlrf.engine.hooks import NeuronResetHook, reset_neurons
from mmlrf.models.neurons import MultiStepLIF


class _LIFModel(BaseModel):
    """A stateful LIF (tau=2, v_th=1) fed a constant 0.6 for T=1 step per call; returns the
    membrane ``v`` after the call (sub-threshold, so no reset hides a leak)."""

    def __init__(self):
        super().__init__()
        self.lif = MultiStepLIF(stateful=True, ndim=None)
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs)[None] * self.w  # [T=1, B, 1]
        self.lif(x)
        if mode == 'loss':
            return {'loss': (self.w * 0).sum()}
        return [float(self.lif.v.sum())]


class _Record(BaseMetric):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def process(self, data_batch, data_samples):
        self.store.extend(data_samples)
        self.results.append(0)

    def compute_metrics(self, results):
        return {}


def _run_test(tmp_path, hooks):
    store = []
    runner = Runner(
        model=_LIFModel(), work_dir=str(tmp_path), custom_hooks=hooks,
        test_dataloader=dict(dataset=[dict(inputs=torch.full((1,), 0.6))] * 3,
                             sampler=dict(type='DefaultSampler', shuffle=False), batch_size=1,
                             collate_fn=dict(type='pseudo_collate')),
        test_cfg=dict(), test_evaluator=_Record(store),
        experiment_name=f'hook{len(hooks)}', default_scope='mmseg')
    runner.test()
    return store


def test_state_leaks_without_hook_and_not_with_it(tmp_path):
    # v after one step from rest: 0 + (0.6 - 0) / 2 = 0.3; after two: 0.3 + (0.6 - 0.3) / 2 = 0.45
    leaky = _run_test(tmp_path / 'a', [])
    assert leaky[:2] == pytest.approx([0.3, 0.45])
    clean = _run_test(tmp_path / 'b', [dict(type='NeuronResetHook')])
    assert clean == pytest.approx([0.3, 0.3, 0.3])


def test_hook_resets_in_train_val_and_test_iterations():
    model = _LIFModel()
    hook = NeuronResetHook()
    runner = type('R', (), {'model': model})()
    for method in ('before_train_iter', 'before_val_iter', 'before_test_iter'):
        model.lif.v = torch.ones(1)
        getattr(hook, method)(runner, 0, None)
        assert model.lif.v is None, method
    for method in ('before_train', 'before_val_epoch', 'before_test_epoch'):
        model.lif.v = torch.ones(1)
        getattr(hook, method)(runner)
        assert model.lif.v is None, method


def test_reset_neurons_counts_modules():
    model = torch.nn.Sequential(MultiStepLIF(), torch.nn.Linear(1, 1), MultiStepLIF())
    assert reset_neurons(model) == 2
