"""Image loading that fails loudly and always yields 3-channel images.

mmcv's ``LoadImageFromFile`` reports an undecodable file with a bare ``assert`` (gone under
``python -O``, where it becomes ``'NoneType' object has no attribute 'shape'``), lets decoder
errors through without the file name, and with ``ignore_empty=True`` silently drops the sample.
:class:`LoadImageFromFileChecked` raises an error naming the file instead.

Channel rule (mmlrf backbones take 3-channel images): files are decoded with OpenCV's
``IMREAD_COLOR`` (mmcv ``color_type='color'``) into ``uint8`` BGR ``[H, W, 3]``:

* grayscale (1 channel, or gray + alpha): the gray value is copied into B, G and R;
* 4 channels (RGBA / BGRA): the alpha channel is dropped, not composited;
* 16-bit files are scaled to 8 bit (``value // 256``) by OpenCV.
"""
from __future__ import annotations

from typing import Any

from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmseg.registry import TRANSFORMS


class ImageFileError(ValueError):
    """An image file of a data set exists but cannot be decoded as an image."""


@TRANSFORMS.register_module()
class LoadImageFromFileChecked(LoadImageFromFile):
    """``LoadImageFromFile`` that names the file on every failure and always gives 3 channels.

    Sets ``results['img']`` (``uint8`` BGR ``[H, W, 3]``, or ``float32`` with ``to_float32``),
    ``img_shape`` and ``ori_shape`` (``(H, W)``), like mmcv's transform.

    Args:
        to_float32 (bool): convert the image to ``float32``.
        imdecode_backend (str): mmcv decoding backend; ``'cv2'`` or ``'pillow'``.
        backend_args (dict | None): mmengine file backend arguments.

    Raises:
        ValueError: at build time, for an ``imdecode_backend`` other than 'cv2' / 'pillow'.
        FileNotFoundError: a sample's ``img_path`` does not exist (message names it).
        ImageFileError: the file exists but is empty, truncated or not an image (names it).
    """

    IMDECODE_BACKENDS = ('cv2', 'pillow')

    def __init__(self, to_float32: bool = False, imdecode_backend: str = 'cv2',
                 backend_args: dict | None = None) -> None:
        if imdecode_backend not in self.IMDECODE_BACKENDS:
            raise ValueError(f'imdecode_backend must be one of {self.IMDECODE_BACKENDS}, '
                             f'got {imdecode_backend!r}')
        super().__init__(to_float32=to_float32, color_type='color',
                         imdecode_backend=imdecode_backend, ignore_empty=False,
                         backend_args=backend_args)

    def transform(self, results: dict) -> dict:
        """Load ``results['img_path']`` (see the class docstring)."""
        filename = results['img_path']
        if not fileio.exists(filename, backend_args=self.backend_args):
            raise FileNotFoundError(f'image file {filename!r} of the data set does not exist')
        try:
            loaded: Any = super().transform(results)
        except Exception as err:  # mmcv: AssertionError (None image) or a decoder error
            raise ImageFileError(f'image file {filename!r} is empty, truncated or not an image '
                                 f'({type(err).__name__}: {err})') from err
        image = loaded['img']
        if image.ndim != 3 or image.shape[2] != 3:  # the pillow backend keeps odd modes
            raise ImageFileError(f'image file {filename!r} decoded to shape {image.shape}, '
                                 'expected [H, W, 3]')
        return loaded
