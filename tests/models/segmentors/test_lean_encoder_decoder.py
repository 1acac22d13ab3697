"""``LeanEncoderDecoder``: mmseg's ``EncoderDecoder`` with lean inference switched at build; the
same predictions as plain inference (bit for bit on the CPU, to float tolerance on CUDA, skipped
without it); training and prediction through mmseg; predictions of the configs' segmentors
independent of the batch, of earlier calls and of the image size."""
import os.path as osp

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmlrf.inference import set_lean_inference
from mmlrf.models.segmentors import LeanEncoderDecoder

from batchnorm_stats import randomise_batchnorms
from devices import needs_cuda
from seg_samples import build_segmentor
from toy_model import ROOT, build_toy_model

TINY_DIMS = [8, 12, 24, 32]


def _tiny_cfg(type_, **kwargs):
    return dict(
        type=type_,
        data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32)),
        backbone=dict(type='SDTV3', embed_dims=TINY_DIMS, layer_scale_init=1.0,
                      drop_path_rate=0.1),
        neck=dict(type='SpikingFPN', in_channels=[4, 8, 12, 32], out_channels=8),
        decode_head=dict(type='SpikingFPNHead', in_channels=[8] * 4, channels=8, num_classes=3,
                         in_index=[0, 1, 2, 3], dropout_ratio=0.1),
        test_cfg=ConfigDict(mode='whole'), **kwargs)


@pytest.mark.parametrize('lean', [True, False, None])
def test_lean_inference_switched_at_build(lean):
    """On by default, in the backbone's conv blocks, the neck, the head and the segmentor's
    ``predict``; off when asked; plain ``EncoderDecoder`` leaves every module off."""
    kwargs = {} if lean is None else dict(lean_inference=lean)
    model = build_segmentor(_tiny_cfg('LeanEncoderDecoder', **kwargs))
    assert isinstance(model, LeanEncoderDecoder) and isinstance(model, EncoderDecoder)
    flags = [m.lean_inference for m in model.modules() if hasattr(m, 'lean_inference')]
    assert len(flags) == 7 and set(flags) == {lean is not False}
    plain = build_segmentor(_tiny_cfg('EncoderDecoder'))
    assert not any(m.lean_inference for m in plain.modules() if hasattr(m, 'lean_inference'))


@pytest.mark.parametrize('type_', ['EncoderDecoder', 'LeanEncoderDecoder'])
def test_segmentor_loss_backward_and_predict_in_mmseg(type_):
    model = build_segmentor(_tiny_cfg(type_))
    samples = []
    for _ in range(2):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, 30, 30))))
        s.set_metainfo(dict(img_shape=(30, 30), ori_shape=(30, 30), pad_shape=(30, 30)))
        samples.append(s)
    x = torch.randn(2, 3, 30, 30)
    losses = model.loss(x, samples)
    losses['decode.loss_ce'].backward()
    assert model.backbone.block3[0].attn.q_conv[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        pred = model.predict(x, samples)
    assert pred[0].pred_sem_seg.data.shape == (1, 30, 30)
    # lean prediction keeps the labels only (mmlrf.inference.predict)
    assert ('seg_logits' in pred[0]) == (type_ == 'EncoderDecoder')


DEVICES = ['cpu', pytest.param('cuda', marks=needs_cuda)]


@pytest.mark.usefixtures('strips_on_small_maps', 'cuda_precision')
@pytest.mark.parametrize('device', DEVICES)
def test_lean_inference_matches_plain_inference(device):
    """The toy LRF-Dyn config (SDT-V3 conv blocks in strips, the FPN releasing its inputs),
    strips on its small maps too, TF32 off: the backbone's maps (before the neck spikes them,
    where a strip's error is not yet rounded away) and the logits. On the CPU bit for bit; cuDNN
    picks its algorithm per shape, so a strip may round differently from the whole map: CUDA is
    held to float tolerance."""
    torch.manual_seed(0)
    model = build_toy_model(device=device)
    randomise_batchnorms(model).eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)).to(device)
    outputs = []
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        for lean in (True, False):
            assert set_lean_inference(model, lean) > 0
            outputs.append([*model.backbone(images.clone()),
                            model(images.clone(), mode='tensor')])
    names = [f'backbone map {i}' for i in range(len(outputs[0]) - 1)] + ['logits']
    for name, lean, plain in zip(names, *outputs):
        if device == 'cpu':
            assert torch.equal(lean, plain), name
            continue
        torch.testing.assert_close(lean, plain, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f'{name}: {m}')


