"""Spiking FPN decode head: the computation written out (stages of spike → conv → BN with
mmseg's ×2 upsample, the bilinear sum, spikes, classifier) in values and gradients, its stages
per level, layer configs through mmseg's decode head, option validation."""
import copy

import pytest
import torch
from mmseg.models.utils import Upsample
from torch import nn

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.inference import set_lean_inference
from mmlrf.models.decode_heads import SpikingFPNHead
from mmlrf.models.decode_heads.spiking_fpn_head import SpikeConvBN
from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.neurons import MultiSpike

from fpn_reference import WIDTH, build, plain_head


def _levels(size, requires_grad=False):
    return [torch.randn(2, WIDTH, -(-size[0] // 2 ** i), -(-size[1] // 2 ** i),
                        requires_grad=requires_grad) for i in range(4)]


@pytest.mark.parametrize('size', [(32, 48), (25, 35)], ids=['multiple', 'odd'])
def test_head_has_the_written_out_values_and_gradients(size):
    """In training (the plain path), also at sides that are not multiples of the total stride
    (a genuine bilinear resize to level 0's size)."""
    _, head = build(lean=False)
    head.train()
    levels = _levels(size, requires_grad=True)
    ref_levels = [t.detach().clone().requires_grad_() for t in levels]
    ref_head = copy.deepcopy(head)
    y, y_ref = head(levels), plain_head(ref_head, ref_levels)
    assert y.shape == (2, 3, *size)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for a, b in zip(levels, ref_levels):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(head.named_parameters(), ref_head.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_stages_per_level_and_mmsegs_upsample():
    """Level i runs ``max(1, log2(s_i / s_0))`` stages; each stage of a deeper level is followed
    by mmseg's bilinear ×2 ``Upsample``."""
    head = SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 2, 3],
                          feature_strides=(4, 8, 16, 32))
    kinds = [[type(m).__name__ for m in stages] for stages in head.scale_heads]
    assert kinds == [['SpikeConvBN'], ['SpikeConvBN', 'Upsample'],
                     ['SpikeConvBN', 'Upsample'] * 2, ['SpikeConvBN', 'Upsample'] * 3]
    ups = [m for m in head.modules() if isinstance(m, Upsample)]
    assert all(u.scale_factor == 2 and u.mode == 'bilinear' for u in ups)


def test_spike_conv_bn_is_spike_then_conv_then_norm():
    torch.manual_seed(0)
    stage = SpikeConvBN(4, dict(type='MultiSpike')).eval()
    stage[2].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 4, 5, 6) * 3
    with torch.no_grad():
        expected = stage[2](stage[1](MultiSpike()(x)))
        assert torch.equal(stage(x), expected)
    assert stage[1].bias is None and stage[1].padding == (1, 1)


def test_layers_follow_conv_cfg_and_norm_cfg():
    """``conv_cfg`` / ``norm_cfg`` of mmseg's decode head reach every conv (the classifier
    too) and norm."""
    head = SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 2, 3],
                          conv_cfg=dict(type='RoutedConv2d'),
                          norm_cfg=dict(type='SyncBN', requires_grad=True))
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 1 + 1 + 2 + 3 and all(type(m) is RoutedConv2d for m in convs)
    assert type(head.conv_seg) is RoutedConv2d and head.conv_seg.out_channels == 3
    assert all(isinstance(m, nn.SyncBatchNorm) for m in head.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    plain = SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 2, 3])
    assert all(type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert all(type(m) is nn.BatchNorm2d for m in plain.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert list(head.state_dict()) == list(plain.state_dict())


def test_lean_inference_needs_distinct_levels():
    """A level read twice cannot be emptied after its first read: refused at build and when
    switched on later; off (the default) such a head builds."""
    with pytest.raises(ValueError, match='distinct in_index'):
        SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 1, 2],
                       feature_strides=(2, 4, 4, 8), lean_inference=True)
    head = SpikingFPNHead(in_channels=[8] * 4, channels=8, num_classes=3, in_index=[0, 1, 1, 2],
                          feature_strides=(2, 4, 4, 8))
    assert not head.lean_inference
    with pytest.raises(ValueError, match='distinct in_index'):
        set_lean_inference(head, True)
    assert not head.lean_inference


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=[8] * 4, in_index=[0, 1, 2, 3], feature_strides=(2, 4, 12, 16)),
     'feature_strides'),
    (dict(in_channels=[8] * 4, in_index=[0, 1, 2, 3], feature_strides=(2, 4, 8)),
     'feature_strides'),
    (dict(in_channels=[8, 8, 8, 16], in_index=[0, 1, 2, 3]), 'in_channels'),
    (dict(in_channels=[8] * 4, in_index=[0, 1, 2, 3], input_transform='resize_concat'),
     'input_transform'),
])
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpikingFPNHead(channels=8, num_classes=3, **kwargs)
