"""Robustness: checkpoint files (atomic save, truncated file, Runner resume), build-time option
validation, image files (channels, corrupt / missing files), image sizes, slide inference with the
Cityscapes config, eval-mode state and batch independence, numerics (long high-lr training, bf16).
"""
from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

import mmlrf  # noqa: F401
import mmlrf.datasets.loading  # noqa: F401  (LoadImageFromFileChecked)
from mmengine.fileio import LocalBackend
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
from mmlrf.interop import ATOMIC_BACKEND, CorruptCheckpointError
from mmseg.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    'SDTV3': dict(type='SDTV3', arch=None, embed_dims=[8, 16, 32, 32], num_heads=2),
    'Spikformer': dict(type='Spikformer', arch=dict(embed_dims=16, depth=2, num_heads=2), T=2,
                       patch_size=8, out_indices=(0, 0, 1, 1)),
    'QKFormer': dict(type='QKFormer', arch=dict(embed_dims=16, depths=(1, 1, 1), num_heads=2), T=2),
}


def _good_and_half(path: Path) -> tuple[dict, bytes]:
    state = {'state_dict': {'w': torch.arange(2000.)}, 'meta': {'iter': 1}}
    save_checkpoint(state, str(path))
    data = path.read_bytes()
    return state, data


def _failing_write(monkeypatch, fraction: float = 0.5) -> None:
    """Make the next binary file write store only ``fraction`` of its bytes, then fail (disk full)."""
    real_open = builtins.open

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:int(len(data) * fraction)])
            raise OSError(28, 'No space left on device')

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWriter(f) if 'w' in mode and 'b' in mode else f

    monkeypatch.setattr(builtins, 'open', fake_open)
    import os
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, mode='r', *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k))
                        if 'w' in mode else real_fdopen(fd, mode, *a, **k))


@pytest.mark.parametrize('backend,survives', [(None, False), (ATOMIC_BACKEND, True)])
def test_interrupted_save_never_clobbers_last_good_checkpoint(tmp_path, monkeypatch, backend,
                                                              survives):
    path = tmp_path / 'iter_10.pth'
    good, good_bytes = _good_and_half(path)
    args = None if backend is None else dict(backend=backend)
    with monkeypatch.context() as m:
        _failing_write(m)
        with pytest.raises(OSError):
            save_checkpoint({'state_dict': {'w': torch.zeros(2000)}}, str(path), backend_args=args)
    assert (path.read_bytes() == good_bytes) is survives  # plain mmengine: truncated in place
    if survives:
        assert torch.equal(_load_checkpoint(str(path))['state_dict']['w'], good['state_dict']['w'])
        assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_10.pth']  # no temp litter


def test_truncated_checkpoint_raises_clear_error(tmp_path):
    path = tmp_path / 'iter_20.pth'
    _, data = _good_and_half(path)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match='iter_20.pth.*truncated'):
        _load_checkpoint(str(path))
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(CorruptCheckpointError, match='iter_20.pth'):
        _load_checkpoint(str(path))


def test_atomic_backend_is_a_local_backend():
    from mmengine.fileio import get_file_backend
    backend = get_file_backend('x.pth', backend_args=dict(backend=ATOMIC_BACKEND))
    assert isinstance(backend, LocalBackend) and type(backend).__name__ == 'AtomicLocalBackend'


@pytest.mark.parametrize('name', sorted(TINY))
def test_eval_prediction_independent_of_batch_and_repetition(name):
    torch.manual_seed(0)
    model = MODELS.build(TINY[name]).eval()
    images = torch.rand(3, 3, 24, 24) * 4 - 2
    with torch.no_grad():
        alone = model(images[:1])
        again = model(images[:1])
        batch = model(torch.cat([images[2:], images[:1], images[1:2]]))
    for a, r, b in zip(alone, again, batch):
        assert torch.equal(a, r)  # no state carried over from the previous call
        torch.testing.assert_close(b[1:2], a, rtol=1e-5, atol=1e-5)  # position/batch invariant


