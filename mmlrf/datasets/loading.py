"""Image loading that fails loudly, under mmcv's name as well as its own.

mmcv's ``LoadImageFromFile`` reports an undecodable file with a bare ``assert`` (gone under
``python -O``, where it becomes ``'NoneType' object has no attribute 'shape'``) and lets decoder
errors through without the file name. The loaders here raise an error naming the file instead.

Two registered names (mmseg's ``TRANSFORMS``):

* ``LoadImageFromFile`` (:class:`LoadImageFromFileNamed`): mmcv's transform with mmcv's
  arguments, registered in mmseg's scope under mmcv's name. mmseg's inference APIs
  (``MMSegInferencer``, ``inference_model``) look the loader up by that exact name in a config's
  test pipeline and replace it by their array loader, so mmlrf's configs use this name; any
  mmseg config run after ``import mmlrf`` gets the file named on failure too.
* ``LoadImageFromFileChecked`` (:class:`LoadImageFromFileChecked`): the same, with the 3-channel
  contract fixed (no ``color_type`` option).

Channel rule with ``color_type='color'`` (the default; mmlrf backbones take 3-channel images):
files are decoded with OpenCV's ``IMREAD_COLOR`` into ``uint8`` BGR ``[H, W, 3]``:

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


@TRANSFORMS.register_module(name='LoadImageFromFile')
class LoadImageFromFileNamed(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` that names the file on every failure.

    Sets ``results['img']``, ``img_shape`` and ``ori_shape`` (``(H, W)``) as mmcv's transform
    does; with ``color_type='color'`` the image is always ``[H, W, 3]`` (see the module
    docstring), whatever the decoding backend.

    Args:
        to_float32 (bool): convert the image to ``float32``.
        color_type (str): mmcv's ``imfrombytes`` flag ('color', 'grayscale', 'unchanged', ...).
        imdecode_backend (str): mmcv decoding backend.
        file_client_args (dict | None): deprecated by mmcv, use ``backend_args``.
        ignore_empty (bool): mmcv's option: a missing file gives ``None`` (the sample is
            dropped by the pipeline) instead of an error; it must be asked for.
        backend_args (dict | None): mmengine file backend arguments.

    Raises:
        FileNotFoundError: a sample's ``img_path`` does not exist (message names it).
        ImageFileError: the file exists but is empty, truncated or not an image (names it).
    """

    def __init__(self, to_float32: bool = False, color_type: str = 'color',
                 imdecode_backend: str = 'cv2', file_client_args: dict | None = None,
                 ignore_empty: bool = False, *, backend_args: dict | None = None) -> None:
        super().__init__(to_float32=to_float32, color_type=color_type,
                         imdecode_backend=imdecode_backend, file_client_args=file_client_args,
                         ignore_empty=ignore_empty, backend_args=backend_args)

    def transform(self, results: dict) -> dict | None:
        """Load ``results['img_path']`` (see the class docstring)."""
        filename = results['img_path']
        if not fileio.exists(filename, backend_args=self.backend_args):
            if self.ignore_empty:
                return None
            raise FileNotFoundError(f'image file {filename!r} of the data set does not exist')
        try:
            loaded: Any = super().transform(results)
        except Exception as err:  # mmcv: AssertionError (None image) or a decoder error
            raise ImageFileError(f'image file {filename!r} is empty, truncated or not an image '
                                 f'({type(err).__name__}: {err})') from err
        if loaded is None:  # mmcv with ignore_empty: undecodable
            return None
        image = loaded['img']
        if self.color_type == 'color' and (image.ndim != 3 or image.shape[2] != 3):
            # the pillow backend keeps odd modes
            raise ImageFileError(f'image file {filename!r} decoded to shape {image.shape}, '
                                 'expected [H, W, 3]')
        return loaded


@TRANSFORMS.register_module()
class LoadImageFromFileChecked(LoadImageFromFileNamed):
    """:class:`LoadImageFromFileNamed` with the 3-channel contract fixed: no ``color_type``
    option, no ``ignore_empty``, and the OpenCV or pillow decoder only.

    Args:
        to_float32 (bool): convert the image to ``float32``.
        imdecode_backend (str): mmcv decoding backend; ``'cv2'`` or ``'pillow'``.
        backend_args (dict | None): mmengine file backend arguments.

    Raises:
        ValueError: at build time, for an ``imdecode_backend`` other than 'cv2' / 'pillow'.
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
