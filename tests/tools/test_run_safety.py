"""tools/train.py refuses what would fail late or silently, before anything runs, and loses
nothing: one run per work dir, a stop at the first non-finite loss, ``--cfg-options`` keys that
name something, resume from the work dir's own checkpoints, no stale temporary files, the
user's umask, a missing data root named with its variable."""
import os
import os.path as osp
import runpy
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from tool_loading import TOOLS, load_tool
from toy_run import ROOT, TOY_CONFIG, toy_data, toy_options

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.engine.cfg_options import CfgOptionError
from mmlrf.engine.hooks import NonFiniteError
from mmlrf.engine.preflight import DataRootError
from mmlrf.engine.work_dir_lock import (LOCK_NAME, WorkDirBusyError, WorkDirLock,
                                        holds_work_dir_lock)
from mmlrf.interop import CorruptCheckpointError, atomic_write

LOCK_MODULE = osp.join(ROOT, 'mmlrf', 'engine', 'work_dir_lock.py')


def test_second_run_in_a_work_dir_refuses_naming_the_first(tmp_path):
    work = str(tmp_path / 'work')
    with WorkDirLock(work):
        with pytest.raises(WorkDirBusyError, match=rf'in use by another run \(pid {os.getpid()}'):
            load_tool('train').main([TOY_CONFIG, '--work-dir', work,
                                     *toy_options(toy_data(str(tmp_path)))])
    assert os.listdir(work) == [LOCK_NAME]  # the refused run wrote nothing


@pytest.mark.parametrize('launcher, variable', [('pytorch', 'RANK'), ('slurm', 'SLURM_PROCID'),
                                               ('mpi', 'OMPI_COMM_WORLD_RANK')])
def test_one_process_of_a_distributed_run_takes_the_lock(monkeypatch, launcher, variable):
    monkeypatch.delenv(variable, raising=False)
    assert holds_work_dir_lock('none') and holds_work_dir_lock(launcher)
    monkeypatch.setenv(variable, '0')
    assert holds_work_dir_lock(launcher)
    monkeypatch.setenv(variable, '3')
    assert not holds_work_dir_lock(launcher) and holds_work_dir_lock('none')


