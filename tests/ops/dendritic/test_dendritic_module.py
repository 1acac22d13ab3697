"""The dendritic operator as a module: causality, stability, the impulse response, gradients,
streaming, caching, the two parameterisations and their checkpoints, arguments."""
import math

import pytest
import torch
import torch.nn.functional as F

import mmlrf  # noqa: F401  (before mmseg.models)
from mmlrf.ops.dendritic import LEAK_MIN, PARAMETERIZATIONS, DendriticDynamics
from mmseg.registry import MODELS

from dense_reference import dense_system, naive_forward, randomise, rel_err, token_order

ORDERS = ('raster', 'snake', 'column')


@pytest.mark.parametrize('mode', ['fft', 'recurrent', 'scan', 'stream'])
@pytest.mark.parametrize('order', ORDERS)
def test_causality(order, mode):
    torch.manual_seed(2)
    height, width = 4, 6
    seq = token_order(height, width, order)
    causal = randomise(DendriticDynamics(3, 4, mode=mode, order=order)).double()
    both = randomise(DendriticDynamics(3, 4, mode=mode, order=order, bidirectional=True)).double()
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    cut = 10
    x2 = x.flatten(2).clone()
    x2[..., seq[cut + 1:]] += torch.randn(2, 3, len(seq) - cut - 1, dtype=torch.float64)
    x2 = x2.reshape(x.shape)
    for module, should_change in ((causal, False), (both, True)):
        past = lambda y: y.flatten(2)[..., seq[:cut + 1]]  # noqa: E731
        diff = (past(module(x)) - past(module(x2))).abs().max().item()
        assert (diff > 1e-6) == should_change, (module.bidirectional, diff)


def wide(shape, gen):
    """Random signs times magnitudes spread over 10^-3 .. 10^6."""
    mag = 10 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * 9 - 3)
    return torch.sign(torch.randn(shape, generator=gen, dtype=torch.float64)) * mag


#: Raw parameters of each parameterisation and the spread of their random draws: log-space
#: parameters within ±100 (exp of them stays finite in float64), the others within ±1e6.
RAW_SPREAD = {'leak_raw': 6, 'coupling': 6, 'dt_raw': 6, 'b': 6, 'c': 6, 'log_a_real': 2,
              'a_imag': 6, 'log_dt': 2}


