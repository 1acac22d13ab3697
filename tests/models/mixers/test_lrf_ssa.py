"""The local receptive field branch (sum of dilated depth-wise convs) against hand-built shifted
sums, and LRF-SSA as global attention plus the local branch."""
import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn

import mmlrf  # noqa: F401  (registers everything; must precede mmseg.models)
from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.mixers import LRFBranch

from attention_reference import (CV, HEADS, build_mixer, check_builds_from_config,
                                 check_invalid, naive_attention, qkv)


def _shifted_dwconv(x, weight, r):
    """Depth-wise 3×3 conv with dilation r and zero padding r, as a sum of 9 shifted copies."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (r, r, r, r))
    out = torch.zeros_like(x)
    for a in range(3):
        for b in range(3):
            out += weight[:, 0, a, b].reshape(-1, 1, 1) * \
                xp[..., a * r:a * r + h, b * r:b * r + w]
    return out


@pytest.mark.parametrize('bn', [True, False])
def test_lrf_branch_equals_shifted_sum(bn):
    torch.manual_seed(0)
    lrf = LRFBranch(CV, dilations=(1, 3, 5), bn=bn).double()
    for branch in lrf.branches:
        if bn:
            branch[1].running_mean.uniform_(-1, 1)
            branch[1].running_var.uniform_(0.5, 2)
            branch[1].weight.data.uniform_(0.5, 2)
            branch[1].bias.data.uniform_(-1, 1)
    lrf.eval()
    x = torch.randn(2, 3, CV, 7, 6, dtype=torch.float64)
    ref = torch.zeros_like(x)
    for r, branch in zip((1, 3, 5), lrf.branches):
        y = _shifted_dwconv(x, branch[0].weight, r)
        if bn:
            norm = branch[1]
            shape = (-1, 1, 1)
            y = ((y - norm.running_mean.reshape(shape)) /
                 torch.sqrt(norm.running_var.reshape(shape) + norm.eps) *
                 norm.weight.reshape(shape) + norm.bias.reshape(shape))
        ref += y
    out = lrf(x)
    assert out.shape == x.shape  # 'same' padding keeps H, W even when the dilation exceeds them
    torch.testing.assert_close(out, ref)
    params = sum(p.numel() for p in lrf.parameters())
    assert params == 3 * CV * (9 + (2 if bn else 0))


def test_lrf_branch_sum_equals_separate_branches():
    """The branches are summed in place into the first one's output: the plain sum."""
    lrf = LRFBranch(4, (1, 2, 3)).eval()
    x = torch.randn(1, 2, 4, 6, 6)
    expected = sum(b(x.flatten(0, 1)) for b in lrf.branches).reshape(x.shape)
    with torch.no_grad():
        assert torch.allclose(lrf(x), expected, atol=1e-6)


def test_lrf_branch_layers_follow_conv_cfg_and_norm_cfg():
    lrf = LRFBranch(4, (1, 2), conv_cfg=dict(type='RoutedConv2d'),
                    norm_cfg=dict(type='SyncBN', requires_grad=True))
    assert [type(b[0]) for b in lrf.branches] == [RoutedConv2d] * 2
    assert all(isinstance(b[1], nn.SyncBatchNorm) for b in lrf.branches)
    assert [type(b[0]) for b in LRFBranch(4, (1, 2)).branches] == [nn.Conv2d] * 2
    mixer = build_mixer(dict(type='LRFSSA', conv_cfg=dict(type='RoutedConv2d')))
    assert all(type(b[0]) is RoutedConv2d for b in mixer.lrf.branches)
    with pytest.raises(ValueError, match='T, B, C, H, W'):
        lrf(torch.zeros(2, 4, 3, 3))


@pytest.mark.parametrize('inside', [False, True])
def test_lrf_ssa_is_global_plus_local(inside):
    q, k, v = qkv()
    mixer = build_mixer(dict(type='LRFSSA', order='qk', scale=0.25,
                             local_inside_scale=inside)).eval()
    local = mixer.lrf(v) * (0.25 if inside else 1.0)
    ref = naive_attention(q, k, v, HEADS, lambda h, n, j: 1.0) * 0.25 + local
    torch.testing.assert_close(mixer(q, k, v, None), ref)
    overhead = sum(p.numel() for p in mixer.parameters())
    assert overhead == 2 * CV * 11


def test_builds_from_config():
    check_builds_from_config(dict(type='LRFSSA', dilations=(1,)), CV)
    lrf = MODELS.build(dict(type='LRFBranch', channels=4, dilations=[2]))
    assert isinstance(lrf, LRFBranch) and lrf.dilations == (2,)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='LRFBranch', channels=4, dilations=(3, 0)), 'dilations'),
    (dict(type='LRFBranch', channels=4, dilations=()), 'dilations'),
    (dict(type='LRFBranch', channels=4, dilations=3), 'dilations'),
    (dict(type='LRFBranch', channels=4, dilations=(1.5,)), 'dilations'),
])
def test_invalid_branch_arguments(cfg, name):
    with pytest.raises(ValueError, match=name):
        MODELS.build(cfg)


@pytest.mark.parametrize('cfg, name', [
    (dict(type='LRFSSA', dilations=(-1,)), 'dilations'),
    (dict(type='LRFSSA', order='vk'), 'order'),
])
def test_invalid_arguments(cfg, name):
    check_invalid(cfg, name)
