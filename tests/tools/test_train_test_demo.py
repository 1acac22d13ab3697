"""The command-line tools as a user runs them: make_toy_dataset → train → test → demo (with
the inference flags), training compiled, training resumed, clear errors for missing files."""
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
from mmlrf.datasets import make_toy_dataset

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY_CONFIG = osp.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')
# one transformer block per stage instead of 6 + 2: the same code paths, a quicker compile
SHALLOW = 'model.backbone.depths=(1,1)'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _start(*args, cwd):
    """A tool run in its own process (started; :func:`_finish` waits for it)."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, ok=True):
    """The run's output, once it has exited with success (``ok``) or failure."""
    out, _ = proc.communicate(timeout=300)
    assert (proc.returncode == 0) == ok, out[-3000:]
    return out


def _finish_all(procs, ok=True):
    """:func:`_finish` of each run in turn; the others are stopped if one fails."""
    try:
        return [_finish(proc, ok) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _run(*args, cwd, ok=True):
    return _finish_all([_start(*args, cwd=cwd)], ok)[0]


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
    image = osp.join(data, 'images', 'validation', 'toy_00000.png')
    out = tmp_path / 'overlay.png'
    dumped = tmp_path / 'work' / osp.basename(TOY_CONFIG)  # the run's config, as trained
    # the three runs read the checkpoint only: side by side
    runs = [_start(osp.join(ROOT, 'tools', 'test.py'), TOY_CONFIG, str(ckpt), '--work-dir',
                   'work_test', '--show-dir', 'shown', *opts[:3], cwd=tmp_path),
            _start(osp.join(ROOT, 'tools', 'test.py'), TOY_CONFIG, str(ckpt), '--work-dir',
                   'work_fused', '--fuse-conv-bn', '--channels-last', '--compile', *opts[:3],
                   cwd=tmp_path),
            _start(osp.join(ROOT, 'tools', 'demo.py'), image, str(dumped), str(ckpt), '--out',
                   str(out), '--opacity', '0.6', '--channels-last', cwd=tmp_path)]
    test_log, fused_log, _ = _finish_all(runs)
    assert _miou(test_log) == pytest.approx(_miou(train_log))  # test reproduces validation
    shown = os.listdir(tmp_path / 'shown' / 'vis_data' / 'vis_image')
    assert len(shown) == 3  # one painted prediction per validation image
    folded = re.search(r'FuseConvBNHook: folded (\d+) of (\d+) BatchNorm', fused_log)
    assert folded and folded.group(1) == folded.group(2) != '0', fused_log[-2000:]
    # the layout change runs after the fold (its hook priority is lower)
    converted = re.search(r'ChannelsLastHook: (\d+) 4-D weights', fused_log)
    assert converted and int(converted.group(1)) > 0 and converted.start() > folded.start()
    assert 'CompileHook: inference compiled' in fused_log
    assert _miou(fused_log) == pytest.approx(_miou(train_log), abs=1.0)  # float rounding only
    overlay = cv2.imread(str(out))
    assert overlay is not None and overlay.shape == (32, 32, 3)
    assert (overlay != cv2.imread(image)).any()  # the segmentation is painted on


def test_train_compile(tmp_path, eager_compile):
    """``train.py --compile`` trains and validates through the compiled training forward and
    inference (``torch.compile`` with its ``eager`` backend and the SSA attention to keep this
    short; LRF-Dyn's traced training and the compiled numerics are tested with the configs)."""
    data = str(tmp_path / 'toy')
    make_toy_dataset(data, num_train=4, num_val=2, size=32)
    runner = load_tool('train').main([
        TOY_CONFIG, '--work-dir', str(tmp_path / 'work'), '--compile', '--cfg-options',
        f'data_root={data}', SHALLOW, 'model.backbone.attn.type=SSA', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
        'model.data_preprocessor.size=(32,32)', 'train_dataloader.batch_size=2'])
    model = runner.model
    # the training forward, and both inference entries: mmseg's and lean predict's
    assert sorted(fn.__name__ for fn in eager_compile) == ['_forward', 'encode_decode', 'loss']
    # the instance attributes are the compiled functions, not the class' methods
    assert {'loss', 'encode_decode', '_forward'} <= set(vars(model))
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert 'val/mIoU' in runner.message_hub.log_scalars
    assert type(model.backbone.block3[0].attn.mixer).__name__ == 'SSA'


def test_clear_errors_for_missing_files(tmp_path):
    """Each tool exits with an error naming the missing file (not a traceback); a config whose
    pretrained checkpoint is missing says how to give it."""
    runs = [
        (_start(osp.join(ROOT, 'tools', 'train.py'), 'missing.py', cwd=tmp_path),
         "config file not found: 'missing.py'"),
        (_start(osp.join(ROOT, 'tools', 'test.py'), TOY_CONFIG, 'missing.pth', cwd=tmp_path),
         "checkpoint file not found: 'missing.pth'"),
        (_start(osp.join(ROOT, 'tools', 'demo.py'), 'missing.png', TOY_CONFIG, 'x.pth', '--out',
                'o.png', cwd=tmp_path), "image file not found: 'missing.png'")]
    outs = _finish_all([proc for proc, _ in runs], ok=False)  # started together
    for out, (_, message) in zip(outs, runs):
        assert f'error: {message}' in out and 'Traceback' not in out, out[-3000:]
    with pytest.raises(FileNotFoundError, match='pretrained checkpoint.*MMLRF_PRETRAINED.*from '
                       r'scratch on purpose: --cfg-options model\.backbone\.init_cfg=None'):
        load_tool('train').main([osp.join(ROOT, 'configs', 'lrfdyn_ade20k.py'), '--work-dir',
                                 str(tmp_path / 'work')])


def test_short_toy_training_via_train_tool_and_resume(tmp_path):
    train = load_tool('train')
    make_toy_dataset(str(tmp_path / 'toy'), num_train=8, num_val=2, size=32)
    opts = ['--cfg-options', f'data_root={tmp_path / "toy"}', 'train_dataloader.batch_size=2',
            'model.data_preprocessor.size=(32,32)', 'default_hooks.logger.interval=1', SHALLOW]
    work = str(tmp_path / 'work')
    runner = train.main([TOY_CONFIG, '--work-dir', work, *opts, 'train_cfg.max_iters=2',
                         'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2'])
    assert runner.iter == 2 and osp.isfile(osp.join(work, 'iter_2.pth'))
    assert 'val/mIoU' in runner.message_hub.log_scalars
    weights = {k: v.clone() for k, v in runner.model.state_dict().items()}
    resumed = train.main([TOY_CONFIG, '--work-dir', work, '--resume', *opts,
                          'train_cfg.max_iters=3', 'train_cfg.val_interval=3',
                          'default_hooks.checkpoint.interval=3'])
    assert resumed.iter == 3  # continued from iteration 2 (weights_only torch.load)
    assert any(not torch.equal(weights[k], v) for k, v in resumed.model.state_dict().items()
               if v.is_floating_point())
