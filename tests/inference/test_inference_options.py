"""The inference flags of ``tools/test.py`` and ``tools/demo.py``: one table, applied in its
order, each option's hook leaving the model its transform leaves."""
import argparse

import pytest
import torch
from mmseg.registry import HOOKS

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.inference.options import (INFERENCE_OPTIONS, add_inference_options,
                                     chosen_inference_options)

from tool_loading import load_tool


def test_flags_are_added_off_and_chosen_in_table_order():
    parser = argparse.ArgumentParser()
    add_inference_options(parser)
    flags = [option.flag for option in INFERENCE_OPTIONS]
    assert flags == ['--fuse-conv-bn', '--channels-last', '--compile']
    assert [option.hook for option in INFERENCE_OPTIONS] == [
        'FuseConvBNHook', 'ChannelsLastHook', 'CompileHook']
    assert chosen_inference_options(parser.parse_args([])) == []
    assert chosen_inference_options(parser.parse_args(flags[::-1])) == list(INFERENCE_OPTIONS)
    assert chosen_inference_options(parser.parse_args(['--compile', '--fuse-conv-bn'])) == [
        INFERENCE_OPTIONS[0], INFERENCE_OPTIONS[2]]


@pytest.mark.parametrize('tool, positional', [('test', ['cfg.py', 'ckpt.pth']),
                                              ('demo', ['a.png', 'cfg.py', 'ckpt.pth',
                                                        '--out', 'o.png'])])
def test_inference_flags_shared_by_test_and_demo(tool, positional):
    parse = load_tool(tool).parse_args
    assert chosen_inference_options(parse(positional)) == []
    flags = [option.flag for option in INFERENCE_OPTIONS]
    # given in any order, they are applied in the table's order
    assert chosen_inference_options(parse(positional + flags[::-1])) == list(INFERENCE_OPTIONS)
    assert chosen_inference_options(parse(positional + ['--channels-last'])) == [
        INFERENCE_OPTIONS[1]]


class _ConvBN(torch.nn.Module):
    """A conv + BN with ``encode_decode`` (what the transforms need of a segmentor)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)

    def encode_decode(self, x):
        return self.bn(self.conv(x))


def test_each_inference_option_hook_equals_its_transform(eager_compile):
    """``tools/test.py`` adds an option's hook, ``tools/demo.py`` calls its ``apply``: the two
    leave the same model."""
    torch.manual_seed(0)
    for option in INFERENCE_OPTIONS:
        by_hook, by_apply = _ConvBN().eval(), _ConvBN().eval()
        by_apply.load_state_dict(by_hook.state_dict())
        HOOKS.build(dict(type=option.hook)).before_test(type('R', (), {'model': by_hook})())
        option.apply(by_apply)
        assert [type(m) for m in by_hook.modules()] == [type(m) for m in by_apply.modules()]
        for (name, a), (_, b) in zip(by_hook.state_dict().items(), by_apply.state_dict().items()):
            assert torch.equal(a, b) and a.stride() == b.stride(), (option.dest, name)
        folded = not isinstance(by_apply.bn, torch.nn.BatchNorm2d)
        assert folded == (option.dest == 'fuse_conv_bn'), option.dest
        assert by_apply.conv.weight.is_contiguous() == (option.dest != 'channels_last')
        compiled = 'encode_decode' in vars(by_hook)
        assert compiled == ('encode_decode' in vars(by_apply)) == (option.dest == 'compile')
