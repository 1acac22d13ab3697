"""The command-line tools as a user runs them: make_toy_dataset → train → test → demo."""
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import pytest
import torch
from tool_loading import load_tool

import mmlrf  # noqa: F401  (must precede mmseg)
from mmseg.registry import HOOKS

from mmlrf.hooks import INFERENCE_OPTIONS, chosen_inference_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CONFIG = osp.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')
# one transformer block per stage instead of 6 + 2: the same code paths, a quicker compile
SHALLOW = 'model.backbone.depths=(1,1)'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _run(*args, cwd, ok=True):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, out[-3000:]
    return out


def _miou(log):
    values = re.findall(r'mIoU: ([0-9.]+)', log)
    assert values, log[-2000:]
    return float(values[-1])


def test_train_test_demo(tmp_path):
    data = str(tmp_path / 'toy')
    _run(osp.join(ROOT, 'tools', 'dataset', 'make_toy_dataset.py'), data, '--num-train', '8',
         '--num-val', '3', '--size', '32', cwd=tmp_path)
    opts = ['--cfg-options', f'data_root={data}', SHALLOW, 'train_cfg.max_iters=3',
            'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=3',
            'model.data_preprocessor.size=(32,32)', 'train_dataloader.batch_size=2']
    train_log = _run(osp.join(ROOT, 'tools', 'train.py'), TOY_CONFIG, '--work-dir', 'work',
                     *opts, cwd=tmp_path)
    ckpt = tmp_path / 'work' / 'iter_3.pth'
    assert ckpt.is_file()
    test_log = _run(osp.join(ROOT, 'tools', 'test.py'), TOY_CONFIG, str(ckpt), '--work-dir',
                    'work_test', '--show-dir', 'shown', *opts[:3], cwd=tmp_path)
    assert _miou(test_log) == pytest.approx(_miou(train_log))  # test reproduces validation
    shown = os.listdir(tmp_path / 'shown' / 'vis_data' / 'vis_image')
    assert len(shown) == 3  # one painted prediction per validation image
    fused_log = _run(osp.join(ROOT, 'tools', 'test.py'), TOY_CONFIG, str(ckpt), '--work-dir',
                     'work_fused', '--fuse-conv-bn', '--channels-last', '--compile', *opts[:3],
                     cwd=tmp_path)
    folded = re.search(r'FuseConvBNHook: folded (\d+) of (\d+) BatchNorm', fused_log)
    assert folded and folded.group(1) == folded.group(2) != '0', fused_log[-2000:]
    # the layout change runs after the fold (its hook priority is lower)
    converted = re.search(r'ChannelsLastHook: (\d+) 4-D weights', fused_log)
    assert converted and int(converted.group(1)) > 0 and converted.start() > folded.start()
    assert 'CompileHook: encode_decode compiled' in fused_log
    assert _miou(fused_log) == pytest.approx(_miou(train_log), abs=1.0)  # float rounding only
    image = osp.join(data, 'images', 'validation', 'toy_00000.png')
    out = tmp_path / 'overlay.png'
    dumped = tmp_path / 'work' / osp.basename(TOY_CONFIG)  # the run's config, as trained
    _run(osp.join(ROOT, 'tools', 'demo.py'), image, str(dumped), str(ckpt), '--out', str(out),
         '--opacity', '0.6', '--channels-last', '--compile', cwd=tmp_path)
    overlay = cv2.imread(str(out))
    assert overlay is not None and overlay.shape == (32, 32, 3)
    assert (overlay != cv2.imread(image)).any()  # the segmentation is painted on


def test_train_compile(tmp_path, eager_compile):
    """``train.py --compile`` trains and validates through the compiled training forward and
    inference (``torch.compile`` with its ``eager`` backend to keep this short; the compiled
    numerics are tested in test_configs.py)."""
    data = str(tmp_path / 'toy')
    _run(osp.join(ROOT, 'tools', 'dataset', 'make_toy_dataset.py'), data, '--num-train', '4',
         '--num-val', '2', '--size', '32', cwd=tmp_path)
    runner = load_tool('train').main([
        TOY_CONFIG, '--work-dir', str(tmp_path / 'work'), '--compile', '--cfg-options',
        f'data_root={data}', SHALLOW, 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'model.data_preprocessor.size=(32,32)',
        'train_dataloader.batch_size=2'])
    model = runner.model
    assert sorted(fn.__name__ for fn in eager_compile) == ['encode_decode', 'loss']
    # the instance attributes are the compiled functions, not the class' methods
    assert 'loss' in vars(model) and 'encode_decode' in vars(model)
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert 'val/mIoU' in runner.message_hub.log_scalars


def test_clear_errors_for_missing_files(tmp_path):
    out = _run(osp.join(ROOT, 'tools', 'train.py'), 'missing.py', cwd=tmp_path, ok=False)
    assert "config file not found: 'missing.py'" in out
    out = _run(osp.join(ROOT, 'tools', 'test.py'), TOY_CONFIG, 'missing.pth', cwd=tmp_path,
               ok=False)
    assert "checkpoint file not found: 'missing.pth'" in out
    out = _run(osp.join(ROOT, 'tools', 'demo.py'), 'missing.png', TOY_CONFIG, 'x.pth', '--out',
               'o.png', cwd=tmp_path, ok=False)
    assert "image file not found: 'missing.png'" in out
    out = _run(osp.join(ROOT, 'tools', 'train.py'), osp.join(ROOT, 'configs', 'lrfdyn_ade20k.py'),
               cwd=tmp_path, ok=False)
    assert 'pretrained checkpoint' in out and 'MMLRF_PRETRAINED' in out


@pytest.mark.parametrize('tool, positional', [('test', ['cfg.py', 'ckpt.pth']),
                                              ('demo', ['a.png', 'cfg.py', 'ckpt.pth',
                                                        '--out', 'o.png'])])
def test_inference_flags_shared_by_test_and_demo(tool, positional):
    parse = load_tool(tool).parse_args
    assert chosen_inference_options(parse(positional)) == []
    flags = [option.flag for option in INFERENCE_OPTIONS]
    assert flags == ['--fuse-conv-bn', '--channels-last', '--compile']
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


def test_each_inference_option_hook_equals_its_transform():
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
