"""Time of a depth-wise convolution's backward: autograd's ``aten::convolution_backward``
against :func:`mmlrf.depthwise.conv2d_backward` (two forward convolutions), in the same run.

The default shapes are the depth-wise convolutions of the SDT-V3-19M segmentor: the LRF
branch's dilated 3×3 on V (4·360 channels at stride 16) and the 7×7 of the SepConv blocks at
strides 4 and 8 (hidden width 2C), for a 512×512 and a 1024×2048 input.
"""
from __future__ import annotations

import statistics

import torch

from ..depthwise import conv2d_backward
from .memory import time_ms

#: (label, [B, C, H, W], kernel, dilation) of the 19M segmentor's depth-wise convs.
SDTV3_19M_DEPTHWISE = (
    ('LRF 3x3 d3, 512x512', (1, 1440, 32, 32), 3, 3),
    ('LRF 3x3 d5, 512x512', (1, 1440, 32, 32), 3, 5),
    ('LRF 3x3 d3, 1024x2048', (1, 1440, 64, 128), 3, 3),
    ('SepConv 7x7 stride 4, 512x512', (1, 128, 128, 128), 7, 1),
    ('SepConv 7x7 stride 8, 512x512', (1, 256, 64, 64), 7, 1),
    ('SepConv 7x7 stride 4, 1024x2048', (1, 128, 256, 512), 7, 1),
)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(time_ms(fn, torch.device('cpu'), repeats))


def compare_depthwise_backward(shape: tuple[int, int, int, int], kernel: int, dilation: int,
                               batch: int | None = None, repeats: int = 5,
                               seed: int = 0) -> dict:
    """Time both backward routes of one 'same'-padded depth-wise conv on the CPU.

    Args:
        shape: input ``[B, C, H, W]``.
        kernel: square kernel size K.
        dilation: dilation d (padding ``d·(K−1)/2``).
        batch: overrides B.
        repeats: timed calls per route (median reported, after one warm-up call).
        seed: random inputs.

    Returns:
        dict: ``shape``, ``kernel``, ``dilation``, ``forward_ms`` (the conv itself),
        ``autograd_ms``, ``mmlrf_ms``, ``ratio`` (mmlrf / autograd) and ``max_rel_diff`` of
        the two routes' gradients (relative to their max-abs).
    """
    b, c, h, w = shape
    b = batch or b
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen)
    grad = torch.randn(b, c, h, w, generator=gen)
    weight = torch.randn(c, 1, kernel, kernel, generator=gen)
    pad, dil = (dilation * (kernel - 1) // 2,) * 2, (dilation, dilation)
    mask = [True, True, False]

    def reference():
        return torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], list(pad),
                                                   list(dil), False, [0, 0], c, mask)

    def ours():
        return conv2d_backward(grad, x, weight, None, (1, 1), pad, dil, c, tuple(mask))

    diff = max(((a - r).abs().max() / r.abs().max()).item()
               for a, r in zip(ours()[:2], reference()[:2]))
    return dict(shape=[b, c, h, w], kernel=kernel, dilation=dilation,
                forward_ms=_median_ms(lambda: torch.nn.functional.conv2d(
                    x, weight, None, 1, pad, dil, c), repeats),
                autograd_ms=(ref := _median_ms(reference, repeats)),
                mmlrf_ms=(new := _median_ms(ours, repeats)), ratio=new / ref,
                max_rel_diff=diff)
