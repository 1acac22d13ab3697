"""Frame-wise conv + norm blocks on ``[T, B, C, H, W]``: the layers ``conv_cfg`` and
``norm_cfg`` select (mmcv's builders, official key names), default padding, ``seq_apply`` and
``conv_norm`` against per-frame calls; attention heads split and merged; stochastic depth."""
import pytest
import torch
from torch import nn

import mmlrf  # noqa: F401  (registers RoutedConv2d)
from mmlrf.models.layers import (ConvBN, RoutedConv2d, build_norm, conv_norm, drop_path,
                                 merge_heads, seq_apply, split_heads)


def test_default_layers_are_conv2d_and_batchnorm():
    block = ConvBN(8, 16, 3)
    assert type(block[0]) is nn.Conv2d and type(block[1]) is nn.BatchNorm2d
    assert block[0].padding == (1, 1) and block[0].bias is None  # 'same', bias-free
    assert type(build_norm(None, 4)) is nn.BatchNorm2d


@pytest.mark.parametrize('args, kwargs, padding', [
    ((8, 8, 7), dict(groups=8), (3, 3)), ((8, 8, 3), dict(stride=2, groups=8), (1, 1)),
    ((8, 16, 3), dict(dilation=2), (2, 2)), ((8, 16, 1), dict(bias=True), (0, 0)),
    ((8, 16, 3), dict(padding=0), (0, 0))])
def test_conv_cfg_selects_routed_conv2d_with_the_geometry(args, kwargs, padding):
    routed = ConvBN(*args, **kwargs, conv_cfg=dict(type='RoutedConv2d'))[0]
    plain = ConvBN(*args, **kwargs)[0]
    assert type(routed) is RoutedConv2d and type(plain) is nn.Conv2d
    for name in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
                 'groups'):
        assert getattr(routed, name) == getattr(plain, name), name
    assert routed.padding == padding and (routed.bias is None) == (not kwargs.get('bias'))


@pytest.mark.parametrize('norm_cfg, cls', [
    (dict(type='BN'), nn.BatchNorm2d),
    (dict(type='SyncBN', requires_grad=True), nn.SyncBatchNorm),
    (dict(type='BN', requires_grad=False), nn.BatchNorm2d)])
def test_norm_cfg_builds_under_the_official_key_names(norm_cfg, cls):
    """The conv is index 0 and the norm index 1, whatever the norm: ``<name>.0.weight``,
    ``<name>.1.running_mean``; ``requires_grad`` reaches the norm's parameters."""
    block = ConvBN(4, 6, 3, norm_cfg=norm_cfg)
    assert isinstance(block[1], cls) and block[1].num_features == 6
    assert list(block.state_dict()) == list(ConvBN(4, 6, 3).state_dict()) == [
        '0.weight', '1.weight', '1.bias', '1.running_mean', '1.running_var',
        '1.num_batches_tracked']
    assert block[1].weight.requires_grad == norm_cfg.get('requires_grad', True)


def test_conv_norm_and_seq_apply_fold_time_into_the_batch():
    torch.manual_seed(0)
    block = ConvBN(3, 5, 3, stride=2, bias=True).eval()
    block[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 4, 3, 9, 7)  # [T, B, C, H, W]
    out = block(x)
    assert out.shape == (2, 4, 5, 5, 4)
    with torch.no_grad():
        for t in range(2):
            torch.testing.assert_close(out[t], block[1](block[0](x[t])))
    torch.testing.assert_close(conv_norm(block[0], block[1], x), out)
    torch.testing.assert_close(seq_apply(lambda z: z.sum(1, keepdim=True), x), x.sum(2, True))


def test_split_and_merge_heads():
    """Heads are contiguous channel blocks, tokens in row-major (h, w) order; merge inverts."""
    x = torch.randn(2, 3, 8, 4, 5)
    heads = split_heads(x, 2)
    assert heads.shape == (2, 3, 2, 20, 4)
    assert torch.equal(heads[1, 2, 1, 5 * 2 + 3], x[1, 2, 4:8, 2, 3])
    assert torch.equal(merge_heads(heads, (4, 5)), x)
    with pytest.raises(ValueError, match='num_heads'):
        split_heads(x, 3)


def test_drop_path_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(1, 64, 3, 2, 2)
    y = drop_path(x, 0.5, training=True)
    per_sample = y.flatten(2).unique(dim=-1)
    assert set(per_sample.flatten().tolist()) <= {0.0, 2.0}
    assert 0 < (y[0, :, 0, 0, 0] == 0).sum() < 64
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    assert drop_path(x, 0.0, training=True) is x
    z = torch.ones(3, 64, 2, 2, 2)  # the same samples dropped at every time step
    y = drop_path(z, 0.5, training=True)
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
