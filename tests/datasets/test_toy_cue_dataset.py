"""The cue task: determinism, a label that no local window decides, the cue's place in raster
order, first-use generation in ADE20K's layout."""
import os
import os.path as osp

import mmlrf  # noqa: F401
import cv2
import numpy as np
import pytest
from mmseg.utils import register_all_modules

from mmlrf.datasets.toy_cue import (CUE_CLASSES, ToyCueDataset, make_cue_dataset,
                                    make_cue_sample)

register_all_modules(init_default_scope=True)


def cue_mask(img):
    """The saturated pixels: the image is grey (channels within noise) everywhere else."""
    img = img.astype(int)
    return (img.max(-1) - img.min(-1)) > 100


def test_sample_is_deterministic_and_seed_dependent():
    a_img, a_lbl = make_cue_sample(64, 0, 'training', 3)
    b_img, b_lbl = make_cue_sample(64, 0, 'training', 3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lbl, b_lbl)
    assert not np.array_equal(a_img, make_cue_sample(64, 1, 'training', 3)[0])
    assert not np.array_equal(a_img, make_cue_sample(64, 0, 'validation', 3)[0])
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8 and a_lbl.dtype == np.uint8
    assert set(np.unique(a_lbl)) <= set(range(1, len(CUE_CLASSES) + 1))  # ADE: 0 = unlabelled


@pytest.mark.parametrize('index', range(4))
def test_the_same_target_takes_the_class_of_a_distant_cue(index):
    """One sample with each cue colour: the images differ only on the 8×8 cue square, yet every
    target pixel changes class (2..5: one per cue) and sees no difference within 15 pixels
    of it, so no window of that radius around a target pixel determines its label."""
    samples = [make_cue_sample(64, 0, 'training', index, cue=c) for c in range(4)]
    (img0, lbl0), rest = samples[0], samples[1:]
    cue = cue_mask(img0)
    assert cue.sum() == 64
    target = (lbl0 > 1) & ~cue
    assert target.sum() >= 19 * 19 and set(np.unique(lbl0[target])) == {2}
    near_cue = cv2.dilate(cue.astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    assert not (target & near_cue).any()
    for c, (img, lbl) in enumerate(rest, start=1):
        differ = (img != img0).any(-1)
        assert differ.any() and not (differ & ~cue).any()
        assert set(np.unique(lbl[target])) == {2 + c}
        assert np.array_equal(lbl[~target & ~cue], lbl0[~target & ~cue])


def test_the_cue_lies_on_every_side_of_the_target():
    """Over 60 images the cue starts below the target's first row (a causal raster scan reaches
    the target's first tokens before it) in many, above it in many; all four cues occur."""
    after = before = 0
    classes = []
    for i in range(60):
        img, lbl = make_cue_sample(64, 0, 'training', i)
        cue = cue_mask(img)
        target = (lbl > 1) & ~cue
        first_cue, first_target = np.nonzero(cue)[0].min(), np.nonzero(target)[0].min()
        after += first_cue > first_target
        before += first_cue < first_target
        classes.append(int(lbl[target][0]))
    assert after >= 15 and before >= 15
    assert set(classes) == {2, 3, 4, 5}


def test_dataset_generates_on_first_use_in_ade_layout(tmp_path):
    root = str(tmp_path / 'cue')
    prefix = dict(img_path='images/validation', seg_map_path='annotations/validation')
    with pytest.raises(FileNotFoundError, match='generate'):
        ToyCueDataset(data_root=root, data_prefix=prefix)
    ds = ToyCueDataset(data_root=root, generate=dict(num_train=2, num_val=3, size=32),
                       data_prefix=prefix, pipeline=[dict(type='LoadImageFromFile'),
                                                     dict(type='LoadAnnotations',
                                                          reduce_zero_label=True)])
    assert len(ds) == 3 and ds.metainfo['classes'] == CUE_CLASSES
    for kind, split, n in (('images', 'training', 2), ('annotations', 'validation', 3)):
        assert sorted(os.listdir(osp.join(root, kind, split))) == [
            f'cue_{i:05d}.png' for i in range(n)]
    img, raw = make_cue_sample(32, 0, 'validation', 1)
    assert np.array_equal(ds[1]['img'][..., ::-1], img)  # BGR on disk, lossless
    assert np.array_equal(ds[1]['gt_seg_map'], raw.astype(np.int64) - 1)  # 1..5 -> 0..4
    with pytest.raises(FileExistsError):
        make_cue_dataset(root)
    with pytest.raises(ValueError, match='size'):
        make_cue_dataset(str(tmp_path / 'other'), size=8)
