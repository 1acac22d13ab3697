"""Prediction without full-resolution logits: the label map from the decode head's logits,
resized and reduced class chunk by class chunk.

mmseg's ``EncoderDecoder.predict`` resizes the head's logits to the input (``[B, K, H, W]``,
or accumulates them over sliding windows), crops the padding, resizes them again to the
original image and takes the argmax. At 1024×2048 with 150 classes each of those maps is a
1.2 GB float tensor, the largest of the whole pass. Resizing is per channel and the argmax can
be merged over channel chunks, so :func:`lean_predict` runs the same operations on
:data:`CLASS_CHUNK` classes at a time: the labels are bit for bit mmseg's (the same resize calls
per channel, the same window order in sliding-window inference, the first maximum on ties, NaN
winning as in ``torch.argmax``), while only a chunk of full-resolution logits exists at a time.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from mmseg.models.utils import resize
from torch import Tensor, nn

#: Classes resized and reduced together.
CLASS_CHUNK = 8


def chunked_argmax(chunks: Iterable[tuple[int, Tensor]]) -> Tensor:
    """``torch.cat(chunks).argmax(0)`` from ``(first class, [c, H, W] logits)`` chunks in class
    order, holding one chunk at a time: the first maximum wins ties, a NaN wins as in
    ``torch.argmax``. Returns ``[H, W]`` int64."""
    best_value = best_index = None
    for start, chunk in chunks:
        value, index = chunk.max(dim=0)
        index += start
        if best_value is None:
            best_value, best_index = value, index
            continue
        take = (value > best_value) | (value.isnan() & ~best_value.isnan())
        best_value = torch.where(take, value, best_value)
        best_index = torch.where(take, index, best_index)
    return best_index


def _slide_windows(segmentor: nn.Module, inputs: Tensor,
                   metas: list[dict]) -> tuple[list[tuple], Tensor]:
    """The decode head's logits of every sliding window (mmseg's ``slide_inference`` order) at
    the head's stride, with each window's place and crop metas, and the windows' count map."""
    h_stride, w_stride = segmentor.test_cfg.stride
    h_crop, w_crop = segmentor.test_cfg.crop_size
    batch, _, h_img, w_img = inputs.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    count = inputs.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop = inputs[:, :, y1:y2, x1:x2]
            crop_metas = copy.copy(metas)
            crop_metas[0] = dict(metas[0], img_shape=crop.shape[2:])
            logits = segmentor._forward(crop)
            windows.append(((y1, y2, x1, x2), crop_metas, logits))
            count[:, :, y1:y2, x1:x2] += 1
    return windows, count


def _logits_of(segmentor: nn.Module, inputs: Tensor,
               metas: list[dict]) -> Callable[[int, int, int], Tensor]:
    """``fn(i, c0, c1)``: classes ``c0:c1`` of image ``i`` of what mmseg's ``inference``
    returns (``[1, c, H, W]`` logits at the padded input size), computed from the head's logits
    kept at their stride (``_forward``, mmseg's ``mode='tensor'``, which ``compile_segmentor``
    compiles)."""
    head = segmentor.decode_head
    if segmentor.test_cfg.get('mode', 'whole') != 'slide':
        logits = segmentor._forward(inputs)
        return lambda i, c0, c1: head.predict_by_feat(logits[i:i + 1, c0:c1], metas)
    windows, count = _slide_windows(segmentor, inputs, metas)
    h_img, w_img = inputs.shape[2:]

    def classes(i: int, c0: int, c1: int) -> Tensor:
        preds = inputs.new_zeros((1, c1 - c0, h_img, w_img))
        for (y1, y2, x1, x2), crop_metas, logits in windows:
            window = head.predict_by_feat(logits[i:i + 1, c0:c1], crop_metas)
            preds += F.pad(window, (x1, w_img - x2, y1, h_img - y2))
        return preds / count[i:i + 1]
    return classes


def lean_predict(segmentor: nn.Module, inputs: Tensor, metas: Sequence[dict],
                 restore: bool = True) -> list[Tensor]:
    """The label maps ``[1, H_i, W_i]`` int64 of mmseg's ``EncoderDecoder.predict`` (whole or
    sliding-window inference), computed over class chunks (module docstring).

    Args:
        segmentor (nn.Module): an mmseg ``EncoderDecoder`` with more than one class.
        inputs (Tensor): ``[B, 3, H, W]`` preprocessed images.
        metas (Sequence[dict]): each image's metainfo (``ori_shape``, ``padding_size``, ...).
        restore (bool): crop each image's padding, undo its flip and resize to its
            ``ori_shape``, as mmseg does when it has data samples; False: the labels at the
            input size, as mmseg without them.
    """
    metas = list(metas)
    logits_of = _logits_of(segmentor, inputs, metas)
    num_classes = segmentor.decode_head.out_channels
    height, width = inputs.shape[2:]
    labels = []
    for i, meta in enumerate(metas):
        left, right, top, bottom = meta.get('img_padding_size',
                                            meta.get('padding_size', [0] * 4))

        def chunks(i: int = i, meta: dict = meta) -> Iterable[tuple[int, Tensor]]:
            for c0 in range(0, num_classes, CLASS_CHUNK):
                logits = logits_of(i, c0, min(c0 + CLASS_CHUNK, num_classes))
                if restore:
                    logits = logits[:, :, top:height - bottom, left:width - right]
                    if meta.get('flip'):
                        dims = (3,) if meta['flip_direction'] == 'horizontal' else (2,)
                        logits = logits.flip(dims=dims)
                    logits = resize(logits, size=meta['ori_shape'], mode='bilinear',
                                    align_corners=segmentor.align_corners, warning=False)
                yield c0, logits[0]
        labels.append(chunked_argmax(chunks())[None])
    return labels
