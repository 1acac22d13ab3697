"""Every segmentation config builds its model and trains; ADE20K / Cityscapes / UPerHead configs
run 2 training iterations (+ validation) on generated images in the data sets' real layouts
through mmseg's own ADE20KDataset / CityscapesDataset."""
import copy
import glob
import os.path as osp

import mmlrf  # noqa: F401  (first: compat fixes + registration)
import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in p.split(osp.sep) and osp.sep + 'imagenet' + osp.sep not in p)
# Reduced widths and depths, same component types: the full-width channel wiring is checked
# separately.
SMALL_BACKBONE = {
    'SDTV3': dict(arch=None, embed_dims=[16, 32, 32, 32], depths=(1, 1)),
    'Spikformer': dict(arch=dict(embed_dims=32, depth=2, num_heads=4), T=2),
    'QKFormer': dict(arch=dict(embed_dims=32, depths=(1, 1, 1), num_heads=4), T=2),
}

register_all_modules(init_default_scope=True)


def _rel(path):
    return osp.relpath(path, ROOT)


def _load(path):
    return Config.fromfile(path)


def _head_in_channels(model_cfg):
    """Channels the config wires into the first module after the backbone."""
    if model_cfg.get('neck'):
        return list(model_cfg.neck.in_channels)
    return list(model_cfg.decode_head.in_channels)


SIZE = 32


def shrink_model(model_cfg):
    """Reduced-width copy of ``model_cfg`` (no pretrained init, ``SIZE``-pixel padding) with
    consistent wiring."""
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.data_preprocessor.size = (SIZE, SIZE)
    backbone = model_cfg.backbone
    backbone.update(SMALL_BACKBONE[backbone.type], init_cfg=None)
    channels = list(MODELS.build(backbone).out_channels)
    if model_cfg.get('neck'):
        model_cfg.neck.update(in_channels=channels, out_channels=16)
        model_cfg.decode_head.update(in_channels=[16] * len(channels), channels=16)
    else:  # mmseg head directly on the backbone (UPerHead)
        model_cfg.decode_head.update(in_channels=channels, channels=16)
    if model_cfg.get('auxiliary_head'):
        aux = model_cfg.auxiliary_head
        aux.update(in_channels=channels[aux.in_index], channels=16)
    return model_cfg


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=_rel)
def test_full_width_wiring(path):
    """The full-size backbone's real output channels are what the neck/head expect."""
    cfg = _load(path)
    backbone = copy.deepcopy(cfg.model.backbone)
    backbone.init_cfg = None
    with torch.device('meta'):
        model = MODELS.build(backbone)
    assert list(model.out_channels) == _head_in_channels(cfg.model)
    head = cfg.model.decode_head
    if 'feature_strides' in head:
        assert list(head.feature_strides) == [model.strides[i] for i in head.in_index]


def _model_groups():
    """Configs grouped by their reduced-width model config: the forward/backward computation is
    a function of that config only, so one run per group covers every config in it."""
    groups = {}
    for path in SEG_CONFIGS:
        model_cfg = shrink_model(_load(path).model)
        groups.setdefault(Config(dict(model=model_cfg)).pretty_text, []).append(path)
    return sorted(groups.values())


MODEL_GROUPS = _model_groups()


