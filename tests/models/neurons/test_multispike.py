"""SDT-V3's integer multi-spike neuron: values and straight-through gradient against the
original neuron, its 1-byte code saved for backward, in-place spikes at inference, the code
shared with convs (or not), and the neuron under ``torch.compile``."""
import pytest
import torch

import mmlrf  # noqa: F401  (registers the neurons)
from mmlrf.models.neurons import MultiSpike
from mmlrf.models.neurons.multispike import INSIDE_BIT, decode_spikes, spikes_and_code

from saved_bytes import SavedBytes


class _ReferenceSTE(torch.autograd.Function):
    """The original neuron: saves the float input, gradient ``grad * [0 <= x <= D]``."""

    @staticmethod
    def forward(ctx, x, d):
        ctx.save_for_backward(x)
        ctx.d = d
        return torch.round(torch.clamp(x, 0, d))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= ctx.d)).to(grad.dtype), None


def reference_spikes(x, d=4, norm=4.0):
    return _ReferenceSTE.apply(x, float(d)) / norm


def test_multispike_rounding_clamp_norm():
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -1.0, 4.4, 7.0, 2.49, 0.51])
    ints = [0, 2, 2, 4, 0, 4, 4, 2, 1]
    assert (MultiSpike()(x) * 4).tolist() == ints  # default norm = max_value = 4
    assert MultiSpike(norm=1)(x).tolist() == ints
    assert MultiSpike(max_value=2, norm=2)(x).tolist() == [v / 2 for v in
                                                          [0, 2, 2, 2, 0, 2, 2, 2, 1]]


def test_multispike_ste_gradient():
    x = torch.tensor([-0.5, 0.0, 1.3, 4.0, 4.2, 9.0], requires_grad=True)
    MultiSpike(max_value=4, norm=8)(x).sum().backward()
    assert x.grad.tolist() == [0, 1 / 8, 1 / 8, 1 / 8, 0, 0]


@pytest.mark.parametrize('d, norm', [(4, 4.0), (4, 1.0), (2, 3.0)])
def test_multispike_equals_reference_and_saves_one_byte(d, norm):
    x = (torch.randn(1, 2, 3, 5, 7) * 3).requires_grad_()
    x.data[0, 0, 0, 0, :4] = torch.tensor([0.5, 2.5, -0.0, float(d)])  # ties, edges
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn_like(x)
    with SavedBytes() as saved:
        y = MultiSpike(d, norm)(x)
    y_ref = reference_spikes(x_ref, d, norm)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    assert saved.bytes == x.numel() and set(saved.by_dtype) == {torch.uint8}


def test_max_value_beyond_the_code_saves_the_float_input():
    """A ``max_value`` whose levels do not fit the code's 7 bits: the same values and gradient,
    the float input saved instead."""
    x = (torch.randn(2, 3, 4) * 100).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with SavedBytes() as saved:
        y = MultiSpike(200, 4.0)(x)
    y_ref = reference_spikes(x_ref, 200, 4.0)
    y.backward(torch.ones_like(y))
    y_ref.backward(torch.ones_like(y))
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    assert saved.bytes == 4 * x.numel() and set(saved.by_dtype) == {torch.float32}


def test_spikes_and_code_edges():
    """Level in bits 0-6 and the STE bit exactly where 0 <= x <= D, at ties, bounds, signed
    zeros, infinities and NaN (never inside; its spike stays NaN); the code decodes to the
    spikes bit for bit."""
    x = torch.tensor([-1.0, -0.0, 0.0, 0.5, 1.5, 2.5, 3.0, 3.5, 4.0, 4.0001, 7.0,
                      float('inf'), float('-inf'), float('nan')])
    spikes, code = spikes_and_code(x, 3, 2.0)
    finite = ~torch.isnan(x)
    level = torch.round(torch.clamp(x[finite], 0, 3))
    assert torch.equal(spikes[finite], level / 2.0) and torch.isnan(spikes[-1])
    assert torch.equal((code[finite] & (INSIDE_BIT - 1)).float(), level)
    inside = (x >= 0) & (x <= 3)
    assert torch.equal(code >= INSIDE_BIT, inside) and inside.tolist()[1:4] == [True] * 3
    assert code.dtype == torch.uint8 and spikes.dtype == x.dtype
    assert torch.equal(decode_spikes(code, 2.0, x.dtype)[finite], spikes[finite])


