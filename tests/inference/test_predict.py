"""Prediction over class chunks (:mod:`mmlrf.inference.predict`): the argmax merged over chunks
is ``torch.argmax`` (ties, NaN, infinities); the label maps are mmseg's ``EncoderDecoder.predict``
bit for bit in whole and sliding-window inference, with padding, flips, a resize to the original
shape and without data samples; ``LeanEncoderDecoder.predict`` takes this path only when lean;
the peak memory drops by the full-resolution logits."""
import copy

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from mmengine.config import ConfigDict
from mmseg.models.segmentors import EncoderDecoder
from mmseg.structures import SegDataSample

from mmlrf.inference import predict
from mmlrf.inference.predict import chunked_argmax, lean_predict

from peak_memory import MIB, measure_in_subprocess, peak_rss_mib
from seg_samples import build_segmentor

NUM_CLASSES = 21  # not a multiple of the chunk: the last chunk is short


def _chunks(logits: torch.Tensor, size: int):
    return ((c0, logits[c0:c0 + size]) for c0 in range(0, logits.shape[0], size))


@pytest.mark.parametrize('size', [1, 3, 8, 21])
def test_chunked_argmax_is_torch_argmax(size):
    """Few distinct values (ties within and across chunks), NaNs (one, two in one chunk, two
    in different chunks), infinities."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (NUM_CLASSES, 9, 11), generator=g).float()
    logits[5, 0, 0] = float('nan')
    logits[[2, 4], 0, 1] = float('nan')
    logits[[1, 17], 0, 2] = float('nan')
    logits[20, 0, 3] = float('nan')
    logits[6, 1, :] = float('inf')
    logits[:, 2, :] = float('-inf')
    logits[:, 3, :] = 0.0  # all tied: class 0
    expected = torch.argmax(logits, dim=0)
    assert expected[0, :4].tolist() == [5, 2, 1, 20] and (expected[3] == 0).all()
    labels = chunked_argmax(_chunks(logits, size))
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)


def _segmentor(mode: str, num_classes: int = NUM_CLASSES, **head) -> EncoderDecoder:
    """A tiny LRF-Dyn segmentor; slide: 24x24 windows every 16 pixels (overlapping)."""
    test_cfg = ConfigDict(mode='whole') if mode == 'whole' else \
        ConfigDict(mode='slide', crop_size=(24, 24), stride=(16, 16))
    torch.manual_seed(1)  # an untrained model whose label maps are varied (checked below)
    model = build_segmentor(dict(
        type='LeanEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', test_cfg=dict(size_divisor=16)),
        backbone=dict(type='SDTV3', embed_dims=[8, 12, 24, 32], num_heads=2,
                      arch=None, attn=dict(type='LRFDyn')),
        neck=dict(type='SpikingFPN', in_channels=[4, 8, 12, 32], out_channels=8),
        decode_head=dict(type='SpikingFPNHead', in_channels=[8] * 4, channels=8,
                         num_classes=num_classes, in_index=[0, 1, 2, 3], **head),
        test_cfg=test_cfg))
    for bn in model.modules():  # untrained BN statistics: make the neurons fire at all
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_var.fill_(0.05)
            bn.bias.data.uniform_(-0.5, 1.0)
    torch.nn.init.normal_(model.decode_head.conv_seg.weight)  # spread the classes' logits
    return model.eval()


def _batch(model, size: tuple, flips: list, scales: list) -> tuple:
    """Preprocessed images of ``size`` (padded to a multiple of 16) and their samples: each
    ``ori_shape`` the size times its scale (a test pipeline that resized), flips as given."""
    g = torch.Generator().manual_seed(1)
    (h, w), samples = size, []
    for flip, scale in zip(flips, scales):
        meta = dict(img_shape=(h, w), ori_shape=(round(h * scale), round(w * scale)),
                    flip=flip is not None, flip_direction=flip)
        samples.append(SegDataSample(metainfo=meta))
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for _ in samples]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), False)
    return data['inputs'], data['data_samples']


@pytest.mark.parametrize('mode', ['whole', 'slide'])
@pytest.mark.parametrize('case', ['padded-flipped-resized', 'no-samples'])
def test_labels_are_mmsegs_bit_for_bit(mode, case):
    model = _segmentor(mode)
    inputs, samples = _batch(model, (37, 53), [None, 'horizontal', 'vertical'],
                             [1.7, 0.6, 1.0]) if case != 'no-samples' else \
        _batch(model, (48, 64), [None], [1.0])
    assert case == 'no-samples' or tuple(samples[0].img_padding_size) == (0, 11, 0, 11)
    with torch.no_grad():
        expected = EncoderDecoder.predict(model, inputs, copy.deepcopy(samples)
                                          if case != 'no-samples' else None)
        labels = lean_predict(model, inputs, [s.metainfo for s in samples],
                              restore=case != 'no-samples')
    for sample, label in zip(expected, labels):
        assert torch.equal(label, sample.pred_sem_seg.data)
        assert len(label.unique()) > 3  # a varied label map: a misplaced class would show
    if case != 'no-samples':
        assert [tuple(label.shape[1:]) for label in labels] == [(63, 90), (22, 32), (37, 53)]


def test_segmentor_predicts_over_chunks_only_when_lean(monkeypatch):
    """Lean: the chunked labels and no ``seg_logits``; off (the switch or autograd on): mmseg's
    own path with its ``seg_logits``."""
    model = _segmentor('whole')
    inputs, samples = _batch(model, (37, 53), [None], [1.0])
    calls = []
    monkeypatch.setattr(predict, 'chunked_argmax',
                        lambda chunks: calls.append(1) or chunked_argmax(chunks))
    with torch.no_grad():
        lean = model.predict(inputs, copy.deepcopy(samples))[0]
    assert calls and 'seg_logits' not in lean
    model.lean_inference = False
    with torch.no_grad():
        plain = model.predict(inputs, copy.deepcopy(samples))[0]
    model.lean_inference = True
    graded = model.predict(inputs, copy.deepcopy(samples))[0]
    assert len(calls) == 1
    for other in (plain, graded):
        assert other.seg_logits.data.shape == (NUM_CLASSES, 37, 53)
        assert torch.equal(other.pred_sem_seg.data, lean.pred_sem_seg.data)


def test_a_single_class_segmentor_thresholds_as_mmseg():
    """One output channel (sigmoid and threshold in mmseg) stays on mmseg's path."""
    model = _segmentor('whole', num_classes=2, out_channels=1, threshold=0.3)
    inputs, samples = _batch(model, (16, 24), [None], [1.0])
    with torch.no_grad():
        pred = model.predict(inputs, copy.deepcopy(samples))[0]
    assert pred.seg_logits.data.shape == (1, 16, 24)
    expected = (pred.seg_logits.data.sigmoid() > 0.3).long()
    assert torch.equal(pred.pred_sem_seg.data, expected)  # an argmax of one channel: zeros


def measure_peaks() -> dict[str, float]:
    """Peak memory of ``predict`` with 150 classes on a 128x256 image, lean and plain."""
    torch.set_num_threads(1)
    model = _segmentor('whole', num_classes=150)
    inputs, samples = _batch(model, (128, 256), [None], [1.0])
    peaks = {}
    with torch.no_grad():
        for lean in (True, False, True):
            model.lean_inference = lean
            peaks[str(lean)] = peak_rss_mib(
                lambda: model.predict(inputs, copy.deepcopy(samples)))
    return peaks


def test_lean_prediction_lowers_the_peak_by_the_logits():
    """mmseg holds the ``[150, H, W]`` logits and their resized copy; the chunks hold 8 classes."""
    peaks = measure_in_subprocess(__file__)
    logits_mib = 150 * 128 * 256 * 4 / MIB
    assert peaks['False'] - peaks['True'] > 1.5 * logits_mib, peaks


if __name__ == '__main__':  # the CPU measurement of test_lean_prediction_lowers_the_peak...
    import json
    print(json.dumps(measure_peaks()))
