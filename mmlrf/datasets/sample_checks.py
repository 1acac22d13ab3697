"""A pipeline step that refuses a sample which would train or evaluate wrongly without an error.

Three faults pass mmseg's pipeline unnoticed: a label value outside the classes (training stops
later in the loss with an ``IndexError`` that names no file; ``IoUMetric`` drops the pixels, so
mIoU is lowered without a word), an annotation whose size differs from its image's (training
crops padding; the metric fails much later), and a non-finite pixel in a float image (every
prediction becomes class 0). :class:`CheckSegSample` raises on each, naming the file.

It goes right after ``LoadAnnotations`` in both pipelines, before any resize or crop: the
annotation is then at its file's size and the image's file size is ``ori_shape``. Without an
annotation (mmseg's inference APIs drop ``LoadAnnotations``) only the image is checked.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS


class SegSampleError(ValueError):
    """A sample's image or annotation is unusable; the message names the file."""


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'CheckSegSample: {name} must be an int >= 1, got {value!r}')
    return value


@TRANSFORMS.register_module()
class CheckSegSample(BaseTransform):
    """Refuse label values outside ``[0, num_classes)`` (other than ``ignore_index``), an
    annotation whose size is not its image's, and non-finite pixels.

    Args:
        num_classes (int): classes of the data set (after ``reduce_zero_label``).
        ignore_index (int): the label value that marks pixels to ignore (mmseg: 255).

    Raises:
        ValueError: at build time, for a ``num_classes`` below 1.
        SegSampleError: per sample, naming the annotation or image file and the offending value
            or sizes.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = _check_positive('num_classes', num_classes)
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        """Check ``results['img']`` and, when loaded, ``results['gt_seg_map']``."""
        self._check_image(results)
        if results.get('gt_seg_map') is not None:
            self._check_annotation(results)
        return results

    def _check_image(self, results: dict) -> None:
        image = np.asarray(results['img'])
        if np.issubdtype(image.dtype, np.floating):
            bad = ~np.isfinite(image)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0][:2])
                source = results.get('img_path') or 'the input image (an array, no file)'
                raise SegSampleError(
                    f'image {source!r} has {int(bad.sum())} non-finite values (NaN or inf; the '
                    f'first at row, column {where}): a segmentor maps them to a meaningless '
                    'label map. Replace or mask them before segmenting.')

    def _check_annotation(self, results: dict) -> None:
        label = results['gt_seg_map']
        path = results.get('seg_map_path', '<annotation>')
        image_size = tuple(results['ori_shape'][:2])
        if label.ndim != 2 or tuple(label.shape) != image_size:
            raise SegSampleError(
                f'annotation {path!r} is {_size(label.shape)} but its image '
                f'{results.get("img_path")!r} is {_size(image_size)}: every annotation must be '
                'a single-channel label map of its image\'s size')
        if int(label.max(initial=0)) < self.num_classes:
            return
        values = np.unique(label)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
        if bad.size:
            stored = ''
            if results.get('reduce_zero_label'):
                raw = _values(bad.astype(np.int64) + 1)
                stored = f' (stored in the file as {raw}: reduce_zero_label)'
            raise SegSampleError(
                f'annotation {path!r} has label value(s) {_values(bad)}{stored} outside the '
                f'{self.num_classes} classes [0, {self.num_classes - 1}] and not the ignore '
                f'index {self.ignore_index}. Fix the file, or the data set\'s classes and the '
                f'num_classes of CheckSegSample and of the model\'s heads.')

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index})')


def _size(shape: tuple) -> str:
    """``(H, W[, C])`` as ``'HxW'`` (height x width), channels appended."""
    text = f'{shape[0]}x{shape[1]} (height x width)' if len(shape) >= 2 else f'shape {shape}'
    return text + (f' with {shape[2]} channels' if len(shape) == 3 else '')


def _values(values: np.ndarray, limit: int = 8) -> str:
    shown = ', '.join(str(int(v)) for v in values[:limit])
    return shown + (f', ... ({values.size} values)' if values.size > limit else '')
