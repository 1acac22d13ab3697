"""The spiking attention block every backbone shares: gradients reach every parameter with every
token mixer and neuron, only the projections a mixer needs are built, config building."""
import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)
from mmlrf.models.backbones import SpikingAttention
from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.mixers import LRFSSA

C, HEADS = 8, 2

# Scales are large because the test blocks are tiny (d = 4, N = 20): the attention neuron must
# fire for gradients to reach the output projection.
MIXERS = [
    dict(type='SSA', order='kv', scale=4),
    dict(type='SSA', order='qk', scale=4),
    dict(type='CausalSSA', accumulation='plain', scale=4, chunk_size=5),
    dict(type='CausalSSA', accumulation='normalised', scale=16, chunk_size=5),
    dict(type='CausalSSA', accumulation='decayed', learn_decay=True, decay=0.9, scale=4),
    dict(type='QKTokenAttention'),
    dict(type='LRFSSA', scale=4),
    dict(type='LRFSSA', order='qk', scale=4, local_inside_scale=True, bn=False),
    dict(type='LRFDyn', num_dendrites=4),
    dict(type='LRFDyn', token='k*v', query_gate=True, num_dendrites=2, mode='scan'),
    dict(type='LRFDyn', token='x', bidirectional=True, order='column', num_dendrites=2),
]
NEURONS = {  # block neuron, attention neuron, T, QKTokenAttention's mask neuron
    'lif': (dict(type='MultiStepLIF', v_threshold=0.5),
            dict(type='MultiStepLIF', v_threshold=0.25), 2,
            dict(type='MultiStepLIF', v_threshold=0.5)),
    'multispike': (dict(type='MultiSpike'), None, 1, dict(type='MultiSpike', max_value=1, norm=1)),
}


@pytest.mark.parametrize('neuron_name', list(NEURONS))
@pytest.mark.parametrize('mixer', MIXERS, ids=lambda m: '-'.join(map(str, m.values())))
def test_gradients_reach_every_parameter(mixer, neuron_name):
    neuron, attn_neuron, t, mask_neuron = NEURONS[neuron_name]
    if mixer['type'] == 'QKTokenAttention':
        mixer = dict(mixer, neuron=mask_neuron)
    torch.manual_seed(0)
    block = SpikingAttention(C, HEADS, mixer=mixer, neuron=neuron, attn_neuron=attn_neuron)
    block(torch.randn(t, 2, C, 5, 4)).square().sum().backward()
    missing = [name for name, p in block.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'no gradient reaches {missing}'


@pytest.mark.parametrize('mixer, projections', [
    (dict(type='SSA'), ['q', 'k', 'v']), (dict(type='QKTokenAttention'), ['q', 'k']),
    (dict(type='LRFDyn'), ['q', 'k', 'v']), (dict(type='LRFDyn', token='v', query_gate=False),
                                             ['v']),
    (dict(type='LRFDyn', token='x', query_gate=True), ['q'])])
def test_only_the_projections_the_mixer_needs(mixer, projections):
    block = SpikingAttention(C, HEADS, mixer=mixer)
    assert [p for p in 'qkv' if hasattr(block, f'{p}_conv')] == projections


def test_build_from_config_with_layers_and_v_ratio():
    block = MODELS.build(dict(type='SpikingAttention', embed_dims=C, num_heads=HEADS,
                              mixer=dict(type='LRFSSA'), v_ratio=2,
                              conv_cfg=dict(type='RoutedConv2d'),
                              norm_cfg=dict(type='SyncBN', requires_grad=True)))
    assert isinstance(block.mixer, LRFSSA) and block.mixer.v_channels == 2 * C
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is RoutedConv2d for m in convs)  # the mixer's too
    assert all(isinstance(m, nn.SyncBatchNorm) for m in block.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert block.eval()(torch.randn(1, 1, C, 4, 4)).shape == (1, 1, C, 4, 4)
    with pytest.raises(ValueError, match=f'\\[T, B, {C}, H, W\\]'):
        block(torch.randn(1, C, 4, 4))


@pytest.mark.parametrize('kwargs, name', [
    (dict(mixer='SSA'), 'mixer'), (dict(mixer=dict(order='kv')), 'mixer'),
    (dict(mixer=dict(type='SSA'), v_ratio=0), 'v_ratio')])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpikingAttention(C, HEADS, **kwargs)
