"""Every segmentation config builds its model (full width wired right, the layers and the lean
inference the configs choose) and trains; ADE20K / Cityscapes / UPerHead configs run 2 training
iterations (+ validation) on generated images in the data sets' real layouts through mmseg's own
data sets; Cityscapes' sliding-window inference on a full frame; every model family's inference
and training trace whole under ``torch.compile``; the README's copy-paste config trains."""
import copy
import glob
import os
import os.path as osp
import re

import mmlrf  # noqa: F401  (first: compat fixes + registration)
import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules
from torch import nn

from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.segmentors import LeanEncoderDecoder

from config_models import (MODEL_GROUPS, ROOT, SEG_CONFIGS, SIZE, build_small, group_id, load,
                           randomise_batchnorms, rel, shrink_model)
from seg_samples import build_segmentor, random_seg_samples, train_two_iterations

register_all_modules(init_default_scope=True)


def _head_in_channels(model_cfg):
    """Channels the config wires into the first module after the backbone."""
    if model_cfg.get('neck'):
        return list(model_cfg.neck.in_channels)
    return list(model_cfg.decode_head.in_channels)


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=rel)
def test_full_width_wiring(path):
    """The full-size backbone's real output channels are what the neck/head expect."""
    cfg = load(path)
    backbone = copy.deepcopy(cfg.model.backbone)
    backbone.init_cfg = None
    with torch.device('meta'):
        model = MODELS.build(backbone)
    assert list(model.out_channels) == _head_in_channels(cfg.model)
    head = cfg.model.decode_head
    if 'feature_strides' in head:
        assert list(head.feature_strides) == [model.strides[i] for i in head.in_index]


def test_groups_cover_every_config():
    assert sorted(p for g in MODEL_GROUPS for p in g) == SEG_CONFIGS
    assert len(SEG_CONFIGS) >= 20


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=group_id)
def test_layers_and_lean_inference_the_configs_choose(paths):
    """Every config's model is a ``LeanEncoderDecoder`` with lean inference on; every conv of
    its backbone, neck and head is a ``RoutedConv2d`` (the spike-code saving convs) and every
    norm a SyncBN (BN in the one-process toy config); mmseg's UPerHead keeps its own layers.
    Lean: the spiking FPN neck and head and SDT-V3's conv blocks."""
    model_cfg = shrink_model(load(paths[0]).model)
    model = MODELS.build(model_cfg)
    assert type(model) is LeanEncoderDecoder
    toy = 'toy' + osp.sep in paths[0]
    parts = [model.backbone] + ([model.neck] if model_cfg.get('neck') else [])
    if model_cfg.decode_head.type == 'SpikingFPNHead':
        parts.append(model.decode_head)
    for part in parts:
        convs = [m for m in part.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(type(m) is RoutedConv2d for m in convs), type(part).__name__
        norms = [m for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, nn.BatchNorm2d if toy else nn.SyncBatchNorm)
                             for m in norms), type(part).__name__
    lean = [m for m in model.modules() if hasattr(m, 'lean_inference')]
    assert all(m.lean_inference for m in lean)
    if model_cfg.get('neck', {}).get('type') == 'SpikingFPN':
        assert model.neck.lean_inference and model.decode_head.lean_inference
    if model_cfg.backbone.type == 'SDTV3':
        assert model.backbone.ConvBlock1_1[0].lean_inference


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=group_id)
def test_forward_backward(paths):
    """Each config builds its (reduced-width) model; one forward/backward per model group."""
    models = [build_small(p) for p in paths]
    model = models[0].train()
    samples = random_seg_samples(2, (SIZE, SIZE), 5)
    data = model.data_preprocessor(
        dict(inputs=list(torch.rand(2, 3, SIZE, SIZE) * 255), data_samples=samples), True)
    losses = model(**data, mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    logits = model(data['inputs'], mode='tensor')
    assert logits.shape[:2] == (2, model.decode_head.num_classes)


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=group_id)
def test_lean_inference_keeps_the_function(paths):
    """Inference (autograd off: spikes of temporaries in place, and with the spiking FPN the
    neck and head releasing the maps they read and running their 3×3 convs over row strips,
    as do SDT-V3's conv blocks) gives exactly the recorded forward's output, in every model
    family."""
    model = build_small(paths[0]).eval()
    randomise_batchnorms(model)
    images = torch.rand(2, 3, SIZE, SIZE)
    recorded = model(images.clone().requires_grad_(), mode='tensor')
    with torch.no_grad():
        got = model(images, mode='tensor')
    assert torch.equal(got, recorded.detach())


