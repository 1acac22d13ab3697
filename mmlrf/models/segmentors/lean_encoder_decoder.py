"""mmseg's ``EncoderDecoder`` with lean inference switched at build."""
from __future__ import annotations

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ...inference import set_lean_inference


@MODELS.register_module()
class LeanEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` whose modules take their lean inference paths
    (:func:`~mmlrf.inference.set_lean_inference`): the same predictions in less memory. The
    segmentation configs' model; turn it off with ``model.lean_inference=False`` (then the
    backbone's and neck's maps stay readable after the head has run).

    Args:
        lean_inference (bool): switch lean inference on in every module that has it.
        **kwargs: :class:`~mmseg.models.segmentors.EncoderDecoder` arguments.
    """

    def __init__(self, lean_inference: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        set_lean_inference(self, lean_inference)