def test_groups_cover_every_config():
    assert sorted(p for g in MODEL_GROUPS for p in g) == SEG_CONFIGS
    assert len(SEG_CONFIGS) >= 20


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=lambda g: '+'.join(map(_rel, g)))
def test_forward_backward(paths):
    """Each config builds its (reduced-width) model; one forward/backward per model group."""
    from mmlrf.analysis.loading import random_seg_samples

    models = [MODELS.build(shrink_model(_load(p).model)) for p in paths]
    model = models[0].train()
    size = SIZE
    samples = random_seg_samples(2, (size, size), 5)
    data = model.data_preprocessor(
        dict(inputs=list(torch.rand(2, 3, size, size) * 255), data_samples=samples), True)
    losses = model(**data, mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    logits = model(data['inputs'], mode='tensor')
    assert logits.shape[:2] == (2, model.decode_head.num_classes)


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
    import os
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
    cfg = _load(osp.join(ROOT, config))
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


def _randomise_batchnorms(model, seed=0):
    """Eval statistics and affine parameters far from the identity, so folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                shape = m.running_mean.shape
                m.running_mean.copy_(0.2 * torch.randn(shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(shape, generator=gen))
                m.weight.copy_(0.5 + torch.rand(shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(shape, generator=gen))


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=lambda g: '+'.join(map(_rel, g)))
def test_fuse_conv_bn_keeps_the_function(paths):
    """``FuseConvBNHook`` (mmcv's sibling-order fusion) folds every BN that follows a conv, in
    every model family, and leaves the eval-mode output unchanged: mmlrf registers each BN right
    after its conv. Only the BNs after Spikformer's transposed convs stay."""
    from mmlrf.backbones.spikformer import SpikingDeconv
    from mmlrf.hooks import FuseConvBNHook, count_batchnorms

    model = MODELS.build(shrink_model(_load(paths[0]).model)).eval()
    _randomise_batchnorms(model)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expect = model(images, mode='tensor')
    assert count_batchnorms(model) > 0
    runner = type('Runner', (), dict(model=model))()
    FuseConvBNHook().before_test(runner)
    kept = [m for m in model.modules() if isinstance(m, SpikingDeconv)]
    assert count_batchnorms(model) == len(kept)
    with torch.no_grad():
        got = model(images, mode='tensor')
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=lambda g: '+'.join(map(_rel, g)))
def test_lean_inference_keeps_the_function(paths):
    """Inference (autograd off: spikes of temporaries in place, and with the spiking FPN the
    neck and head releasing the maps they read and running their 3×3 convs over row strips,
    as do SDT-V3's conv blocks) gives exactly the recorded forward's output, in every model
    family. Every spiking-FPN config turns the release on, every SDT-V3 one the strips."""
    model_cfg = shrink_model(_load(paths[0]).model)
    model = MODELS.build(model_cfg).eval()
    _randomise_batchnorms(model)
    if model_cfg.get('neck', {}).get('type') == 'SpikingFPN':
        assert model.neck.release_inputs and model.decode_head.release_inputs
    if model_cfg.backbone.type == 'SDTV3':
        assert model.backbone.ConvBlock1_1[0].strips
    images = torch.rand(2, 3, SIZE, SIZE)
    recorded = model(images.clone().requires_grad_(), mode='tensor')
    with torch.no_grad():
        got = model(images, mode='tensor')
    assert torch.equal(got, recorded.detach())


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=lambda g: '+'.join(map(_rel, g)))
def test_channels_last_keeps_the_function(paths):
    """``ChannelsLastHook`` stores every conv weight channels-last, the activations follow, and
    the eval-mode output is unchanged up to float rounding, in every model family."""
    from mmlrf.hooks import ChannelsLastHook

    model = MODELS.build(shrink_model(_load(paths[0]).model)).eval()
    _randomise_batchnorms(model)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expect = model(images, mode='tensor')
    runner = type('Runner', (), dict(model=model))()
    ChannelsLastHook().before_test(runner)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         for m in convs)
    with torch.no_grad():
        got = model(images, mode='tensor')
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_hook_compiles_the_inference():
    """``CompileHook`` routes mmseg's ``predict`` through the compiled ``encode_decode`` (a graph
    is compiled at the first batch) and keeps the logits up to float rounding."""
    import torch._dynamo
    from mmseg.structures import SegDataSample
    from torch._dynamo.utils import counters

    from mmlrf.hooks import CompileHook, compile_segmentor

    torch._dynamo.reset()
    model = MODELS.build(shrink_model(_load(osp.join(
        ROOT, 'configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')).model))
    model.eval()
    _randomise_batchnorms(model)
    images = torch.rand(1, 3, 32, 32)
    meta = dict(img_shape=(32, 32), ori_shape=(32, 32), pad_shape=(32, 32))
    with torch.no_grad():
        expect = model.predict(images, [SegDataSample(metainfo=meta)])[0].seg_logits.data
    runner = type('Runner', (), dict(model=model))()
    CompileHook().before_test(runner)
    graphs = counters['stats']['unique_graphs']
    with torch.no_grad():
        got = model.predict(images, [SegDataSample(metainfo=meta)])[0].seg_logits.data
    assert counters['stats']['unique_graphs'] > graphs
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match='encode_decode'):
        compile_segmentor(torch.nn.Linear(2, 2))
    inference_only = torch.nn.Linear(2, 2)
    inference_only.encode_decode = inference_only.forward
    with pytest.raises(TypeError, match='no loss method'):
        compile_segmentor(inference_only, train=True)


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=lambda g: '+'.join(map(_rel, g)))
def test_inference_traces_into_one_graph(paths):
    """``torch.compile`` captures every model family's inference whole (``fullgraph=True``
    raises at a graph break) and the captured program (Dynamo's eager backend) gives the eager
    logits."""
    import torch._dynamo

    torch._dynamo.reset()
    model = MODELS.build(shrink_model(_load(paths[0]).model)).eval()
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


@pytest.mark.parametrize('paths', TRAIN_COMPILE_GROUPS, ids=lambda g: _rel(g[0]))
def test_training_traces_into_one_graph(paths):
    """Training under ``torch.compile``: the forward and its backward trace whole
    (``fullgraph=True``; AOTAutograd without a code generator) and give the eager loss and
    gradients (up to float summation order in the traced backward)."""
    import torch._dynamo

    assert len(TRAIN_COMPILE_GROUPS) == 3
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MODELS.build(shrink_model(_load(paths[0]).model)).train()
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

