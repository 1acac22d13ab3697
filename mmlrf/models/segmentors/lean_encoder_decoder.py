"""mmseg's ``EncoderDecoder`` with lean inference switched at build."""
from __future__ import annotations

from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ...inference import lean_applies, set_lean_inference
from ...inference.predict import lean_predict


@MODELS.register_module()
class LeanEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` whose modules take their lean inference paths
    (:func:`~mmlrf.inference.set_lean_inference`), and whose ``predict`` resizes and reduces the
    logits class chunk by class chunk (:func:`~mmlrf.inference.predict.lean_predict`): the same
    label maps in less memory. The segmentation configs' model; turn it off with
    ``model.lean_inference=False`` (then the backbone's and neck's maps stay readable after the
    head has run, and ``predict`` also returns mmseg's full-resolution ``seg_logits``).

    Args:
        lean_inference (bool): switch lean inference on in every module that has it.
        **kwargs: :class:`~mmseg.models.segmentors.EncoderDecoder` arguments.
    """

    def __init__(self, lean_inference: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lean_inference = lean_inference
        set_lean_inference(self, lean_inference)

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None) -> SampleList:
        """mmseg's ``predict``; lean: ``pred_sem_seg`` only (no full-resolution
        ``seg_logits``), the same labels bit for bit."""
        if not (lean_applies(self) and self.out_channels > 1):
            return super().predict(inputs, data_samples)
        if data_samples is not None:
            metas = [sample.metainfo for sample in data_samples]
        else:
            metas = [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                          pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])
                     ] * inputs.shape[0]
        labels = lean_predict(self, inputs, metas, restore=data_samples is not None)
        samples = data_samples if data_samples is not None else [SegDataSample()
                                                                 for _ in labels]
        for sample, label in zip(samples, labels):
            sample.set_data(dict(pred_sem_seg=PixelData(data=label)))
        return samples
