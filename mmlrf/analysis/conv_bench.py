"""Time of a convolution, torch's kernel (oneDNN on the CPU, cuDNN on CUDA) against mmlrf's
route for it (:mod:`mmlrf.conv`), in the same run: the forward (``F.conv2d`` vs the 1×1 matrix
product; a depth-wise forward is ``F.conv2d`` on both sides) and the backward
(``aten::convolution_backward``, what autograd runs, vs the 1×1 matrix products or the
depth-wise forward convolutions).

The routes are timed directly, also on CUDA where the models do not take them, so that a GPU
run shows whether they would pay off there.

The default shapes are convolutions of the SDT-V3-19M segmentor that mmlrf routes: its 1×1
convs (SepConv point-wise convs at strides 2 and 4, the MLPs at stride 16, the classifier at
stride 2) and its depth-wise convs (the LRF branch's dilated 3×3 on V, 4·360 channels at stride
16; the SepConv 7×7 at strides 4 and 8, hidden width 2C), for a 512×512 and a 1024×2048 input.
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from ..conv import _depthwise_grads, _pointwise_forward, _pointwise_grads, torch_conv2d_backward
from .memory import time_ms

#: (label, input [B, C, H, W], C_out (1×1) or None (depth-wise), kernel, dilation).
SDTV3_19M_CONVS = (
    ('SepConv 1x1 32->64 stride 2, 512x512', (1, 32, 256, 256), 64, 1, 1),
    ('SepConv 1x1 64->128 stride 4, 512x512', (1, 64, 128, 128), 128, 1, 1),
    ('MLP 1x1 360->1440 stride 16, 512x512', (1, 360, 32, 32), 1440, 1, 1),
    ('MLP 1x1 1440->360 stride 16, 512x512', (1, 1440, 32, 32), 360, 1, 1),
    ('classifier 1x1 128->150 stride 2, 512x512', (1, 128, 256, 256), 150, 1, 1),
    ('classifier 1x1 128->150 stride 2, 1024x2048', (1, 128, 512, 1024), 150, 1, 1),
    ('LRF 3x3 d3, 512x512', (1, 1440, 32, 32), None, 3, 3),
    ('LRF 3x3 d5, 512x512', (1, 1440, 32, 32), None, 3, 5),
    ('LRF 3x3 d3, 1024x2048', (1, 1440, 64, 128), None, 3, 3),
    ('SepConv 7x7 stride 4, 512x512', (1, 128, 128, 128), None, 7, 1),
    ('SepConv 7x7 stride 8, 512x512', (1, 256, 64, 64), None, 7, 1),
    ('SepConv 7x7 stride 4, 1024x2048', (1, 128, 256, 512), None, 7, 1),
)


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    return statistics.median(time_ms(fn, device, repeats))


def _rel_diff(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(((a - r).abs().max() / r.abs().max()).item() for a, r in zip(ours, ref))


def compare_conv(shape: tuple[int, int, int, int], out_channels: int | None, kernel: int,
                 dilation: int, batch: int | None = None, repeats: int = 5,
                 seed: int = 0, device: str | torch.device = 'cpu') -> dict:
    """Time torch's and mmlrf's forward and backward of one 'same'-padded stride-1 conv.

    Args:
        shape: input ``[B, C, H, W]``.
        out_channels: C_out of a 1×1 conv, or None for a depth-wise conv (one filter per
            channel).
        kernel: square kernel size K (1 for a 1×1 conv).
        dilation: dilation d (padding ``d·(K−1)/2``).
        batch: overrides B.
        repeats: timed calls per route (median reported, after one warm-up call).
        seed: random inputs.
        device: where to run (each timed call is synchronised on CUDA).

    Returns:
        dict: ``shape``, ``weight`` (shape), ``dilation``, ``forward_torch_ms``,
        ``forward_mmlrf_ms``, ``forward_ratio`` (mmlrf / torch), ``backward_torch_ms``,
        ``backward_mmlrf_ms``, ``backward_ratio`` and ``max_rel_diff``, the largest difference
        of the two routes' outputs and gradients relative to their max-abs.

    Raises:
        ValueError: for a dense conv with a kernel other than 1×1 (mmlrf has no route for it).
    """
    pointwise = out_channels is not None
    if pointwise and kernel != 1:
        raise ValueError(f'a dense conv is routed only as a 1x1 conv, got kernel={kernel}')
    b, c, h, w = shape
    b = batch or b
    groups = c if out_channels is None else 1
    weight_shape = (c if out_channels is None else out_channels, c // groups, kernel, kernel)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen).to(device)
    weight = torch.randn(*weight_shape, generator=gen).to(device)
    grad = torch.randn(b, weight_shape[0], h, w, generator=gen).to(device)
    pad, dil = (dilation * (kernel - 1) // 2,) * 2, (dilation, dilation)
    geometry = ((1, 1), pad, dil, groups)

    def forward_ref():
        return F.conv2d(x, weight, None, *geometry)

    def forward_ours():
        return _pointwise_forward(x, weight, None) if pointwise else forward_ref()

    def backward_ref():
        return torch_conv2d_backward(grad, x, weight, None, *geometry, (True, True, False))

    def backward_ours():
        if pointwise:
            return _pointwise_grads(grad, x, weight, (True, True))
        return _depthwise_grads(grad, x, weight, pad, dil, (True, True))

    diff = max(_rel_diff([forward_ours()], [forward_ref()]),
               _rel_diff(backward_ours()[:2], backward_ref()[:2]))
    row = dict(shape=[b, c, h, w], weight=list(weight_shape), dilation=dilation)
    for name, ref, ours in (('forward', forward_ref, forward_ours),
                            ('backward', backward_ref, backward_ours)):
        row[f'{name}_torch_ms'] = _median_ms(ref, repeats, device)
        row[f'{name}_mmlrf_ms'] = _median_ms(ours, repeats, device)
        row[f'{name}_ratio'] = row[f'{name}_mmlrf_ms'] / row[f'{name}_torch_ms']
    row['max_rel_diff'] = diff
    return row