BAD_OPTIONS = [
    ('SDTV3', dict(arch='XXL', embed_dims=None), 'arch'),
    ('SDTV3', dict(out_indices=(5, )), 'out_indices'),
    ('SDTV3', dict(num_heads=7), 'num_heads'),
    ('Spikformer', dict(arch='8-999'), 'arch'),
    ('Spikformer', dict(patch_size=5), 'patch_size'),
    ('Spikformer', dict(T=0), 'T'),
    ('QKFormer', dict(arch='3-3'), 'arch'),
    ('QKFormer', dict(T=-1), 'T'),
    ('QKFormer', dict(out_indices=(7, )), 'out_indices'),
    ('SDTV3', dict(attn=dict(type='SSA', order='vq')), 'order'),
    ('SDTV3', dict(attn=dict(type='LRFSSA', dilations=(0, ))), 'dilations'),
    ('SDTV3', dict(neuron=dict(type='Sigmoid')), 'neuron'),
]


@pytest.mark.parametrize('name,bad,option', BAD_OPTIONS,
                         ids=[f'{n}-{o}' for n, _, o in BAD_OPTIONS])
def test_invalid_option_raises_value_error_naming_it_at_build_time(name, bad, option):
    with pytest.raises(ValueError, match=option):
        MODELS.build({**TINY[name], **bad})


# --------------------------------------------------------------------------- image files
def _write(path: Path, image) -> str:
    import cv2
    assert cv2.imwrite(str(path), image)
    return str(path)


def _load(path: str, **kwargs) -> dict:
    from mmseg.registry import TRANSFORMS
    return TRANSFORMS.build(dict(type='LoadImageFromFileChecked', **kwargs))(dict(img_path=path))


def test_image_channels_follow_the_documented_rule(tmp_path):
    """Gray -> copied into B, G, R; 4 channels -> alpha dropped; 16 bit -> value // 256."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 7), np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), np.uint8)
    gray16 = rng.integers(0, 65536, (5, 7), np.uint16)
    Image.fromarray(gray, 'L').save(tmp_path / 'gray.png')  # written by PIL, read by OpenCV
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
    _write(tmp_path / 'gray16.png', gray16)
    for backend in ('cv2', 'pillow'):
        img = _load(str(tmp_path / 'gray.png'), imdecode_backend=backend)['img']
        assert img.shape == (5, 7, 3) and img.dtype == np.uint8
        assert all((img[..., c] == gray).all() for c in range(3))
        out = _load(str(tmp_path / 'rgba.png'), imdecode_backend=backend)
        assert out['img'].shape == (5, 7, 3) and out['ori_shape'] == (5, 7)
        assert (out['img'] == rgba[..., 2::-1]).all()  # BGR of the RGB part, alpha ignored
    img16 = _load(str(tmp_path / 'gray16.png'))['img']
    assert img16.dtype == np.uint8 and (img16[..., 1] == gray16 // 256).all()


def _seg_dataset(root: Path, n: int = 3):
    import numpy as np
    from mmseg.datasets import BaseSegDataset
    for sub in ('img', 'ann'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(root / 'img' / f'{i}.png', rng.integers(0, 256, (8, 8, 3), np.uint8))
        _write(root / 'ann' / f'{i}.png', rng.integers(0, 2, (8, 8), np.uint8))
    with DefaultScope.overwrite_default_scope('mmseg'):  # the pipeline's registry
        return BaseSegDataset(
            data_root=str(root), data_prefix=dict(img_path='img', seg_map_path='ann'),
            img_suffix='.png', seg_map_suffix='.png', metainfo=dict(classes=('a', 'b')),
            serialize_data=False, lazy_init=False,
            pipeline=[dict(type='LoadImageFromFileChecked'), dict(type='LoadAnnotations'),
                      dict(type='PackSegInputs')])


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'text', 'missing'])
def test_bad_image_file_in_dataset_names_the_file(tmp_path, damage):
    from mmlrf.datasets.loading import ImageFileError
    dataset = _seg_dataset(tmp_path)
    assert dataset[0]['inputs'].shape == (3, 8, 8)
    bad = tmp_path / 'img' / '1.png'
    data = bad.read_bytes()
    if damage == 'missing':
        bad.unlink()
    else:
        bad.write_bytes({'truncated': data[:len(data) // 3], 'empty': b'',
                         'text': b'hello, not a PNG'}[damage])
    error = FileNotFoundError if damage == 'missing' else ImageFileError
    with pytest.raises(error, match=r"image file '.*img/1\.png'"):
        dataset[1]


def test_loader_options_checked_at_build_time():
    from mmseg.registry import TRANSFORMS
    with pytest.raises(ValueError, match=r"imdecode_backend must be one of \('cv2', 'pillow'\)"):
        TRANSFORMS.build(dict(type='LoadImageFromFileChecked', imdecode_backend='turbojpeg'))
    with pytest.raises(TypeError):  # 3-channel output is the contract: no color_type option
        TRANSFORMS.build(dict(type='LoadImageFromFileChecked', color_type='grayscale'))


# --------------------------------------------------------------------------- segmentors
def _build_from_config(config: str, backbone: dict, neck: dict, head: dict):
    """The shipped config's segmentor (test_cfg, data preprocessor, head) with a tiny backbone."""
    from mmengine.config import Config
    cfg = Config.fromfile(ROOT / 'configs' / config)
    cfg.model.backbone.update(backbone, init_cfg=None)
    cfg.model.neck.update(neck)
    cfg.model.decode_head.update(head)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    torch.manual_seed(0)
    model.init_weights()
    for bn in model.modules():  # untrained BN statistics: make the neurons fire at all
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_var.fill_(0.05)
            bn.bias.data.uniform_(-0.5, 1.0)
    return cfg, model.eval()


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
    return {name: _build_from_config(*spec)[1] for name, spec in SEGMENTORS.items()}