def test_multispike_inplace_only_without_autograd():
    x = torch.randn(1, 2, 3, 4, 4) * 3
    ref = torch.round(torch.clamp(x, 0, 4)) / 4
    y = x.clone()
    with torch.no_grad():
        out = MultiSpike()(y, inplace=True)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, ref)
    with torch.no_grad():  # not asked: the input is kept
        kept = x.clone()
        out = MultiSpike()(kept)
    assert out.data_ptr() != kept.data_ptr() and torch.equal(kept, x) and torch.equal(out, ref)
    z = x.clone().requires_grad_()
    out = MultiSpike()(z, inplace=True)  # recorded by autograd: the input is kept
    assert out.data_ptr() != z.data_ptr() and torch.equal(z, x)
    with torch.inference_mode():
        frozen = x.clone()
    with torch.no_grad():  # an inference tensor outside inference mode cannot be changed
        out = MultiSpike()(frozen, inplace=True)
    assert out.data_ptr() != frozen.data_ptr() and torch.equal(out, ref)
    assert torch.equal(frozen, x)


def test_share_code_false_keeps_the_code_from_the_convs():
    """The neuron's autograd node offers its code to the convs that read the output (found with
    ``spike_code_of``) unless built with ``share_code=False``; either way it saves the code
    for its own backward and the values are the same."""
    from mmlrf.models.neurons.multispike import spike_code_of
    x = torch.randn(1, 1, 2, 3, 3, requires_grad=True) * 3
    shared, private = MultiSpike()(x), MultiSpike(share_code=False)(x)
    assert MultiSpike().share_code and not MultiSpike(share_code=False).share_code
    assert shared.grad_fn.code is not None and private.grad_fn.code is None
    found = spike_code_of(shared.flatten(0, 1))  # through an order-preserving view
    assert found is not None and found[1] == 4.0
    assert torch.equal(decode_spikes(found[0], 4.0, shared.dtype).view(shared.shape), shared)
    assert spike_code_of(private) is None and spike_code_of(shared * 2) is None
    assert torch.equal(shared, private)


def test_multispike_under_torch_compile_decodes_its_code():
    """Under ``torch.compile`` the neuron's spikes are decoded from its code: the eager values
    (halves round to even, clamping) and gradients; a NaN input gives 0 there (documented)."""
    import torch._dynamo
    torch._dynamo.reset()
    neuron = MultiSpike(max_value=4, norm=3)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.5, 2.5, 3.49, 4.0, 4.5, 9.0, 0.3])

    def run(fn, t):
        t = t.clone().requires_grad_()
        y = fn(t)
        y.backward(torch.arange(1.0, 1.0 + len(t)))
        return y.detach(), t.grad
    compiled = torch.compile(neuron, backend='aot_eager', fullgraph=True)
    for got, expect in zip(run(compiled, x), run(neuron, x)):
        assert torch.equal(got, expect)
    nan = torch.tensor([float('nan'), 2.0])
    assert torch.isnan(neuron(nan.clone().requires_grad_())[0])
    assert torch.equal(compiled(nan.clone().requires_grad_()), torch.tensor([0.0, 2.0]) / 3)


def test_multispike_is_stateless():
    neuron = MultiSpike()
    x = torch.randn(1, 2, 3, 4, 4) * 3
    first = neuron(x)
    neuron.reset()
    assert torch.equal(neuron(x), first)


@pytest.mark.parametrize('kwargs, name', [
    (dict(max_value=0), 'max_value'),
    (dict(max_value=2.5), 'max_value'),
    (dict(norm=0), 'norm'),
])
def test_invalid_multispike_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiSpike(**kwargs)
