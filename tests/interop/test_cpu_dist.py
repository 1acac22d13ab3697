"""Two CPU processes (gloo) train the toy config through tools/train.py --launcher pytorch: the
CPU-aware DDP wrapper keeps the ranks' parameters identical."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TOY = sorted((ROOT / 'configs' / 'toy').glob('*.py'))


@pytest.mark.skipif(not TOY or not (ROOT / 'tools' / 'train.py').is_file(),
                    reason='toy config or tools/train.py missing')
@pytest.mark.skipif(not torch.distributed.is_available(), reason='no torch.distributed')
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / 'tests'), os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
    cfg = tmp_path / 'toy_ddp.py'
    cfg.write_text(
        f"_base_ = [{str(TOY[0])!r}]\n"
        "custom_imports = dict(imports=['mmlrf', 'mmlrf.interop.cpu_dist', 'dist_weights_hook'],\n"
        "                      allow_failed_imports=False)\n"
        "env_cfg = dict(dist_cfg=dict(backend='gloo'))\n"
        "model_wrapper_cfg = dict(type='CPUAwareDistributedDataParallel')\n"
        "train_cfg = dict(max_iters=2, val_interval=1000)\n"
        "train_dataloader = dict(batch_size=2, num_workers=0)\n"
        "default_hooks = dict(checkpoint=dict(interval=1000))\n"
        "custom_hooks = [dict(type='NeuronResetHook'), dict(type='DumpRankWeightsHook')]\n")
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(29500 + os.getpid() % 1000), str(ROOT / 'tools' / 'train.py'),
           str(cfg), '--launcher', 'pytorch', '--work-dir', str(tmp_path)]
    # run in tmp_path: the toy data set is generated under the working directory (data/toy)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    assert 'CPUAwareDistributedDataParallel' in log or (tmp_path / 'rank1_weights.pth').is_file()
    # Parameters must agree (DDP all-reduces gradients). BN running statistics are per rank:
    # mmengine wraps with broadcast_buffers=False, and each rank normalises its own batches.
    w0 = torch.load(tmp_path / 'rank0_weights.pth')['params']
    w1 = torch.load(tmp_path / 'rank1_weights.pth')['params']
    init = torch.load(tmp_path / 'rank0_init.pth')['params']
    assert any(not torch.equal(init[k], w0[k]) for k in w0)  # it trained
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # SyncBN is not exercised: torch's DDP refuses SyncBatchNorm in CPU modules ("SyncBatchNorm
    # layers only work with GPU modules"); configs asking for it need GPUs.
