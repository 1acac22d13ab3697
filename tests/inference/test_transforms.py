"""Inference-time model transforms: BatchNorms folded into their convs, weights stored
channels-last, a segmentor compiled (its training forward partitioned so that backward keeps
the 1-byte spike codes)."""
import pytest
import torch
from torch import nn

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.inference import transforms
from mmlrf.inference.transforms import (compile_segmentor, count_batchnorms, fold_batchnorms,
                                        recompute_for_backward, to_channels_last)
from mmlrf.models.layers import ConvBN, RoutedConv2d
from mmlrf.models.neurons import MultiSpike

from batchnorm_stats import randomise_batchnorms


def _conv_bn_stack(norm_cfg=None):
    torch.manual_seed(0)
    model = nn.Sequential(ConvBN(3, 4, 3, bias=True, norm_cfg=norm_cfg),
                          ConvBN(4, 4, 1, norm_cfg=norm_cfg))
    return randomise_batchnorms(model).eval()


@pytest.mark.parametrize('norm_cfg', [None, dict(type='SyncBN')])
def test_fold_batchnorms_keeps_the_function(norm_cfg):
    model = _conv_bn_stack(norm_cfg)
    x = torch.randn(1, 2, 3, 7, 7)
    with torch.no_grad():
        expected = model(x)
    assert count_batchnorms(model) == 2  # SyncBN counts too
    assert fold_batchnorms(model) == 2 and count_batchnorms(model) == 0
    assert all(isinstance(block[1], nn.Identity) for block in model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_a_bn_after_a_transposed_conv_is_left():
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 2, stride=2), nn.BatchNorm2d(2)).eval()
    assert fold_batchnorms(model) == 0 and count_batchnorms(model) == 1


def test_to_channels_last_converts_every_4d_weight():
    model = _conv_bn_stack()
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        expected = model[1][1](model[1][0](model[0][1](model[0][0](x))))
    assert to_channels_last(model) == 2
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        got = model[1][1](model[1][0](model[0][1](model[0][0](x))))
    assert got.is_contiguous(memory_format=torch.channels_last)  # the activations follow
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_compile_segmentor_needs_a_segmentor(eager_compile):
    with pytest.raises(TypeError, match='encode_decode'):
        compile_segmentor(torch.nn.Linear(2, 2))
    inference_only = torch.nn.Linear(2, 2)
    inference_only.encode_decode = inference_only.forward
    with pytest.raises(TypeError, match='no loss method'):
        compile_segmentor(inference_only, train=True)
    assert eager_compile == []
    assert compile_segmentor(inference_only) is inference_only
    assert len(eager_compile) == 1  # encode_decode only, replaced on the instance
    assert vars(inference_only)['encode_decode'] is not inference_only.forward


def test_recompute_for_backward_saves_spike_codes_not_floats(monkeypatch):
    """Compiled (AOTAutograd's partitioner), the neuron → conv pair saves its float32 spikes for
    the conv's backward; partitioned in :func:`recompute_for_backward` it saves the 1-byte codes
    instead, with the same output and gradients; ``compile_segmentor`` uses it for the CPU
    training forward."""
    import torch._dynamo
    torch.manual_seed(0)
    conv, neuron = RoutedConv2d(6, 6, 3, padding=1), MultiSpike()
    x = torch.randn(2, 6, 9, 9) * 3

    def run(fn):
        saved = []

        def pack(t):
            saved.append(t.dtype if t.shape == x.shape else None)
            return t
        xg = x.clone().requires_grad_()
        conv.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn(xg)
        y.backward(torch.ones_like(y))
        return saved, [y.detach(), xg.grad, conv.weight.grad]

    def compiled():
        torch._dynamo.reset()
        return torch.compile(lambda t: conv(neuron(t)), backend='aot_eager', fullgraph=True)
    saved_default, default = run(compiled())
    saved, got = run(recompute_for_backward(compiled()))
    assert torch.float32 in saved_default and torch.uint8 not in saved_default, saved_default
    assert torch.uint8 in saved and torch.float32 not in saved, saved
    for a, b in zip(got, default):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.delattr(torch._functorch.config, 'ban_recompute_materialized_backward')
    assert recompute_for_backward(len) is len  # a torch without the setting

    class Segmentor(nn.Linear):
        def encode_decode(self, x):
            return self(x)

        def loss(self, x):
            return self(x).sum()
    wrapped = []
    monkeypatch.setattr(transforms, 'recompute_for_backward',
                        lambda fn: wrapped.append(fn) or fn)
    model = compile_segmentor(Segmentor(2, 2), train=True)
    assert wrapped == [model.loss]  # the training forward only
    compile_segmentor(Segmentor(2, 2).to('meta'), train=True)
    assert len(wrapped) == 1  # on the CPU only