# --------------------------------------------------------------------------- predictions
def _build_from_config(config: str, backbone: dict, neck: dict, head: dict):
    """The shipped config's segmentor (test_cfg, data preprocessor, head) with a tiny backbone,
    BN statistics that make the neurons fire."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    cfg.model.backbone.update(backbone, init_cfg=None)
    cfg.model.neck.update(neck)
    cfg.model.decode_head.update(head)
    model = build_segmentor(cfg.model)
    torch.manual_seed(0)
    model.init_weights()
    for bn in model.modules():  # untrained BN statistics: make the neurons fire at all
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_var.fill_(0.05)
            bn.bias.data.uniform_(-0.5, 1.0)
    return model.eval()


SEGMENTORS = {
    f'sdtv3-{a}': (f'sdtv3/fpn_sdtv3-5m-{a}_8xb2-160k_ade20k-512x512.py',
                   dict(arch=None, embed_dims=[8, 16, 32, 32], num_heads=2),
                   dict(in_channels=[4, 8, 16, 32], out_channels=16),
                   dict(in_channels=[16] * 4, channels=16))
    for a in ('sdsa', 'lrfssa', 'lrfdyn')}
SEGMENTORS['spikformer-lrfdyn'] = (
    'spikformer/fpn_spikformer-8-512-lrfdyn_8xb2-160k_ade20k-512x512.py',
    dict(arch=dict(embed_dims=16, depth=2, num_heads=2), T=2),
    dict(in_channels=[16] * 4, out_channels=16), dict(in_channels=[16] * 4, channels=16))
SEGMENTORS['qkformer-lrfdyn'] = (
    'qkformer/fpn_qkformer-10-384-lrfdyn_8xb2-160k_ade20k-512x512.py',
    dict(arch=dict(embed_dims=16, depths=(1, 1, 1), num_heads=2), T=2),
    dict(in_channels=[4, 8, 16], out_channels=16), dict(in_channels=[16] * 3, channels=16))


@pytest.fixture(scope='module')
def segmentors() -> dict:
    return {name: _build_from_config(*spec) for name, spec in SEGMENTORS.items()}


def _predict(model, images: list, lean: bool = False) -> list:
    """mmseg's ``predict`` of the lean modules; ``lean``: over class chunks, labels only."""
    samples = [SegDataSample(metainfo=dict(img_shape=i.shape[1:], ori_shape=i.shape[1:]))
               for i in images]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), False)
    model.lean_inference = lean
    try:
        with torch.no_grad():
            return model.predict(data['inputs'], data['data_samples'])
    finally:
        model.lean_inference = True


def _images(n: int, size: tuple, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8) for _ in range(n)]


def test_config_mixers_are_the_named_ones(segmentors):
    expected = {'sdtv3-sdsa': 'SSA', 'sdtv3-lrfssa': 'LRFSSA', 'sdtv3-lrfdyn': 'LRFDyn',
                'spikformer-lrfdyn': 'LRFDyn', 'qkformer-lrfdyn': 'LRFDyn'}
    for name, model in segmentors.items():
        mixers = {type(m).__name__ for m in model.backbone.modules()}
        assert expected[name] in mixers and type(model.decode_head).__name__ == 'SpikingFPNHead'
        assert type(model) is LeanEncoderDecoder


@pytest.mark.parametrize('name', sorted(SEGMENTORS))
def test_eval_prediction_same_alone_repeated_and_in_any_batch(segmentors, name):
    """No membrane state leaks between calls; no batch-dependent layout bug (segmentor.predict)."""
    model = segmentors[name]
    a, b, c = _images(3, (32, 48))
    alone = _predict(model, [a])[0]
    again = _predict(model, [a])[0]
    in_batch = [_predict(model, [b, a, c])[1], _predict(model, [a, c])[0]]
    logits = alone.seg_logits.data
    assert logits.std() > 0  # a non-trivial prediction (the test could not see a leak otherwise)
    assert torch.equal(again.seg_logits.data, logits)
    for other in in_batch:
        torch.testing.assert_close(other.seg_logits.data, logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(other.pred_sem_seg.data, alone.pred_sem_seg.data)
    # and a different image gives a different prediction (the model does look at its input)
    assert not torch.equal(_predict(model, [b])[0].seg_logits.data, logits)
    lean = _predict(model, [b, a], lean=True)[1]
    assert 'seg_logits' not in lean
    assert torch.equal(lean.pred_sem_seg.data, alone.pred_sem_seg.data)


@pytest.mark.parametrize('size', [(37, 53), (8, 8), (3, 5), (1, 1)], ids=str)
@pytest.mark.parametrize('name', ['sdtv3-lrfdyn', 'spikformer-lrfdyn', 'qkformer-lrfdyn'])
def test_any_image_size_gives_a_prediction_of_that_size(segmentors, name, size):
    """Sizes not divisible by the total stride (16 / 32), and tiny images down to 1x1: every
    stage rounds its side up, the head resizes to the input (docs/interop.md)."""
    pred = _predict(segmentors[name], _images(1, size))[0]
    assert pred.pred_sem_seg.shape == size and pred.seg_logits.shape == size
    assert torch.isfinite(pred.seg_logits.data).all()
    lean = _predict(segmentors[name], _images(1, size), lean=True)[0]
    assert torch.equal(lean.pred_sem_seg.data, pred.pred_sem_seg.data)


def test_registered():
    assert MODELS.get('LeanEncoderDecoder') is LeanEncoderDecoder
