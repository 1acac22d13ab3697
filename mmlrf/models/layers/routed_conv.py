"""``RoutedConv2d``: a convolution routed around slow oneDNN kernels on the CPU, saving a
multi-spike input as its 1-byte code. Opt-in: ``conv_cfg=dict(type='RoutedConv2d')``.

On the CPU, oneDNN runs an ``NCHW`` convolution on blocked copies of its input and output
(reorders), and its depth-wise backward is much slower than its forward (docs/benchmarks.md).
Two kinds of convolution have a faster exact route there:

- **point-wise** (1×1, stride 1, no padding, one group) on a contiguous ``NCHW`` input: a
  batched matrix product ``W[C_out, C_in] @ x[B, C_in, H·W]``; its gradients are matrix products
  too (input: ``Wᵀ @ grad``; weight: ``Σ_b grad_b @ x_bᵀ``). No reorder copies: a wide last
  1×1 (the classifier at stride 2) stops setting the inference peak.
- **depth-wise backward** (``groups == C_in == C_out``, stride 1): both gradients are depth-wise
  forward convolutions:

  - input gradient: the output gradient convolved with the spatially flipped kernel, padding
    ``dilation·(K−1) − padding``;
  - weight gradient: per image and channel, the zero-padded input correlated with the output
    gradient used as a ``H_out × W_out`` kernel at stride ``dilation`` (a grouped convolution
    with one group per (image, channel)), summed over the batch.

:func:`conv2d_forward` and :func:`conv2d_backward` take these routes where they apply and call
``F.conv2d`` / ``aten::convolution_backward`` (what autograd calls,
:func:`torch_conv2d_backward`) everywhere else, so results equal the plain convolution's up to
float summation order. On the GPU nothing changes but the spike codes.

**Spike codes.** A conv saves its input for the weight gradient. When that input is a
:class:`~mmlrf.models.neurons.MultiSpike` output ``level / norm`` recorded by autograd,
:class:`RoutedConv2d` saves the neuron's ``uint8`` code instead (the tensor the neuron saves
anyway, :func:`~mmlrf.models.neurons.multispike.spike_code_of`) and decodes the spikes, bitwise
equal, in backward: the pair neuron → conv keeps 1 byte per input element for backward instead
of 8. On every device, whatever hooks the conv has (they run as usual); not for neurons built
with ``share_code=False``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..neurons.multispike import decode_spikes, spike_code_of


def _pairs(value: int | tuple) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _has_default_strides(t: Tensor) -> bool:
    """True if ``t``'s strides are exactly those of a new contiguous tensor (a 1×1 weight
    stored channels-last passes ``is_contiguous()`` but has other strides)."""
    step, strides = 1, []
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    return tuple(t.stride()) == tuple(reversed(strides))


def pointwise_applies(x: Tensor, weight: Tensor, stride: tuple, padding: tuple,
                      groups: int) -> bool:
    """True if the conv is a CPU matrix product (:func:`conv2d_forward`): a contiguous ``NCHW``
    CPU input, a 1×1 ``NCHW`` weight (``F.conv2d`` would answer ``NCHW`` too; a channels-last
    weight makes it answer channels-last), stride 1, no padding, one group."""
    return (x.device.type == 'cpu' and x.dim() == 4 and x.is_contiguous()
            and weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1)
            and _has_default_strides(weight) and groups == 1
            and _pairs(stride) == (1, 1) and _pairs(padding) == (0, 0))


def _pointwise_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[B, C_in, H, W]`` → ``[B, C_out, H, W]``: ``W @ x`` per image, plus the bias."""
    b, c, h, w = x.shape
    k = weight.shape[0]
    mat = weight.reshape(1, k, c).expand(b, k, c)
    flat = x.view(b, c, h * w)
    y = torch.bmm(mat, flat) if bias is None else torch.baddbmm(bias.view(1, k, 1), mat, flat)
    return y.view(b, k, h, w)