def wide(shape, gen, decades):
    """Random signs times magnitudes spread over 10^-3 .. 10^decades."""
    mag = 10 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * (decades + 3) - 3)
    return torch.sign(torch.randn(shape, generator=gen, dtype=torch.float64)) * mag


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
def test_stability_1000_random_draws(parameterization):
    """Every eigenvalue of every Ā has modulus below one (at most one where the decay
    underflows in float64), for raw parameters drawn over many decades, and the output is
    finite. The real forms are checked on the dense M built from the raw parameters too; for
    'pmsn' ``|ā| = exp(−exp(log_a_real)·exp(log_dt))`` by construction, and matrix_exp of a
    phase of 1e40 radians is not a reference."""
    gen = torch.Generator().manual_seed(3)
    module = DendriticDynamics(1000, 8, bidirectional=True,
                               parameterization=parameterization).double()
    with torch.no_grad():
        for name in RAW_SPREAD:
            if hasattr(module, name):
                p = getattr(module, name)
                p.copy_(wide(p.shape, gen, RAW_SPREAD[name]))
    if parameterization != 'pmsn':
        worst = 0.0
        for channel in range(1000):
            a_bar = dense_system(module, channel % 2, channel)[0]
            worst = max(worst, torch.linalg.eigvals(a_bar).abs().max().item())
        assert worst <= 1
    for direction in (0, 1):
        modulus = torch.linalg.eigvals(module.discrete_state_matrix(direction)).abs()
        assert modulus.max().item() <= 1
    module.mode = 'fft'
    assert torch.isfinite(module(torch.randn(1, 1000, 4, 4, dtype=torch.float64))).all()


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
def test_discrete_matrix_and_impulse_response_match_dense(parameterization):
    module = randomise(DendriticDynamics(2, 5, parameterization=parameterization),
                       seed=4).double()
    resp = module.impulse_response(6)
    ada = module.discrete_state_matrix()
    for c in range(2):
        a_bar, b_bar, c_vec = dense_system(module, 0, c)
        torch.testing.assert_close(ada[c], a_bar)
        # K[m] = Re(C Ā^m B̄) from the explicit (complex for 'pmsn') matrices
        expect = torch.stack([(c_vec @ torch.linalg.matrix_power(a_bar, m) @ b_bar).real
                              for m in range(6)])
        torch.testing.assert_close(resp[c], expect)


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('mode', ['fft', 'recurrent', 'scan', 'stream'])
def test_gradients_reach_every_parameter(mode, bidirectional, parameterization):
    torch.manual_seed(5)
    module = DendriticDynamics(3, 4, mode=mode, bidirectional=bidirectional, order='snake',
                               parameterization=parameterization)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    (module(x) * torch.randn(2, 3, 4, 5)).sum().backward()
    for name, p in list(module.named_parameters()) + [('x', x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
def test_fft_and_recurrent_gradients_agree(parameterization):
    torch.manual_seed(6)
    module = randomise(DendriticDynamics(3, 4, bidirectional=True, order='column',
                                         parameterization=parameterization)).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    weight = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    grads = {}
    for mode in ('fft', 'recurrent'):
        module.mode = mode
        module.zero_grad()
        (module(x) * weight).sum().backward()
        grads[mode] = [p.grad.clone() for p in module.parameters()]
    for g_fft, g_rec in zip(grads['fft'], grads['recurrent']):
        torch.testing.assert_close(g_fft, g_rec, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize('order', ORDERS)
def test_streaming_step_equals_forward(order):
    torch.manual_seed(7)
    module = randomise(DendriticDynamics(3, 4, order=order), seed=8).double()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    expect = module(x).flatten(2)
    state = module.init_state(2)
    assert state.shape == (2, 3, 4)
    with torch.no_grad():
        for pos in token_order(3, 4, order):
            y_n, state = module.step(x.flatten(2)[..., pos], state)
            torch.testing.assert_close(y_n, expect[..., pos])
    with pytest.raises(RuntimeError, match='bidirectional'):
        DendriticDynamics(3, bidirectional=True).step(torch.zeros(1, 3), state)


def test_build_from_registry():
    module = MODELS.build(dict(type='DendriticDynamics', channels=4, num_dendrites=3,
                               mode='recurrent', order='snake'))
    assert isinstance(module, DendriticDynamics)
    assert module(torch.randn(1, 4, 2, 3)).shape == (1, 4, 2, 3)


@pytest.mark.parametrize('kwargs,name', [
    (dict(channels=0), 'channels'),
    (dict(channels=4, num_dendrites=0), 'num_dendrites'),
    (dict(channels=4, mode='conv'), 'mode'),
    (dict(channels=4, order='diagonal'), 'order'),
    (dict(channels=4, parameterization='dense'), 'parameterization'),
    (dict(channels=4, dt_min=0.0), 'dt_min'),
    (dict(channels=4, dt_min=0.2, dt_max=0.1), 'dt_min'),
    (dict(channels=4, chunk_size=0), 'chunk_size'),
])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DendriticDynamics(**kwargs)


def test_mode_setter_validates():
    module = DendriticDynamics(2)
    module.mode = 'scan'
    with pytest.raises(ValueError, match="mode must be one of .*'fft'"):
        module.mode = 'naive'


@pytest.mark.parametrize('parameterization', ['modal', 'tridiagonal'])
def test_softplus_floor_keeps_leak_positive(parameterization):
    """The leak floor is what keeps |ā| < 1 when leak_raw → −∞ and couplings vanish."""
    module = DendriticDynamics(1, 2, parameterization=parameterization).double()
    with torch.no_grad():
        module.leak_raw.fill_(-1e4)
        if parameterization == 'tridiagonal':
            module.coupling.zero_()
        module.dt_raw.fill_(-1e4)
    lam = torch.linalg.eigvalsh(module.state_matrix())
    torch.testing.assert_close(lam, torch.full_like(lam, -LEAK_MIN))
    a_bar = module.discrete_state_matrix()
    expect = math.exp(-LEAK_MIN * module.dt_min)
    torch.testing.assert_close(torch.linalg.eigvalsh(a_bar), torch.full((1, 2), expect,
                                                                         dtype=torch.float64))
    assert expect < 1 and F.softplus(torch.tensor(-1e4)).item() == 0


def test_modes_cached_only_without_grad_and_invalidated_by_updates():
    module = DendriticDynamics(3, 4)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        first = module.discrete_modes()
        assert module.discrete_modes() is first
        y_before = module(x)
        module.log_dt.add_(1.0)
        assert module.discrete_modes() is not first
        y_after = module(x)
    assert (y_after - y_before).abs().max() > 1e-4
    fresh = DendriticDynamics(3, 4)
    fresh.load_state_dict(module.state_dict())
    torch.testing.assert_close(fresh(x), y_after)
    assert module.discrete_modes()[0].log_a.requires_grad
    module.double()
    with torch.no_grad():
        assert module(x.double()).dtype == torch.float64


@pytest.mark.parametrize('mode', ['fft', 'scan'])
def test_training_call_discretises_once_for_both_directions(monkeypatch, mode):
    """A bidirectional training call builds the parameters of both directions in one pass (with
    autograd on nothing is cached, so a pass per direction would double the host work)."""
    module = DendriticDynamics(3, 4, mode=mode, bidirectional=True)
    calls = []
    real = module._discretise
    monkeypatch.setattr(module, '_discretise', lambda: calls.append(1) or real())
    module(torch.randn(1, 3, 4, 4)).sum().backward()
    assert len(calls) == 1 and module.log_a_real.grad[1].abs().sum() > 0


@pytest.mark.parametrize('bidirectional', [False, True])
def test_modal_starts_as_the_tridiagonal_operator(bidirectional):
    """Same seed: the modal module's output equals the dense loop over the tridiagonal module's
    raw parameters (M with couplings, matrix_exp), so the one-off diagonalisation is right."""
    kwargs = dict(channels=3, num_dendrites=5, bidirectional=bidirectional, order='snake')
    torch.manual_seed(9)
    tridiagonal = DendriticDynamics(parameterization='tridiagonal', **kwargs).double()
    torch.manual_seed(9)
    modal = DendriticDynamics(mode='scan', parameterization='modal', **kwargs).double()
    assert not hasattr(modal, 'coupling')
    assert tridiagonal.coupling.abs().min() > 0
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    assert rel_err(modal(x), naive_forward(tridiagonal, x)) < 1e-6  # float32 parameters


def test_modes_are_never_diagonalised_after_init(monkeypatch):
    """Training and inference of a 'pmsn' or 'modal' module run no eigen-decomposition; a
    tridiagonal one runs one per training call."""
    modules = [DendriticDynamics(4, mode='scan', parameterization=p) for p in ('pmsn', 'modal')]
    tridiagonal = DendriticDynamics(4, mode='scan', parameterization='tridiagonal')
    calls = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, 'eigh', lambda m: calls.append(m.shape) or real_eigh(m))
    x = torch.randn(2, 4, 3, 3)
    for module in modules:
        module(x).sum().backward()
        with torch.no_grad():
            module(x)
    assert calls == []
    tridiagonal(x).sum().backward()
    assert calls == [(1, 4, 8, 8)]


@pytest.mark.parametrize('bidirectional', [False, True])
def test_tridiagonal_checkpoint_loads_into_modal_module(bidirectional):
    """A checkpoint of the learnable-tridiagonal form loads (strictly, through torch and through
    mmengine) into a modal module as the same operator: M is diagonalised on load."""
    from mmengine.runner.checkpoint import load_state_dict
    kwargs = dict(channels=3, num_dendrites=4, bidirectional=bidirectional, order='column')
    tridiagonal = randomise(DendriticDynamics(parameterization='tridiagonal', **kwargs), seed=10)
    x = torch.randn(2, 3, 3, 4)
    expect = naive_forward(tridiagonal.double(), x.double())
    state = tridiagonal.float().state_dict()
    for load in (lambda m, s: m.load_state_dict(s), lambda m, s: load_state_dict(m, s, True)):
        modal = DendriticDynamics(mode='scan', parameterization='modal', **kwargs)
        load(modal, dict(state))
        assert 'coupling' not in modal.state_dict()
        assert rel_err(modal.double()(x.double()), expect) < 1e-6  # float32 checkpoint


def test_modal_checkpoint_loads_into_tridiagonal_module():
    """The reverse: a modal checkpoint is the tridiagonal system with zero couplings."""
    modal = randomise(DendriticDynamics(3, 4, order='snake', parameterization='modal'), seed=11)
    tridiagonal = DendriticDynamics(3, 4, order='snake', parameterization='tridiagonal')
    tridiagonal.load_state_dict(modal.state_dict())
    assert (tridiagonal.coupling == 0).all()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    assert rel_err(tridiagonal.double()(x), naive_forward(modal.double(), x)) < 1e-10


@pytest.mark.parametrize('parameterization', PARAMETERIZATIONS)
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('mode', ['fft', 'recurrent'])
def test_reference_paths_equal_the_dense_loops(mode, bidirectional, parameterization):
    """Both reference paths equal the dense loops over the raw parameters (float64)."""
    torch.manual_seed(0)
    module = randomise(DendriticDynamics(3, 4, mode=mode, bidirectional=bidirectional,
                                         order='snake',
                                         parameterization=parameterization)).double()
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    assert rel_err(module(x), naive_forward(module, x)) < 1e-10


@pytest.mark.parametrize('order', ORDERS)
@pytest.mark.parametrize('bidirectional', [False, True])
def test_fft_equals_recurrent_n4096(order, bidirectional):
    """N = 64·64 = 4096 tokens in float32: the parallel and the sequential reference agree."""
    torch.manual_seed(1)
    module = DendriticDynamics(2, 8, bidirectional=bidirectional, order=order,
                               dt_min=1e-4, dt_max=1e-2)
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        module.mode = 'recurrent'
        rec = module(x)
        module.mode = 'fft'
        fft = module(x)
    assert fft.dtype == torch.float32
    assert rel_err(fft, rec) <= 1e-4


def test_auto_uses_scan_on_cpu_and_mode_is_switchable():
    module = randomise(DendriticDynamics(3, 4, mode='auto'))
    x = torch.randn(1, 3, 5, 6)
    assert module.resolved_mode(x) == 'scan'
    y_auto = module(x)
    module.mode = 'fft'
    assert rel_err(y_auto, module(x)) < 1e-5


def test_torch_compile_traces_the_module_whole():
    """Inference under ``torch.compile``: one graph (the parameter cache and the Triton probe do
    not break it) and the eager output, bidirectional, in snake order."""
    import torch._dynamo
    from mmlrf.ops.dendritic.triton_ops import triton_available
    torch._dynamo.reset()
    module = randomise(DendriticDynamics(3, 4, mode='scan', bidirectional=True, order='snake',
                                         chunk_size=8)).eval()
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        y_ref = module(x)
        explained = torch._dynamo.explain(module)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        y = torch.compile(module, backend='aot_eager')(x)
    assert rel_err(y, y_ref) < 1e-6
    # resolving 'auto' asks triton_available(): a constant for the compiler, not a break
    probe = torch.compile(lambda t: t + 1 if triton_available() else t - 1, fullgraph=True,
                          backend='eager')
    assert torch.equal(probe(x), x + 1 if triton_available() else x - 1)


def test_pmsn_learns_what_pmsn_learns():
    """The 'pmsn' parameters: log of the negative real part and the imaginary part of each mode,
    the complex input and readout, the log step (log-uniform in [dt_min, dt_max] at
    initialisation, free after) and the skip."""
    torch.manual_seed(0)
    module = DendriticDynamics(5, 8, bidirectional=True, dt_min=1e-3, dt_max=1e-1)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == {'log_a_real': (2, 5, 8), 'a_imag': (2, 5, 8), 'b': (2, 5, 8, 2),
                      'c': (2, 5, 8, 2), 'log_dt': (2, 5), 'd': (5,)}
    assert module.parameterization == 'pmsn'
    assert torch.allclose(module.log_a_real, torch.full_like(module.log_a_real, math.log(0.5)))
    step = module.step_size()
    assert (step >= 1e-3).all() and (step <= 1e-1).all()
    with torch.no_grad():
        module.log_dt.fill_(3.0)  # Δ is not bounded after initialisation
    torch.testing.assert_close(module.step_size(), torch.full_like(step, math.exp(3.0)))


def test_pmsn_starts_as_pmsn_coupling_matrix():
    """At initialisation each channel's kernel is that of PMSN's k-compartment neuron in its
    original basis: ``S`` with diagonal −0.5 and neighbour couplings +5(i+1) above, −5(i+1)
    below the diagonal, unit input, readout from the last compartment (explicit matrices,
    matrix_exp and solve)."""
    torch.manual_seed(1)
    k = 6
    module = DendriticDynamics(2, k).double()
    s_matrix = torch.diag_embed(torch.full((k,), -0.5, dtype=torch.float64))
    for i in range(k - 1):
        s_matrix[i, i + 1], s_matrix[i + 1, i] = 5.0 * (i + 1), -5.0 * (i + 1)
    s_matrix = s_matrix.to(torch.complex128)
    readout = torch.zeros(k, dtype=torch.complex128)
    readout[-1] = 1
    response = module.impulse_response(20)
    for channel in range(2):
        dt = math.exp(float(module.log_dt[0, channel].detach()))
        a_bar = torch.linalg.matrix_exp(s_matrix * dt)
        b_bar = torch.linalg.solve(s_matrix, (a_bar - torch.eye(k)) @ torch.ones(
            k, dtype=torch.complex128))
        expect = torch.stack([(readout @ torch.linalg.matrix_power(a_bar, m) @ b_bar).real
                              for m in range(20)])
        torch.testing.assert_close(response[channel], expect)


def test_pmsn_modes_are_complex_and_kernels_oscillate():
    """PMSN's antisymmetric coupling gives complex modes; its kernel changes sign, which no
    'modal' or 'tridiagonal' kernel of the same initial step can."""
    torch.manual_seed(2)
    kernels = {}
    for parameterization in PARAMETERIZATIONS:
        module = DendriticDynamics(1, 8, parameterization=parameterization, dt_min=0.05,
                                   dt_max=0.05)
        kernels[parameterization] = module.impulse_response(200)[0]
    assert DendriticDynamics(1, 8).discrete_modes()[0].log_a.imag.abs().min() > 0
    changes = {p: int((torch.sign(k[1:]) != torch.sign(k[:-1])).sum()) for p, k in
               kernels.items()}
    assert changes['pmsn'] >= 4, changes
    assert changes['modal'] <= 1 and changes['tridiagonal'] <= 1, changes