def _write_ade(root, n=2, size=(48, 40)):
    rng = np.random.default_rng(0)
    for split in ('training', 'validation'):
        for i in range(n):
            name = f'ADE_{split[:5]}_{i:08d}'
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            ann = rng.integers(0, 151, size, dtype=np.uint8)  # 0 = other, 1..150 classes
            for d, ext, arr in (('images', '.jpg', img), ('annotations', '.png', ann)):
                out = osp.join(root, d, split)
                cv2.imwrite(osp.join(_mkdir(out), name + ext), arr)


def _write_cityscapes(root, n=2, size=(32, 64)):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for i in range(n):
            stem = f'aachen_{i:06d}_000019'
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            ann = rng.integers(0, 19, size, dtype=np.uint8)
            cv2.imwrite(osp.join(_mkdir(osp.join(root, 'leftImg8bit', split, 'aachen')),
                                 stem + '_leftImg8bit.png'), img)
            cv2.imwrite(osp.join(_mkdir(osp.join(root, 'gtFine', split, 'aachen')),
                                 stem + '_gtFine_labelTrainIds.png'), ann)


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    return path


def _small_pipelines(cfg, crop):
    """Keep each pipeline's transforms but scale resize/crop sizes down to ``crop``."""
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for t in cfg[loader].dataset.pipeline:
            if t.type in ('RandomResize', 'Resize'):
                t.scale = (2 * crop[1], crop[0])
            if t.type == 'RandomCrop':
                t.crop_size = crop
        cfg[loader].update(batch_size=2 if loader == 'train_dataloader' else 1, num_workers=0,
                           persistent_workers=False)


@pytest.mark.parametrize('config,writer,dataset_type', [
    ('configs/lrfdyn_ade20k.py', _write_ade, 'ADE20KDataset'),
    ('configs/sdtv3/upernet_sdtv3-19m-lrfdyn_8xb2-160k_ade20k-512x512.py', _write_ade,
     'ADE20KDataset'),
    ('configs/sdtv3/fpn_sdtv3-19m-lrfdyn_8xb2-80k_cityscapes-512x1024.py', _write_cityscapes,
     'CityscapesDataset'),
])
def test_two_training_iterations_on_real_layout(tmp_path, config, writer, dataset_type):
    data_root = str(tmp_path / 'data')
    writer(data_root)
    cfg = load(osp.join(ROOT, config))
    assert cfg.train_dataloader.dataset.type == dataset_type
    crop = (SIZE, SIZE)
    cfg.model = shrink_model(cfg.model)
    if cfg.model.test_cfg.mode == 'slide':
        cfg.model.test_cfg.update(crop_size=crop, stride=(16, 16))
    _small_pipelines(cfg, crop)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                                end=2)]
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 2
    cfg.work_dir = str(tmp_path / 'work')
    cfg.env_cfg.cudnn_benchmark = False
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    assert osp.isfile(osp.join(cfg.work_dir, 'iter_2.pth'))
    scalars = runner.message_hub.log_scalars
    assert 'val/mIoU' in scalars and np.isfinite(scalars['val/mIoU'].current())


def test_cityscapes_slide_inference_full_frame(tmp_path):
    """One 2048x1024 frame through the Cityscapes config's test pipeline and slide test_cfg, with
    the backbone narrowed to [8, 16, 32, 32]."""
    from mmengine.dataset import Compose
    cfg = load(osp.join(ROOT, 'configs/sdtv3/fpn_sdtv3-19m-lrfdyn_8xb2-80k_cityscapes-512x1024.py'))
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 1024), stride=(341, 683))
    cfg.model.backbone.update(arch=None, embed_dims=[8, 16, 32, 32], num_heads=2, init_cfg=None)
    cfg.model.neck.update(in_channels=[4, 8, 16, 32], out_channels=16)
    cfg.model.decode_head.update(in_channels=[16] * 4, channels=16)
    model = build_segmentor(cfg.model).eval()
    rng = np.random.default_rng(0)
    frame = str(tmp_path / 'frame_leftImg8bit.png')
    label = str(tmp_path / 'frame_gtFine_labelTrainIds.png')
    assert cv2.imwrite(frame, rng.integers(0, 256, (1024, 2048, 3), np.uint8))
    assert cv2.imwrite(label, rng.integers(0, 19, (1024, 2048), np.uint8))
    sample = Compose(cfg.test_pipeline)(dict(img_path=frame, seg_map_path=label,
                                             reduce_zero_label=False, seg_fields=[]))
    windows = []
    model.backbone.register_forward_hook(lambda m, i, o: windows.append(tuple(i[0].shape[-2:])))
    data = model.data_preprocessor(dict(inputs=[sample['inputs']],
                                        data_samples=[sample['data_samples']]), False)
    with torch.no_grad():
        pred = model.predict(data['inputs'], data['data_samples'])[0]
    assert pred.pred_sem_seg.shape == (1024, 2048)
    assert windows == [(512, 1024)] * 9  # 3 x 3 windows (stride 341 x 683)
    assert 0 <= pred.pred_sem_seg.data.min() and pred.pred_sem_seg.data.max() < 19


