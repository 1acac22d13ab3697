"""Attention ablation grid (mmlrf.analysis.ablation) and its command line."""
import json
import os

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch

from mmlrf.analysis import ablation
from tool_loading import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = os.path.join(ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')


def tiny_options(data_root: str) -> list[str]:
    """``--cfg-options`` of a tiny grid: one block per stage, 32×32 images, 8 + 2 samples."""
    opts = ['model.backbone.depths=(1,1)', 'model.data_preprocessor.size=(32,32)',
            'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2']
    for split in ('train', 'val'):
        opts += [f'{split}_dataloader.dataset.data_root={data_root}',
                 f'{split}_dataloader.dataset.generate.size=32',
                 f'{split}_dataloader.dataset.generate.num_train=8',
                 f'{split}_dataloader.dataset.generate.num_val=2']
    return opts


def test_run_config_swaps_attention_and_compresses_the_schedule():
    cfg = ablation.run_config(TOY, ablation.VARIANTS['sdsa'], seed=3, iters=60, work_dir='w')
    assert cfg.model.backbone.attn == dict(type='SSA', order='qk')  # nothing of LRFDyn's left
    assert cfg.randomness.seed == 3 and cfg.work_dir == 'w'
    assert cfg.train_cfg.max_iters == 60 and cfg.train_cfg.val_interval == 60
    assert cfg.default_hooks.checkpoint.interval == 60
    # the toy schedule: warm-up over 50 of 600 steps, then poly decay to 600; one tenth of it
    (warm, poly) = cfg.param_scheduler
    assert (warm.begin, warm.end, poly.begin, poly.end) == (0, 5, 5, 60)


def _result(variant: str, seed: int, miou: float, wall: float) -> dict:
    return dict(settings=dict(variant=variant, seed=seed, iters=10, attn={}), train_wall_s=wall,
                metrics=dict(mIoU=miou, mAcc=miou, aAcc=90.0), params=1234, loss_curve=[[10, 1]],
                energy=dict(energy_mj=0.002, mean_firing_rate=0.1),
                locality=dict(mean=dict(local_mass=0.5, entropy=0.8, mean_distance=1.0)))


def test_summary_is_mean_and_sample_std_over_seeds():
    report = ablation.summarise([_result('a', 0, 10.0, 4.0), _result('b', 0, 50.0, 1.0),
                                 _result('a', 1, 20.0, 6.0)])
    a, b = report['variants']
    assert (a['variant'], a['seeds'], b['seeds']) == ('a', [0, 1], [0])
    assert a['mIoU'] == pytest.approx((15.0, 50 ** 0.5))  # sample std of 10, 20: sqrt(50)
    assert a['train_wall_s'] == pytest.approx((5.0, 2 ** 0.5)) and b['mIoU'] == (50.0, 0.0)
    table = ablation.format_markdown(report)
    assert '| a | 15.00 ± 7.07 | 2 | 10 | 5 | 1,234 | 2.00 |' in table
    assert '| b | 50.00 ± 0.00 | 1 |' in table


def _logged(tool, argv: list[str], capsys) -> list[str]:
    tool.main(argv)
    return [line for line in capsys.readouterr().out.splitlines() if ' seed ' in line]


def test_grid_trains_tabulates_and_resumes(tmp_path, capsys):
    tool = load_tool('analysis/ablation')
    out = tmp_path / 'grid'
    argv = [TOY, '--variants', 'sdsa', 'lrf_dyn_no_lrf', '--seeds', '0', '--iters', '2',
            '--out', str(out), '--num-images', '2',
            '--cfg-options', *tiny_options(str(tmp_path / 'toy'))]
    logged = _logged(tool, argv, capsys)
    assert [line.split(':')[0] for line in logged if 'training' in line] == [
        'sdsa seed 0', 'lrf_dyn_no_lrf seed 0']
    report = json.loads((out / 'ablation.json').read_text())
    assert report['meta']['command'] == ' '.join(['ablation.py'] + argv)
    assert report['meta']['torch'] == torch.__version__ and report['meta']['date']
    assert [r['variant'] for r in report['variants']] == ['sdsa', 'lrf_dyn_no_lrf']
    for row, attn in zip(report['variants'], (dict(type='SSA', order='qk'),
                                              dict(type='LRFDyn', lrf=False))):
        assert row['attn'] == attn and row['steps'] == 2 and row['seeds'] == [0]
        assert 0 <= row['mIoU'][0] <= 100 and row['params'] > 0 and row['energy_mj'][0] > 0
    run = report['results'][0]
    assert run['images_source'] == 'dataset:ToyTextureDataset'
    assert [layer['grid'] for layer in run['locality']['layers']] == [[2, 2], [2, 2]]
    assert len(run['loss_curve']) == 2 and run['loss_curve'][-1][0] == 2
    assert (out / 'runs' / 'sdsa' / 'seed0' / 'iter_2.pth').is_file()
    table = (out / 'ablation.md').read_text().splitlines()
    assert table[2].startswith('| sdsa |') and table[3].startswith('| lrf_dyn_no_lrf |')
    assert (out / 'ablation.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    # rerun: both finished, nothing trained, results untouched
    done = out / 'runs' / 'sdsa' / 'seed0' / 'result.json'
    stamp = done.stat().st_mtime_ns
    assert _logged(tool, argv, capsys) == ['sdsa seed 0: finished, skipped',
                                           'lrf_dyn_no_lrf seed 0: finished, skipped']
    assert done.stat().st_mtime_ns == stamp

    # a killed run (its folder without result.json) is redone from scratch; others skipped
    killed = out / 'runs' / 'lrf_dyn_no_lrf' / 'seed0'
    (killed / 'result.json').unlink()
    (killed / 'leftover').write_text('from the killed run')
    logged = _logged(tool, argv, capsys)
    assert logged[0] == 'sdsa seed 0: finished, skipped'
    assert logged[1].startswith('lrf_dyn_no_lrf seed 0: training 2 steps')
    assert (killed / 'result.json').is_file() and not (killed / 'leftover').exists()
    assert done.stat().st_mtime_ns == stamp


def test_cli_help_documents_the_grid(capsys):
    tool = load_tool('analysis/ablation')
    with pytest.raises(SystemExit):
        tool.parse_args(['--help'])
    text = capsys.readouterr().out
    for name in ('sdsa', 'ssa_kv', 'causal_ssa', 'lrf_ssa', 'lrf_dyn', 'lrf_dyn_no_lrf',
                 'lrf_dyn_qk_free', 'lrf_dyn_bidir', '--seeds', '--iters', 'result.json'):
        assert name in text
    with pytest.raises(SystemExit):
        tool.parse_args([TOY, '--iters', '1', '--out', 'o', '--variants', 'no_such'])
