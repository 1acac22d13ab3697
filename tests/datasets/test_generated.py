"""Generated data sets (mmlrf/datasets/generated.py): one writer and one self-generating data
set class behind the toy texture and cue data sets."""
import os

import mmlrf  # noqa: F401
import pytest

from mmlrf.datasets import ToyTextureDataset, make_toy_dataset
from mmlrf.datasets.generated import write_generated_dataset
from mmlrf.datasets.toy_cue import ToyCueDataset, make_cue_dataset

MAKERS = [(make_toy_dataset, ToyTextureDataset, 'toy'), (make_cue_dataset, ToyCueDataset, 'cue')]


@pytest.mark.parametrize('make, _, name', MAKERS)
@pytest.mark.parametrize('mask', [0o022, 0o077])
def test_written_folders_follow_the_umask(tmp_path, make, _, name, mask):
    old = os.umask(mask)
    try:
        root = make(str(tmp_path / 'data'), num_train=1, num_val=1, size=16)
    finally:
        os.umask(old)
    for folder in (root, os.path.join(root, 'images', 'training')):
        assert os.stat(folder).st_mode & 0o777 == 0o777 & ~mask
    assert sorted(os.listdir(os.path.join(root, 'annotations', 'validation'))) == [
        f'{name}_00000.png']
    assert [p for p in os.listdir(tmp_path) if p.startswith('.')] == []  # no temporary left


@pytest.mark.parametrize('make, _, name', MAKERS)
def test_an_existing_root_or_bad_sizes_are_refused(tmp_path, make, _, name):
    (tmp_path / 'data').mkdir()
    with pytest.raises(FileExistsError, match=f"{name} data set root '.*data' already exists"):
        make(str(tmp_path / 'data'))
    for kwargs, match in ((dict(num_train=0), 'num_train must be >= 1, got 0'),
                          (dict(num_val=0), 'num_val must be >= 1, got 0'),
                          (dict(size=8), 'size must be >= 16, got 8')):
        with pytest.raises(ValueError, match=match):
            make(str(tmp_path / 'other'), **kwargs)
    assert not (tmp_path / 'other').exists()


@pytest.mark.parametrize('_, dataset, name', MAKERS)
def test_a_missing_root_without_generate_names_the_root_and_the_way(tmp_path, _, dataset, name):
    root = str(tmp_path / 'none')
    hint = 'make_toy_dataset.py' if name == 'toy' else '`generate`'
    with pytest.raises(FileNotFoundError,
                       match=f"{dataset.__name__} root '{root}' not found; .*{hint}"):
        dataset(data_root=root)
    assert not os.path.exists(root)


def test_the_writer_stores_what_the_sample_function_returns(tmp_path):
    import cv2
    import numpy as np

    def sample(size, seed, split, index):
        image = np.full((size, size, 3), (10 * index, seed, 200), np.uint8)
        return image, np.full((size, size), 1 + (split == 'validation'), np.uint8)

    root = write_generated_dataset(str(tmp_path / 'd'), sample, 'x', 2, 1, 16, 7)
    image = cv2.imread(os.path.join(root, 'images', 'training', 'x_00001.png'))[..., ::-1]
    assert image[0, 0].tolist() == [10, 7, 200]
    label = cv2.imread(os.path.join(root, 'annotations', 'validation', 'x_00000.png'), 0)
    assert label.shape == (16, 16) and (label == 2).all()