def _network(paths) -> str:
    """A model group's network: its reduced model config without the class count and the test
    mode (the same modules, the same traced code)."""
    model_cfg = shrink_model(load(paths[0]).model)
    model_cfg.pop('test_cfg', None)
    for head in ('decode_head', 'auxiliary_head'):
        if model_cfg.get(head):
            model_cfg[head].pop('num_classes')
    return Config(dict(model=model_cfg)).pretty_text


#: One model group per network (the Cityscapes groups differ from ADE20K's in their classes).
TRACE_GROUPS = list({_network(g): g for g in reversed(MODEL_GROUPS)}.values())


@pytest.mark.parametrize('paths', TRACE_GROUPS, ids=group_id)
def test_inference_traces_into_one_graph(paths):
    """``torch.compile`` captures every model family's inference whole (``fullgraph=True``
    raises at a graph break) and the captured program (Dynamo's eager backend) gives the eager
    logits."""
    import torch._dynamo

    torch._dynamo.reset()
    model = build_small(paths[0]).eval()
    images = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expect = model(images, mode='tensor')
        got = torch.compile(lambda x: model(x, mode='tensor'), backend='eager',
                            fullgraph=True)(images)
    assert torch.equal(got, expect)


# one model group per backbone family with LRF-Dyn: every custom autograd function of mmlrf
# (spike codes, spike convs, LIF surrogates, the chunked scan) is on one of these paths
TRAIN_COMPILE_GROUPS = [g for g in MODEL_GROUPS if any(
    key in g[0] for key in ('fpn_sdtv3-tiny-lrfdyn', 'spikformer-8-512-lrfdyn',
                            'qkformer-10-384-lrfdyn'))]


@pytest.mark.parametrize('paths', TRAIN_COMPILE_GROUPS, ids=lambda g: rel(g[0]))
def test_training_traces_into_one_graph(paths):
    """Training under ``torch.compile``: the forward and its backward trace whole
    (``fullgraph=True``; AOTAutograd without a code generator) and give the eager loss and
    gradients (up to float summation order in the traced backward)."""
    import torch._dynamo

    assert len(TRAIN_COMPILE_GROUPS) == 3
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_small(paths[0]).train()
    images = torch.rand(2, 3, SIZE, SIZE)

    def loss(x):
        return model(x, mode='tensor').square().mean()

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        value = fn(images)
        value.backward()
        return value.detach(), [p.grad for p in model.parameters()]
    expect, expect_grads = loss_and_grads(loss)
    got, got_grads = loss_and_grads(torch.compile(loss, backend='aot_eager', fullgraph=True))
    assert torch.equal(got, expect)
    scale = max(g.abs().max() for g in expect_grads)
    for a, b in zip(got_grads, expect_grads):
        assert (a - b).abs().max() <= 1e-5 * scale


HEADING = '## Using mmlrf backbones in your own configs'


def _docs_example() -> str:
    """The first python block under :data:`HEADING` in the README or a page of docs/."""
    pages = [osp.join(ROOT, 'README.md')] + sorted(glob.glob(osp.join(ROOT, 'docs', '*.md')))
    for page in pages:
        with open(page) as f:
            text = f.read()
        if HEADING in text:
            section = text.split(HEADING, 1)[1]
            return re.search(r'```python\n(.*?)```', section, re.S).group(1)
    raise AssertionError(f'no page has the section {HEADING!r}')


def test_docs_example_config_trains(tmp_path):
    """The documentation's copy-paste config ("Using mmlrf backbones in your own configs")
    builds and trains, widths shrunk."""
    example = tmp_path / 'example_from_docs.py'
    example.write_text(_docs_example())
    cfg = Config.fromfile(example)
    assert cfg.model.backbone.type == 'Spikformer' and cfg.model.neck.type == 'MultiLevelNeck'
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.auxiliary_head.type == 'FCNHead'
    cfg.model.data_preprocessor.size = (32, 32)
    cfg.model.backbone.update(arch=dict(embed_dims=16, depth=8, num_heads=2), T=2, patch_size=8)
    cfg.model.neck.update(in_channels=[16] * 4, out_channels=16)
    cfg.model.decode_head.update(in_channels=[16] * 4, channels=8, pool_scales=(1, 2),
                                 num_classes=3)
    cfg.model.auxiliary_head.update(in_channels=16, channels=8, num_classes=3)
    train_two_iterations(build_segmentor(cfg.model))
