"""``LoadImageFromFileChecked``: the documented channel rule (gray, alpha, 16 bit), bad or
missing image files in a data set named in the error, options checked at build time."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.registry import DefaultScope

import mmlrf  # noqa: F401
import mmlrf.datasets.loading  # noqa: F401  (LoadImageFromFileChecked)


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
