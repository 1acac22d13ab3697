"""The toy texture data set: determinism, ADE20K layout, colour-blind classes, first-use
generation."""
import os
import os.path as osp

import mmlrf  # noqa: F401
import cv2
import numpy as np
import pytest

from mmseg.utils import register_all_modules

from mmlrf.datasets import TOY_CLASSES, ToyTextureDataset, make_toy_dataset, make_toy_sample

register_all_modules(init_default_scope=True)


def test_sample_is_deterministic_and_seed_dependent():
    a_img, a_lbl = make_toy_sample(32, 0, 'training', 3)
    b_img, b_lbl = make_toy_sample(32, 0, 'training', 3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
    c_img, _ = make_toy_sample(32, 1, 'training', 3)
    d_img, _ = make_toy_sample(32, 0, 'validation', 3)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)
    assert a_img.shape == (32, 32, 3) and a_img.dtype == np.uint8
    assert set(np.unique(a_lbl)) <= set(range(1, len(TOY_CLASSES) + 1))  # ADE: 0 = unlabelled


def test_classes_are_not_separable_by_colour():
    """Every class's mean colour is within 15 grey levels of the overall mean (a class-coloured
    generator would differ by ~50+), while every class covers a fair share of the pixels."""
    sums = np.zeros((len(TOY_CLASSES), 3))
    counts = np.zeros(len(TOY_CLASSES))
    for i in range(200):
        img, lbl = make_toy_sample(24, 0, 'training', i)
        for c in range(len(TOY_CLASSES)):
            mask = lbl == c + 1
            sums[c] += img[mask].sum(0)
            counts[c] += mask.sum()
    assert (counts > 0.1 * counts.sum() / len(TOY_CLASSES)).all()
    means = sums / counts[:, None]
    overall = sums.sum(0) / counts.sum()
    assert np.abs(means - overall).max() < 15


def test_horizontal_stripes_are_row_constant():
    """Class 'horizontal stripes' (label 1) is constant along rows up to the pixel noise."""
    img, lbl = make_toy_sample(64, 0, 'training', 0)
    rows = [r for r in range(64) if (lbl[r] == 1).sum() >= 8]
    if not rows:
        pytest.skip('no horizontal-stripe region in this sample')
    spread = [img[r][lbl[r] == 1].astype(float).std(0).max() for r in rows]
    assert max(spread) < 30  # noise sigma 8, vs ~>= 40 between the two colours


def test_dataset_layout_and_determinism(tmp_path):
    a = make_toy_dataset(str(tmp_path / 'a'), num_train=3, num_val=2, size=32, seed=5)
    b = make_toy_dataset(str(tmp_path / 'b'), num_train=3, num_val=2, size=32, seed=5)
    for split, n in (('training', 3), ('validation', 2)):
        for kind in ('images', 'annotations'):
            names = sorted(os.listdir(osp.join(a, kind, split)))
            assert names == [f'toy_{i:05d}.png' for i in range(n)]
            for name in names:
                with open(osp.join(a, kind, split, name), 'rb') as fa, \
                        open(osp.join(b, kind, split, name), 'rb') as fb:
                    assert fa.read() == fb.read()
    img = cv2.imread(osp.join(a, 'images', 'training', 'toy_00000.png'), cv2.IMREAD_UNCHANGED)
    ann = cv2.imread(osp.join(a, 'annotations', 'training', 'toy_00000.png'),
                     cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32, 3) and ann.shape == (32, 32) and ann.dtype == np.uint8
    with pytest.raises(FileExistsError):
        make_toy_dataset(a)
    with pytest.raises(ValueError, match='num_train'):
        make_toy_dataset(str(tmp_path / 'c'), num_train=0)


def test_dataset_class_generates_on_first_use(tmp_path):
    root = str(tmp_path / 'toy')
    with pytest.raises(FileNotFoundError, match='make_toy_dataset'):
        ToyTextureDataset(data_root=root, data_prefix=dict(img_path='images/training',
                                                           seg_map_path='annotations/training'))
    ds = ToyTextureDataset(data_root=root, generate=dict(num_train=4, num_val=2, size=32),
                           data_prefix=dict(img_path='images/validation',
                                            seg_map_path='annotations/validation'),
                           pipeline=[dict(type='LoadImageFromFile'),
                                     dict(type='LoadAnnotations', reduce_zero_label=True)])
    assert len(ds) == 2 and ds.metainfo['classes'] == TOY_CLASSES
    seg = ds[0]['gt_seg_map']
    _, raw = make_toy_sample(32, 0, 'validation', 0)
    assert np.array_equal(seg, raw.astype(np.int64) - 1)  # reduce_zero_label: 1..5 -> 0..4