def test_a_killed_run_leaves_no_lock(tmp_path):
    work = str(tmp_path / 'work')
    holder = ('import importlib.util, sys, time\n'
              f'spec = importlib.util.spec_from_file_location("lock", {LOCK_MODULE!r})\n'
              'module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n'
              f'module.WorkDirLock({work!r}).acquire(); print("held", flush=True)\n'
              'time.sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'held'
        with pytest.raises(WorkDirBusyError, match=f'pid {proc.pid} '):
            WorkDirLock(work).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    WorkDirLock(work).acquire().release()  # the kernel dropped the dead run's lock


def test_non_finite_loss_stops_at_once_saves_nothing_exits_non_zero(tmp_path, monkeypatch):
    work = str(tmp_path / 'work')
    argv = [TOY_CONFIG, '--work-dir', work,
            *toy_options(toy_data(str(tmp_path)), 4, 'default_hooks.checkpoint.interval=1',
                         'optim_wrapper.optimizer.lr=1e8', 'param_scheduler=[]')]
    monkeypatch.setattr(sys, 'argv', [osp.join(TOOLS, 'train.py'), *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(osp.join(TOOLS, 'train.py'), run_name='__main__')
    message = str(exit_.value.code)
    assert message.startswith('error: training stopped at iteration ')
    assert 'non-finite loss' in message and 'optim_wrapper.optimizer.lr' in message
    saved = [name for name in os.listdir(work) if name.endswith('.pth')]
    stopped = int(message.split('iteration ')[1].split(':')[0])
    assert stopped >= 2  # lr 1e8 breaks the weights in the first step, the loss in the next
    for name in saved:  # only checkpoints from before the first non-finite loss
        assert int(name[len('iter_'):-len('.pth')]) < stopped
        state = torch.load(osp.join(work, name), map_location='cpu')['state_dict']
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_checkpoint_with_non_finite_weights_is_never_saved():
    from types import SimpleNamespace

    from mmlrf.engine.hooks import FiniteCheckHook
    state = dict(a=torch.zeros(2), b=torch.tensor([1.0, float('nan')]))
    with pytest.raises(NonFiniteError, match=r'1 weight tensors.*\(b\)'):
        FiniteCheckHook().before_save_checkpoint(SimpleNamespace(), dict(state_dict=state))


@pytest.mark.parametrize('option, match', [
    ('default_hooks.checkpoint.intervall=20', r"has no key 'intervall'.*Did you mean 'interval'"),
    ('max_iters=3', r"'max_iters' is a variable of the config file.*train_cfg.max_iters"),
    ('trian_cfg.max_iters=3', r"no top-level key 'trian_cfg'.*Did you mean 'train_cfg'"),
    ('model.backbone.nonsense=1', r"model.backbone \(SDTV3\) has no key 'nonsense'"),
])
def test_cfg_option_naming_nothing_is_refused_before_anything_runs(tmp_path, option, match):
    with pytest.raises(CfgOptionError, match=match):
        load_tool('train').main([TOY_CONFIG, '--work-dir', str(tmp_path / 'work'),
                                 '--cfg-options', option])
    assert not (tmp_path / 'work').exists()


def test_cfg_option_added_on_purpose_or_left_at_its_default_is_taken(tmp_path):
    train = load_tool('train')
    cfg = train.load_config(TOY_CONFIG, None, {'+model.test_cfg.extra': 3,
                                               'model.backbone.depths': (1, 1),
                                               'train_dataloader.pin_memory': True}, 'none')
    assert cfg.model.test_cfg.extra == 3 and cfg.model.backbone.depths == (1, 1)
    assert cfg.train_dataloader.pin_memory is True


def _checkpoint(path, iteration):
    torch.save(dict(meta=dict(iter=iteration), state_dict={}), path)


def test_resume_takes_the_newest_intact_checkpoint_inside_the_work_dir(tmp_path):
    train = load_tool('train')
    original = tmp_path / 'original'
    original.mkdir()
    for i in (1, 2, 10):
        _checkpoint(original / f'iter_{i}.pth', i)
    (original / 'last_checkpoint').write_text(str(original / 'iter_10.pth'))
    copy = tmp_path / 'copy'
    shutil.copytree(original, copy)
    (copy / 'iter_10.pth').write_bytes((copy / 'iter_10.pth').read_bytes()[:100])  # truncated
    cfg = train.load_config(TOY_CONFIG, str(copy), None, 'none')
    train.prepare_work_dir(cfg, resume=True).release()
    assert cfg.resume and cfg.load_from == str(copy / 'iter_2.pth')  # not the original's
    moved = tmp_path / 'moved'
    shutil.move(str(original), moved)
    (moved / 'last_checkpoint').write_text('')  # empty, or pointing nowhere: not read
    cfg = train.load_config(TOY_CONFIG, str(moved), None, 'none')
    train.prepare_work_dir(cfg, resume=True).release()
    assert cfg.load_from == str(moved / 'iter_10.pth')


def test_resume_with_only_damaged_checkpoints_names_them(tmp_path):
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    train = load_tool('train')
    cfg = train.load_config(TOY_CONFIG, str(tmp_path), None, 'none')
    with pytest.raises(CorruptCheckpointError, match='iter_4.pth'):
        train.prepare_work_dir(cfg, resume=True)


def test_a_killed_save_s_temporary_files_are_removed_at_the_next_start(tmp_path):
    stale = tmp_path / '.iter_20.pth.k3j9x_1.tmp'
    stale.write_bytes(b'partial')
    kept = tmp_path / 'notes.tmp'
    kept.write_text('not a checkpoint temporary')
    train = load_tool('train')
    cfg = train.load_config(TOY_CONFIG, str(tmp_path), None, 'none')
    train.prepare_work_dir(cfg, resume=False).release()
    assert not stale.exists() and kept.exists()


@pytest.mark.parametrize('mask', [0o022, 0o002])
def test_checkpoints_and_generated_data_follow_the_umask(tmp_path, mask):
    from mmlrf.datasets import make_toy_dataset
    old = os.umask(mask)
    try:
        atomic_write(b'x', tmp_path / 'iter_1.pth')
        make_toy_dataset(str(tmp_path / 'toy'), num_train=1, num_val=1, size=16)
    finally:
        os.umask(old)
    assert (tmp_path / 'iter_1.pth').stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / 'toy').stat().st_mode & 0o777 == 0o777 & ~mask


def test_missing_data_root_is_named_with_its_variable_before_anything_runs(tmp_path,
                                                                           monkeypatch):
    missing = str(tmp_path / 'no_ade')
    monkeypatch.setenv('MMLRF_ADE20K_ROOT', missing)
    with pytest.raises(DataRootError) as err:
        load_tool('train').main([osp.join(ROOT, 'configs', 'lrfdyn_ade20k.py'), '--work-dir',
                                 str(tmp_path / 'work'), '--cfg-options',
                                 'model.backbone.init_cfg=None'])
    message = str(err.value)
    assert repr(missing) in message and 'MMLRF_ADE20K_ROOT' in message
    assert 'data_root=PATH' in message and '--smoke' in message
    assert not (tmp_path / 'work').exists()
