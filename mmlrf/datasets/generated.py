"""Generated data sets in ADE20K's folder layout: written once, atomically, and loaded as mmseg
data sets that generate themselves on first use.

Layout (as ADE20K's ``ADEChallengeData2016``; ``NAME`` the data set's file prefix)::

    ROOT/images/{training,validation}/NAME_XXXXX.png        RGB images
    ROOT/annotations/{training,validation}/NAME_XXXXX.png   uint8 labels

Images are lossless PNG. A sample generator ``fn(size, seed, split, index)`` returns the RGB
image ``[S, S, 3]`` uint8 and its label map ``[S, S]`` uint8, deterministic in its arguments.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
import tempfile
from collections.abc import Callable

import cv2
import numpy as np
from mmseg.datasets import BaseSegDataset

from ..interop.checkpoint_io import umask

SPLITS = {'training': 0, 'validation': 1}
SampleFn = Callable[[int, int, str, int], tuple[np.ndarray, np.ndarray]]


def write_generated_dataset(out_dir: str, sample_fn: SampleFn, name: str, num_train: int,
                            num_val: int, size: int, seed: int) -> str:
    """Write ``num_train`` and ``num_val`` samples of ``sample_fn`` to ``out_dir`` (module
    layout, files ``<name>_XXXXX.png``) and return ``out_dir``.

    The data set is written to a temporary sibling folder, given the permissions the user's
    umask gives a new folder, and renamed into place: a reader never sees it half-written, and
    of two processes racing to write it one wins and the other keeps the winner's.

    Raises:
        ValueError: ``num_train`` or ``num_val`` below 1, ``size`` below 16.
        FileExistsError: ``out_dir`` exists.
    """
    for arg, value, low in (('num_train', num_train, 1), ('num_val', num_val, 1),
                            ('size', size, 16)):
        if value < low:
            raise ValueError(f'{arg} must be >= {low}, got {value}')
    if osp.exists(out_dir):
        raise FileExistsError(f'{name} data set root {out_dir!r} already exists')
    parent = osp.dirname(osp.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{name}-', dir=parent)
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 -> what os.makedirs would give
    try:
        for split, count in (('training', num_train), ('validation', num_val)):
            for kind in ('images', 'annotations'):
                os.makedirs(osp.join(tmp, kind, split))
            for i in range(count):
                image, label = sample_fn(size, seed, split, i)
                cv2.imwrite(osp.join(tmp, 'images', split, f'{name}_{i:05d}.png'),
                            image[..., ::-1])
                cv2.imwrite(osp.join(tmp, 'annotations', split, f'{name}_{i:05d}.png'), label)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not osp.isdir(out_dir):  # lost a race to another process: theirs is kept
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class GeneratedSegDataset(BaseSegDataset):
    """An mmseg data set that writes itself under ``data_root`` on first use if absent.

    Subclasses set ``METAINFO``, :attr:`make_dataset` (``fn(out_dir, **generate)``) and
    :attr:`missing_hint` (how to make the data set, for the error on a missing root).

    Args:
        data_root (str): data set root.
        generate (dict | None): keyword arguments of :attr:`make_dataset` used when
            ``data_root`` does not exist; None disables generation (a missing root then raises
            FileNotFoundError).
        **kwargs: passed to :class:`mmseg.datasets.BaseSegDataset` (PNG images and labels,
            ``reduce_zero_label=True`` by default).
    """
    make_dataset: Callable[..., str]
    missing_hint: str = ''

    def __init__(self, data_root: str, generate: dict | None = None, img_suffix: str = '.png',
                 seg_map_suffix: str = '.png', reduce_zero_label: bool = True,
                 **kwargs) -> None:
        if not osp.isdir(data_root):
            if generate is None:
                raise FileNotFoundError(f'{type(self).__name__} root {data_root!r} not found; '
                                        + self.missing_hint.format(root=data_root))
            type(self).make_dataset(data_root, **generate)
        super().__init__(data_root=data_root, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)