def _predict(model, images: list) -> list:
    from mmseg.structures import SegDataSample
    samples = [SegDataSample(metainfo=dict(img_shape=i.shape[1:], ori_shape=i.shape[1:]))
               for i in images]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), False)
    with torch.no_grad():
        return model.predict(data['inputs'], data['data_samples'])


def _images(n: int, size: tuple, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8) for _ in range(n)]


def test_config_mixers_are_the_named_ones(segmentors):
    expected = {'sdtv3-sdsa': 'SSA', 'sdtv3-lrfssa': 'LRFSSA', 'sdtv3-lrfdyn': 'LRFDyn',
                'spikformer-lrfdyn': 'LRFDyn', 'qkformer-lrfdyn': 'LRFDyn'}
    for name, model in segmentors.items():
        mixers = {type(m).__name__ for m in model.backbone.modules()}
        assert expected[name] in mixers and type(model.decode_head).__name__ == 'SpikingFPNHead'


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


@pytest.mark.parametrize('size', [(37, 53), (8, 8), (3, 5), (1, 1)], ids=str)
@pytest.mark.parametrize('name', ['sdtv3-lrfdyn', 'spikformer-lrfdyn', 'qkformer-lrfdyn'])
def test_any_image_size_gives_a_prediction_of_that_size(segmentors, name, size):
    """Sizes not divisible by the total stride (16 / 32), and tiny images down to 1x1: every
    stage rounds its side up, the head resizes to the input [decision, docs/interop.md]."""
    pred = _predict(segmentors[name], _images(1, size))[0]
    assert pred.pred_sem_seg.shape == size and pred.seg_logits.shape == size
    assert torch.isfinite(pred.seg_logits.data).all()


def test_cityscapes_slide_inference_full_frame(tmp_path):
    """One 2048x1024 frame through the Cityscapes config's test pipeline and slide test_cfg, with
    the backbone narrowed to [8, 16, 32, 32] (full size: see docs/interop.md for the time)."""
    import numpy as np
    from mmengine.dataset import Compose
    cfg, model = _build_from_config(
        'sdtv3/fpn_sdtv3-19m-lrfdyn_8xb2-80k_cityscapes-512x1024.py',
        dict(arch=None, embed_dims=[8, 16, 32, 32], num_heads=2),
        dict(in_channels=[4, 8, 16, 32], out_channels=16), dict(in_channels=[16] * 4, channels=16))
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 1024), stride=(341, 683))
    rng = np.random.default_rng(0)
    frame = _write(tmp_path / 'frame_leftImg8bit.png', rng.integers(0, 256, (1024, 2048, 3), np.uint8))
    label = _write(tmp_path / 'frame_gtFine_labelTrainIds.png',
                   rng.integers(0, 19, (1024, 2048), np.uint8))
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
    assert torch.isfinite(pred.seg_logits.data).all()
