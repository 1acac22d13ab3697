"""``tools/train.py --smoke`` for every segmentation config, and ``custom_imports`` in every
config.

A full smoke run of a 19M-parameter config takes about half a minute on a 2-core CPU, too long
for every config in the suite: each config's smoke transformation is checked here (schedule,
loaders, no pretrained weights, generated data in its data set's layout, a training sample
through its pipeline at the smoke crop), and the whole smoke run once, on the toy config (the
same tool path; the other configs' models train in tests/configs)."""
import functools
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmseg.registry import DATASETS
from tool_loading import load_tool
from toy_run import ROOT, TOY_CONFIG

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.engine.smoke import SMOKE_CROP, apply_smoke

SEG_CONFIGS = sorted(
    osp.relpath(path, ROOT) for pattern in ('configs/*.py', 'configs/sdtv3/*.py',
                                            'configs/spikformer/*.py', 'configs/qkformer/*.py',
                                            'configs/toy/*.py')
    for path in glob.glob(osp.join(ROOT, pattern)))
ALL_CONFIGS = SEG_CONFIGS + sorted(
    osp.relpath(path, ROOT) for path in glob.glob(osp.join(ROOT, 'configs/imagenet/*.py')))


@pytest.fixture(scope='module', autouse=True)
def config_index_read_once():
    """mmengine reads mmseg's 53 model-index files again for every ``mmseg::`` base; the index
    does not change during the tests, so it is read once here."""
    import mmengine.config.utils as utils
    original = utils._get_cfg_metainfo
    utils._get_cfg_metainfo = functools.lru_cache(maxsize=None)(original)
    yield
    utils._get_cfg_metainfo = original


@functools.lru_cache(maxsize=None)
def _parsed(config):
    return Config.fromfile(osp.join(ROOT, config))


def test_the_configs_are_found():
    assert len(SEG_CONFIGS) >= 26 and 'configs/lrfdyn_ade20k.py' in SEG_CONFIGS


@pytest.mark.parametrize('config', ALL_CONFIGS)
def test_every_config_imports_mmlrf_itself(config):
    imports = _parsed(config).custom_imports
    assert imports['allow_failed_imports'] is False
    assert any(name == 'mmlrf' or name.startswith('mmlrf.') for name in imports['imports'])


def _pretrained(node):
    if isinstance(node, dict):
        return node.get('type') == 'Pretrained' or any(map(_pretrained, node.values()))
    return isinstance(node, list) and any(map(_pretrained, node))


#: Data sets already read in a smoke layout: one per distinct data and size configuration.
READ = set()


@pytest.mark.parametrize('config', SEG_CONFIGS)
def test_smoke_shrinks_every_seg_config(config, tmp_path):
    cfg = _parsed(config).copy()
    apply_smoke(cfg, str(tmp_path))
    assert cfg.train_cfg.max_iters == 2 and cfg.train_cfg.val_interval == 2
    assert cfg.default_hooks.checkpoint.interval == 2
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        assert loader.num_workers == 0 and loader.persistent_workers is False
        assert loader.dataset.data_root.startswith(str(tmp_path))
    assert not _pretrained(cfg.model.to_dict())
    size = cfg.model.data_preprocessor.size
    assert min(size) == SMOKE_CROP
    if cfg.model.test_cfg.get('mode') == 'slide':
        assert max(cfg.model.test_cfg.crop_size) <= 2 * SMOKE_CROP
    data = repr([cfg[k].to_dict() for k in ('train_dataloader', 'val_dataloader')]
                + [size]).replace(str(tmp_path), '')
    if data in READ:
        return  # the same files and pipelines as a config read before
    READ.add(data)
    with DefaultScope.overwrite_default_scope('mmseg'):
        train = DATASETS.build(cfg.train_dataloader.dataset)
        val = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(train) >= 2 and len(val) >= 1
    sample = train[0]
    height, width = sample['inputs'].shape[-2:]
    assert height <= size[0] and width <= size[1]
    labels = sample['data_samples'].gt_sem_seg.data
    assert labels.max() < len(train.metainfo['classes']) or labels.max() == 255
    assert min(val[0]['inputs'].shape[-2:]) <= 2 * SMOKE_CROP  # the test scale shrunk too


def test_smoke_run_trains_saves_and_evaluates(tmp_path):
    work = str(tmp_path / 'work')
    runner = load_tool('train').main([TOY_CONFIG, '--smoke', '--work-dir', work])
    assert runner.iter == 2 and osp.isfile(osp.join(work, 'iter_2.pth'))
    assert 'val/mIoU' in runner.message_hub.log_scalars
    assert osp.isdir(osp.join(work, 'smoke_data', 'ToyTextureDataset', 'images', 'training'))
