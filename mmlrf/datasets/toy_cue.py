"""A generated segmentation task whose labels need context from across the image: the class of a
striped target is announced by a small coloured cue elsewhere (ADE20K folder layout).

Generative rule for image ``i`` of a split, side ``S`` (every draw from one generator seeded by
``(seed, split, i, S)``, so a sample is deterministic in its seed):

1. **Background**: one grey level, uniform in [20, 235].
2. **Target**: an axis-aligned rectangle, sides uniform in [0.3 S, 0.5 S], anywhere in the
   image, filled with grey stripes (horizontal, vertical or diagonal, period 4-6 pixels, two grey
   levels at least 60 apart). Its look is drawn the same way whatever its class.
3. **Cue**: a square of side ``S // 8`` in one of four saturated colours (:data:`CUE_COLOURS`),
   at a uniformly random position that keeps it at least ``S // 4`` pixels (Chebyshev) away from
   the target; the target is redrawn until such a position exists.
4. Pixel noise (normal, sigma 8) on every pixel.
5. **Labels**: the background is class 0; the target and the cue are class ``1 + c``, ``c``
   the cue's colour index.

The image is grey everywhere but the cue, so a target pixel's neighbourhood says *where* the
target is and nothing about *which* class it is: that is a function of the cue alone, at least
``S // 4`` pixels away (two tokens of a stride-8 map). The cue lies anywhere around the target,
so in many images it comes after the target's first rows in raster order, where a causal raster
scan cannot have seen it; a model must carry the cue's colour across the image, forwards and
backwards. A cue-blind model can at best segment the target and guess its class.

Layout and label convention as :mod:`mmlrf.datasets.toy` (``ROOT/{images,annotations}/
{training,validation}/cue_XXXXX.png``, lossless PNG, class ``i`` stored as ``i + 1``, 0
unlabelled, loaded with ``reduce_zero_label=True``).
"""
from __future__ import annotations

import numpy as np
from mmseg.registry import DATASETS

from .generated import SPLITS, GeneratedSegDataset, write_generated_dataset

CUE_CLASSES = ('background', 'red-cued target', 'green-cued target', 'blue-cued target',
               'yellow-cued target')
CUE_PALETTE = [[120, 120, 120], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25]]
#: RGB of the cue of each target class (``CUE_CLASSES[1:]``).
CUE_COLOURS = ((220, 30, 30), (30, 200, 30), (30, 60, 220), (220, 200, 30))


def _greys(rng: np.random.Generator) -> tuple[float, float]:
    """Two grey levels in [20, 235] at least 60 apart."""
    while True:
        a, b = rng.uniform(20, 235, size=2)
        if abs(a - b) >= 60:
            return a, b


def _cue_corners(size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """``[M, 2]`` top-left corners (y, x) of every cue square that keeps ``size // 4`` pixels
    from the target ``box`` (y0, x0, y1, x1; end-exclusive)."""
    c, gap = size // 8, size // 4
    y0, x0, y1, x1 = box
    ys, xs = np.mgrid[0:size - c + 1, 0:size - c + 1]
    far = (ys + c + gap <= y0) | (ys >= y1 + gap) | (xs + c + gap <= x0) | (xs >= x1 + gap)
    return np.argwhere(far)


def make_cue_sample(size: int, seed: int, split: str, index: int,
                    cue: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate one image and its label map (the rule of the module docstring).

    Args:
        size (int): image side length in pixels, >= 16.
        seed (int): data set seed.
        split (str): 'training' or 'validation'.
        index (int): image index inside the split.
        cue (int | None): force the cue's colour index (0..3); every other draw, and so every
            pixel outside the cue, stays the same (a counterfactual of the same sample).

    Returns:
        tuple: ``image`` ``[size, size, 3]`` uint8 RGB and ``label`` ``[size, size]`` uint8 with
        values ``1..len(CUE_CLASSES)`` (ADE20K convention).
    """
    rng = np.random.default_rng([seed, SPLITS[split], index, size])
    image = np.full((size, size, 3), rng.uniform(20, 235))
    while True:
        h, w = rng.integers(int(0.3 * size), size // 2 + 1, size=2)
        y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        corners = _cue_corners(size, (y0, x0, y0 + h, x0 + w))
        if len(corners):
            break
    yy, xx = np.mgrid[0:h, 0:w] + rng.integers(0, 8, size=2)[:, None, None]
    period = int(rng.integers(4, 7))
    stripes = ((yy, xx, yy + xx)[int(rng.integers(0, 3))] % period) < period // 2
    a, b = _greys(rng)
    image[y0:y0 + h, x0:x0 + w] = np.where(stripes, a, b)[..., None]
    cy, cx = corners[rng.integers(len(corners))]
    drawn = int(rng.integers(0, len(CUE_COLOURS)))
    cls = drawn if cue is None else int(cue)
    c = size // 8
    image[cy:cy + c, cx:cx + c] = CUE_COLOURS[cls]
    image += rng.normal(0, 8, size=image.shape)
    label = np.ones((size, size), np.uint8)
    label[y0:y0 + h, x0:x0 + w] = label[cy:cy + c, cx:cx + c] = cls + 2
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def make_cue_dataset(out_dir: str, num_train: int = 240, num_val: int = 40, size: int = 64,
                     seed: int = 0) -> str:
    """Write the cue data set to ``out_dir`` (must not exist) through
    :func:`~mmlrf.datasets.generated.write_generated_dataset`; returns ``out_dir``. Arguments as
    :func:`mmlrf.datasets.make_toy_dataset` (``size`` >= 16)."""
    return write_generated_dataset(out_dir, make_cue_sample, 'cue', num_train, num_val, size,
                                   seed)


@DATASETS.register_module()
class ToyCueDataset(GeneratedSegDataset):
    """The cue data set; generates itself under ``data_root`` on first use if absent.

    Args:
        data_root (str): data set root (default ``data/toy_cue`` relative to the working folder).
        generate (dict | None): keyword arguments of :func:`make_cue_dataset` used when
            ``data_root`` does not exist; None disables generation (a missing root then raises
            FileNotFoundError).
        **kwargs: passed to :class:`mmseg.datasets.BaseSegDataset`.
    """
    METAINFO = dict(classes=CUE_CLASSES, palette=CUE_PALETTE)
    make_dataset = staticmethod(make_cue_dataset)
    missing_hint = 'pass `generate` (make_cue_dataset arguments) to create it'

    def __init__(self, data_root: str = 'data/toy_cue', **kwargs) -> None:
        super().__init__(data_root=data_root, **kwargs)
