"""mmseg's own entry points on mmlrf's configs: ``MMSegInferencer`` (its loader lookup finds
mmlrf's ``LoadImageFromFile``) and mmseg's ``tools/train.py`` run with nothing but the config
(its ``custom_imports`` import mmlrf)."""
import os
import os.path as osp
import subprocess
import sys

import mmseg
import numpy as np
from toy_run import ROOT, TOY_CONFIG, save_toy_checkpoint, toy_data, toy_model

import mmlrf  # noqa: F401  (must precede mmseg.apis)

MMSEG_TRAIN = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')


def test_mmseg_inferencer_runs_the_toy_model_with_visualisation(tmp_path):
    from mmengine.config import Config
    from mmseg.apis import MMSegInferencer
    cfg = Config.fromfile(TOY_CONFIG)
    cfg.model.backbone.depths = (1, 1)
    config = str(tmp_path / 'toy.py')
    cfg.dump(config)
    weights = save_toy_checkpoint(str(tmp_path / 'toy.pth'), toy_model().state_dict())
    inferencer = MMSegInferencer(model=config, weights=weights, device='cpu')
    image = osp.join(toy_data(str(tmp_path)), 'images', 'validation', 'toy_00000.png')
    result = inferencer(image, return_vis=True, out_dir=str(tmp_path / 'out'))
    assert result['predictions'].shape == (32, 32)
    assert set(np.unique(result['predictions'])) <= set(range(5))
    assert result['visualization'].shape == (32, 32, 3)
    assert os.listdir(tmp_path / 'out' / 'vis') and os.listdir(tmp_path / 'out' / 'pred')


def test_mmseg_own_train_script_runs_the_toy_config(tmp_path):
    assert 'import mmlrf' not in open(MMSEG_TRAIN).read()
    data = toy_data(str(tmp_path))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore',
               PYTHONPATH=ROOT)  # mmlrf importable, as after pip install -e .
    out = subprocess.run(
        [sys.executable, MMSEG_TRAIN, TOY_CONFIG, '--work-dir', str(tmp_path / 'work'),
         '--cfg-options', f'train_dataloader.dataset.data_root={data}',
         f'val_dataloader.dataset.data_root={data}', 'model.backbone.depths=(1,1)',
         'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
         'default_hooks.checkpoint.interval=2', 'model.data_preprocessor.size=(32,32)',
         'train_dataloader.batch_size=2'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert (tmp_path / 'work' / 'iter_2.pth').is_file()
