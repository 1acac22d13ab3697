"""A procedurally generated texture-segmentation data set in the ADE20K folder layout.

Every image is a Voronoi partition into a few regions; each region is filled with one of the
texture classes below, drawn in two colours sampled from the *same* distribution for every class.
A pixel's colour therefore says nothing about its class: recognising it needs the local
texture context (orientation, periodicity, blob shape) that spiking attention has to aggregate.

Layout (as ADE20K's ``ADEChallengeData2016``)::

    ROOT/images/{training,validation}/toy_XXXXX.png        RGB images
    ROOT/annotations/{training,validation}/toy_XXXXX.png   uint8 labels

Labels follow ADE20K's ``reduce_zero_label`` convention: 0 means "unlabelled" (ignored) and
class ``i`` of :data:`TOY_CLASSES` is stored as ``i + 1``; :class:`ToyTextureDataset` loads them
with ``reduce_zero_label=True``. Images are lossless PNG (ADE20K uses JPEG, which would blur
one-pixel textures). Generation is deterministic: image ``i`` of a split depends only on
``(seed, split, i, size)``.
"""
from __future__ import annotations

import numpy as np
from mmseg.registry import DATASETS

from .generated import SPLITS, GeneratedSegDataset, write_generated_dataset

TOY_CLASSES = ('horizontal stripes', 'vertical stripes', 'diagonal stripes', 'checkerboard',
               'dots')
TOY_PALETTE = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]]


def _texture(cls: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean foreground mask ``[H, W]`` of texture class ``cls`` with a random period/phase."""
    py, px = rng.integers(0, 8, size=2)
    y, x = yy + py, xx + px
    if cls in (0, 1, 2):
        period = int(rng.integers(4, 7))
        coord = (y, x, x + y)[cls]
        return (coord % period) < period // 2
    if cls == 3:
        cell = int(rng.integers(2, 4))
        return ((y // cell + x // cell) % 2) == 1
    period = int(rng.integers(4, 6))
    return ((y % period) < 2) & ((x % period) < 2)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours, identically distributed for every class, at least 80 apart (L1/3)."""
    while True:
        a, b = rng.uniform(0, 255, size=(2, 3))
        if np.abs(a - b).mean() >= 80:
            return a, b


def make_toy_sample(size: int, seed: int, split: str,
                    index: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate one image and its label map.

    Args:
        size (int): image side length in pixels.
        seed (int): data set seed.
        split (str): 'training' or 'validation'.
        index (int): image index inside the split.

    Returns:
        tuple: ``image`` ``[size, size, 3]`` uint8 RGB and ``label`` ``[size, size]`` uint8 with
        values ``1..len(TOY_CLASSES)`` (ADE20K convention, see module docstring).
    """
    rng = np.random.default_rng([seed, SPLITS[split], index, size])
    yy, xx = np.mgrid[0:size, 0:size]
    num_regions = int(rng.integers(3, 7))
    centres = rng.uniform(0, size, size=(num_regions, 2))
    dist = (yy[None] - centres[:, 0, None, None])**2 + (xx[None] - centres[:, 1, None, None])**2
    region = dist.argmin(0)
    classes = rng.integers(0, len(TOY_CLASSES), size=num_regions)
    image = np.empty((size, size, 3), np.float64)
    label = np.empty((size, size), np.uint8)
    for r in range(num_regions):
        inside = region == r
        fg = _texture(int(classes[r]), yy, xx, rng)
        bg_colour, fg_colour = _two_colours(rng)
        image[inside] = np.where(fg[inside, None], fg_colour, bg_colour)
        label[inside] = classes[r] + 1
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def make_toy_dataset(out_dir: str,
                     num_train: int = 240,
                     num_val: int = 40,
                     size: int = 64,
                     seed: int = 0) -> str:
    """Write the toy data set to ``out_dir`` (ADE20K layout, see module docstring) through
    :func:`~mmlrf.datasets.generated.write_generated_dataset`: ``num_train`` and ``num_val``
    images (>= 1) of side ``size`` (>= 16) from ``seed``; ``out_dir`` must not exist yet.
    Returns ``out_dir``."""
    return write_generated_dataset(out_dir, make_toy_sample, 'toy', num_train, num_val, size,
                                   seed)


@DATASETS.register_module()
class ToyTextureDataset(GeneratedSegDataset):
    """The toy texture data set; generates itself under ``data_root`` on first use if absent.

    Args:
        data_root (str): data set root (default ``data/toy`` relative to the working directory).
        generate (dict | None): keyword arguments of :func:`make_toy_dataset` (``num_train``,
            ``num_val``, ``size``, ``seed``) used when ``data_root`` does not exist; None
            disables generation (a missing root then raises FileNotFoundError).
        **kwargs: passed to :class:`mmseg.datasets.BaseSegDataset`.
    """
    METAINFO = dict(classes=TOY_CLASSES, palette=TOY_PALETTE)
    make_dataset = staticmethod(make_toy_dataset)
    missing_hint = 'generate it with `python tools/dataset/make_toy_dataset.py {root}`'

    def __init__(self, data_root: str = 'data/toy', **kwargs) -> None:
        super().__init__(data_root=data_root, **kwargs)
