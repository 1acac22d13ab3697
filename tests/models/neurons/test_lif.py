"""Multi-step LIF neuron against hand computations; the surrogate gradients; building neurons
from configs."""
import math

import pytest
import torch

import mmlrf  # noqa: F401  (registers the neurons)
from mmlrf.models.neurons import MultiSpike, MultiStepLIF, build_neuron, spike

# Input current of one neuron over T = 6 steps, and the hand-computed trace for tau=2, V_th=1,
# V_reset=0: H[t] = V[t-1] + (X[t] - V[t-1]) / 2.
X = [1.5, 0.5, 1.5, 2.5, 1.8, 0.0]
# hard reset: H = .75, .625, 1.0625 (spike, V=0), 1.25 (spike, V=0), .9, .45
HARD_SPIKES = [0, 0, 1, 1, 0, 0]
# soft reset: H = .75, .625, 1.0625 (spike, V=.0625), 1.28125 (spike, V=.28125),
#             1.040625 (spike, V=.040625), .0203125
SOFT_SPIKES = [0, 0, 1, 1, 1, 0]
SOFT_FINAL_V = 0.0203125


def _current(values, ndim=2):
    return torch.tensor(values, dtype=torch.float64).reshape(-1, *([1] * (ndim - 1)))


@pytest.mark.parametrize('reset, expected', [('hard', HARD_SPIKES), ('soft', SOFT_SPIKES)])
def test_lif_hand_sequence(reset, expected):
    lif = MultiStepLIF(tau=2.0, v_threshold=1.0, reset=reset, ndim=2, stateful=True)
    out = lif(_current(X))
    assert out.flatten().tolist() == expected
    if reset == 'soft':
        assert lif.v.item() == pytest.approx(SOFT_FINAL_V, abs=1e-12)
    else:
        assert lif.v.item() == pytest.approx(0.45, abs=1e-12)


def _sigmoid_grad(x, alpha):
    s = 1 / (1 + math.exp(-alpha * x))
    return alpha * s * (1 - s)


@pytest.mark.parametrize('detach', [True, False])
def test_lif_detach_reset_gradient(detach):
    # T = 2, soft reset: h0 = x0/2, v0 = h0 - s0, h1 = v0/2 + x1/2.
    # ds1/dx0 = sg'(h1 - 1) · 1/2 · dv0/dx0,  dv0/dx0 = 1/2 - [not detached] sg'(h0 - 1) / 2.
    alpha, x0, x1 = 4.0, 2.2, 1.4
    x = torch.tensor([[x0], [x1]], dtype=torch.float64, requires_grad=True)
    lif = MultiStepLIF(reset='soft', detach_reset=detach, alpha=alpha, ndim=2)
    lif(x)[1].sum().backward()
    h0 = x0 / 2
    v0 = h0 - 1.0  # x0 = 2.2 spikes at t0
    h1 = v0 / 2 + x1 / 2
    dv0 = 0.5 - (0 if detach else _sigmoid_grad(h0 - 1, alpha) / 2)
    assert x.grad[0, 0].item() == pytest.approx(_sigmoid_grad(h1 - 1, alpha) * 0.5 * dv0,
                                                rel=1e-12)


@pytest.mark.parametrize('surrogate, formula', [
    ('sigmoid', lambda x, a: _sigmoid_grad(x, a)),
    ('atan', lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)),
])
def test_surrogate_gradient_value(surrogate, formula):
    x = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    out = spike(x, surrogate, alpha=3.0)
    assert out.tolist() == [1.0, 0.0]
    out.sum().backward()
    for value, grad in zip(x.tolist(), x.grad.tolist()):
        assert grad == pytest.approx(formula(value, 3.0), rel=1e-12)


def test_lif_rejects_flattened_time():
    lif = MultiStepLIF()  # ndim=5
    with pytest.raises(ValueError, match='flatten'):
        lif(torch.zeros(2 * 3, 4, 5, 5))
    assert lif(torch.zeros(2, 3, 4, 5, 5)).shape == (2, 3, 4, 5, 5)


def test_lif_stateful_carry_over_and_reset():
    x = _current(X)
    full = MultiStepLIF(reset='soft', ndim=2)(x)
    lif = MultiStepLIF(reset='soft', ndim=2, stateful=True)
    split = torch.cat([lif(x[:3]), lif(x[3:])])
    assert torch.equal(split, full)
    lif.reset()
    assert lif.v is None
    # Hard reset: after X = 1.5, 0.5 the membrane is .625, so X = 1.5 gives H = 1.0625 (spike)
    # when carried and H = .75 (silent) from rest.
    probe = _current([1.5])
    hard = MultiStepLIF(ndim=2, stateful=True)
    hard(x[:2])
    assert hard(probe).item() == 1.0
    hard.reset()
    hard(x[:2])
    hard.reset()
    assert hard(probe).item() == 0.0
    assert MultiStepLIF(ndim=2)(probe).item() == 0.0  # not stateful: every call starts at rest


def test_lif_inplace_argument_leaves_the_input():
    """``inplace=True`` is accepted (the common neuron interface) but LIF always returns a new
    tensor: the input current is left as it was."""
    x = torch.randn(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 4
    before = x.clone()
    with torch.no_grad():
        out = MultiStepLIF()(x, inplace=True)
    assert out.data_ptr() != x.data_ptr() and torch.equal(x, before)
    assert torch.equal(out, (before / 2 >= 1).to(out.dtype))  # one step from rest: H = X / 2
    assert 0 < out.sum() < out.numel()


@pytest.mark.parametrize('kwargs, name', [
    (dict(tau=1.0), 'tau'),
    (dict(reset='zero'), 'reset'),
    (dict(surrogate='relu'), 'surrogate'),
    (dict(ndim=1), 'ndim'),
])
def test_invalid_lif_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiStepLIF(**kwargs)


def test_build_neuron():
    lif = build_neuron(dict(type='MultiStepLIF', tau=3.0), v_threshold=0.5)
    assert isinstance(lif, MultiStepLIF) and lif.tau == 3.0 and lif.v_threshold == 0.5
    multi = build_neuron(dict(type='MultiSpike', max_value=2), norm=8)
    assert isinstance(multi, MultiSpike) and (multi.max_value, multi.norm) == (2, 8.0)
    with pytest.raises(ValueError, match='neuron type'):
        build_neuron(dict(type='IF'))