def _pointwise_grads(grad: Tensor, x: Tensor, weight: Tensor,
                     mask: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """(input, weight) gradients of a 1×1 conv as matrix products."""
    b, c, h, w = x.shape
    k = weight.shape[0]
    g = grad.reshape(b, k, h * w)
    g_x = g_w = None
    if mask[0]:
        g_x = torch.matmul(weight.reshape(k, c).t(), g).view(b, c, h, w)
    if mask[1]:
        g_w = torch.bmm(g, x.view(b, c, h * w).transpose(1, 2)).sum(0).view(k, c, 1, 1)
    return g_x, g_w


def depthwise_backward_applies(x: Tensor, weight: Tensor, stride: tuple, padding: tuple,
                               dilation: tuple, groups: int) -> bool:
    """True if :func:`conv2d_backward` uses the forward-convolution route for this conv:
    a CPU tensor, stride 1, ``groups == C_in == C_out`` and ``padding ≤ dilation·(K−1)``."""
    if x.device.type != 'cpu' or x.dim() != 4 or weight.dim() != 4:
        return False
    if not (groups == x.shape[1] == weight.shape[0] and weight.shape[1] == 1):
        return False
    stride, padding, dilation = _pairs(stride), _pairs(padding), _pairs(dilation)
    return stride == (1, 1) and all(
        0 <= p <= d * (k - 1) for p, d, k in zip(padding, dilation, weight.shape[2:]))


def _depthwise_grads(grad: Tensor, x: Tensor, weight: Tensor, padding: tuple, dilation: tuple,
                     mask: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """(input, weight) gradients of a stride-1 depth-wise conv as forward convolutions."""
    (ph, pw), (dh, dw) = _pairs(padding), _pairs(dilation)
    b, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    g_x = g_w = None
    if mask[0]:
        g_x = F.conv2d(grad, weight.flip(-2, -1), None, 1,
                       (dh * (kh - 1) - ph, dw * (kw - 1) - pw), (dh, dw), c)
    if mask[1]:
        ho, wo = grad.shape[2:]
        padded = F.pad(x, (pw, pw, ph, ph)).reshape(1, b * c, h + 2 * ph, w + 2 * pw)
        g_w = F.conv2d(padded, grad.reshape(b * c, 1, ho, wo), None, (dh, dw), 0, 1, b * c)
        g_w = g_w.reshape(b, c, 1, kh, kw).sum(0)
    return g_x, g_w


def torch_conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias_shape: tuple | None,
                          stride: tuple, padding: tuple, dilation: tuple, groups: int,
                          mask: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """``aten::convolution_backward``, the kernel autograd calls for ``F.conv2d`` (oneDNN on
    the CPU, cuDNN on CUDA); arguments and result as :func:`conv2d_backward`."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None if bias_shape is None else list(bias_shape), list(_pairs(stride)),
        list(_pairs(padding)), list(_pairs(dilation)), False, [0, 0], groups, list(mask))


def conv2d_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple,
                   padding: tuple, dilation: tuple, groups: int) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``, as a matrix product
    where :func:`pointwise_applies`.

    Shapes: ``[B, C_in, H, W]`` → ``[B, C_out, H_out, W_out]``.
    """
    if pointwise_applies(x, weight, stride, padding, groups):
        return _pointwise_forward(x, weight, bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv2d_backward(grad: Tensor, x: Tensor, weight: Tensor, bias_shape: tuple | None,
                    stride: tuple, padding: tuple, dilation: tuple, groups: int,
                    mask: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Gradients of ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``.

    Args:
        grad (Tensor): output gradient ``[B, C_out, H_out, W_out]``.
        x (Tensor): the conv input ``[B, C_in, H, W]``.
        weight (Tensor): ``[C_out, C_in / groups, K_h, K_w]``.
        bias_shape (tuple | None): the bias' shape, None without bias.
        stride, padding, dilation (tuple): the conv's geometry.
        groups (int): conv groups.
        mask (tuple[bool, bool, bool]): which of (input, weight, bias) gradients to compute.

    Returns:
        tuple: (input, weight, bias) gradients, None where not asked for.
    """
    if pointwise_applies(x, weight, stride, padding, groups):
        g_x, g_w = _pointwise_grads(grad, x, weight, mask[:2])
    elif depthwise_backward_applies(x, weight, stride, padding, dilation, groups):
        g_x, g_w = _depthwise_grads(grad, x, weight, padding, dilation, mask[:2])
    else:
        return torch_conv2d_backward(grad, x, weight, bias_shape, stride, padding, dilation,
                                     groups, mask)
    g_b = grad.sum((0, 2, 3)) if mask[2] and bias_shape is not None else None
    return g_x, g_w, g_b


class _Conv2dFn(torch.autograd.Function):
    """:func:`conv2d_forward` with its backward through :func:`conv2d_backward`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple,
                padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (None if bias is None else bias.shape, stride, padding, dilation, groups)
        return conv2d_forward(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        bias_shape, stride, padding, dilation, groups = ctx.conf
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                bias_shape is not None and ctx.needs_input_grad[2])
        g_x, g_w, g_b = conv2d_backward(grad, x, weight, bias_shape, stride, padding, dilation,
                                        groups, mask)
        return g_x, g_w, g_b, None, None, None, None


class _SpikeCodeConv2d(torch.autograd.Function):
    """:func:`conv2d_forward` of spikes ``s`` saving their 1-byte code instead of ``s``
    (backward through :func:`conv2d_backward` on the decoded spikes)."""

    @staticmethod
    def forward(ctx, s: Tensor, code: Tensor, norm: float, weight: Tensor, bias: Tensor | None,
                stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(code, weight)
        ctx.conf = (norm, s.shape, s.dtype, None if bias is None else bias.shape,
                    stride, padding, dilation, groups)
        return conv2d_forward(s, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        code, weight = ctx.saved_tensors
        norm, shape, dtype, bias_shape, stride, padding, dilation, groups = ctx.conf
        s = decode_spikes(code, norm, dtype).view(shape)
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[3],
                bias_shape is not None and ctx.needs_input_grad[4])
        g_s, g_w, g_b = conv2d_backward(grad, s, weight, bias_shape, stride, padding, dilation,
                                        groups, mask)
        return g_s, None, None, g_w, g_b, None, None, None, None


@MODELS.register_module()  # mmengine's root registry, as mmcv's conv layers: found in every scope
class RoutedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters, state-dict keys and outputs) whose CPU
    forward and backward take the routes of :func:`conv2d_forward` / :func:`conv2d_backward`,
    and which saves a multi-spike input as its 1-byte code (module docstring).

    Without autograd (inference) it runs :func:`conv2d_forward`. With autograd it saves the
    spike code of a :class:`~mmlrf.models.neurons.MultiSpike` output (not under ``torch.compile``,
    whose partitioner chooses what backward keeps), else runs :class:`_Conv2dFn` where a route
    applies. Under autocast, for non-zero padding modes and string paddings, and wherever
    neither applies (e.g. a GPU conv of a float input) it is exactly ``nn.Conv2d.forward``.

    Shapes: ``[B, C_in, H, W]`` → ``[B, C_out, H_out, W_out]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        if (self.padding_mode != 'zeros' or isinstance(self.padding, str)
                or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x)
        if not torch.is_grad_enabled():
            return conv2d_forward(x, self.weight, self.bias, *geometry)
        found = None if torch.compiler.is_compiling() else spike_code_of(x)
        if found is not None:
            return _SpikeCodeConv2d.apply(x, *found, self.weight, self.bias, *geometry)
        if (pointwise_applies(x, self.weight, self.stride, self.padding, self.groups)
                or depthwise_backward_applies(x, self.weight, *geometry)):
            return _Conv2dFn.apply(x, self.weight, self.bias, *geometry)
        return super().forward(x)
