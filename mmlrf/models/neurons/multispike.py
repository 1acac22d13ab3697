"""SDT-V3's stateless integer multi-spike neuron ("QTrick", T=1 × D)."""
from __future__ import annotations

import torch
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils import writable

#: Bit of a spike code that marks an input inside ``[0, D]`` (the STE passes its gradient).
INSIDE_BIT = 128
#: Largest ``max_value`` whose levels fit the low 7 bits of a ``uint8`` spike code.
MAX_CODE_LEVEL = INSIDE_BIT - 1


def spikes_and_code(x: Tensor, max_value: int, norm: float) -> tuple[Tensor, Tensor]:
    """The spikes ``round(clamp(x, 0, D)) / norm`` and their ``uint8`` code: the level
    ``round(clamp(x, 0, D))`` in bits 0-6, :data:`INSIDE_BIT` set where ``0 <= x <= D`` (the
    straight-through mask: exactly where clamping leaves ``x`` unchanged; never for NaN).

    One clamped copy of ``x`` is rounded and divided in place, so the pair costs 6 elementwise
    passes (the spikes alone cost 3), fewer than separate level and mask formulas.

    Returns:
        tuple[Tensor, Tensor]: spikes (``x``'s dtype) and code, each ``x``'s shape.
    """
    spikes = torch.clamp(x, 0, max_value)
    inside = spikes == x
    spikes.round_()
    code = spikes.to(torch.uint8).add_(inside, alpha=INSIDE_BIT)
    return spikes.div_(norm), code


def decode_spikes(code: Tensor, norm: float, dtype: torch.dtype) -> Tensor:
    """Spike values ``level / norm`` of a spike code (:func:`spikes_and_code`), bitwise equal to
    the neuron's output (the same integer divided by the same ``norm``)."""
    return code.bitwise_and(MAX_CODE_LEVEL).to(dtype).div_(norm)


class _MultiSpikeSTE(torch.autograd.Function):
    """``round(clamp(x, 0, D)) / norm`` (half to even) with a straight-through gradient inside
    [0, D]. Saves the 1-byte code of :func:`spikes_and_code` per element (not the float
    input)."""

    @staticmethod
    def forward(ctx, x: Tensor, max_value: int, norm: float, share_code: bool) -> Tensor:
        spikes, code = spikes_and_code(x, max_value, norm)
        ctx.save_for_backward(code)
        ctx.norm = norm
        # Read by spike-aware convs during the forward pass (spike_code_of); the same tensor as
        # the saved one, so it costs no memory beyond what backward keeps anyway.
        ctx.code = code if share_code else None
        if torch.compiler.is_compiling():
            # The same values decoded from the code (a NaN input gives 0, not NaN): inductor's
            # CPU code for both formulas side by side crashed (SIGSEGV) in a training step
            # (torch 2.13).
            return decode_spikes(code, norm, x.dtype)
        return spikes

    @staticmethod
    def backward(ctx, grad: Tensor):
        (code,) = ctx.saved_tensors
        ctx.code = None
        # the reference order: the division's gradient first, then the STE mask (a bool factor
        # is 1.0 / 0.0, so NaN and -0.0 propagate as with a float mask)
        return (grad / ctx.norm).mul_(code >= INSIDE_BIT), None, None, None


class _RoundClampSTE(torch.autograd.Function):
    """``round(clamp(x, 0, D))`` with the STE, saving the float input (for ``max_value`` above
    :data:`MAX_CODE_LEVEL`, which does not fit a ``uint8`` code)."""

    @staticmethod
    def forward(ctx, x: Tensor, max_value: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.max_value = max_value
        return torch.round(torch.clamp(x, 0, max_value))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        inside = (x >= 0) & (x <= ctx.max_value)
        return grad * inside.to(grad.dtype), None


_VIEW_NODES = ('ViewBackward0', 'UnsafeViewBackward0', 'ReshapeAliasBackward0',
               'SqueezeBackward0', 'SqueezeBackward1', 'SqueezeBackward2',
               'SqueezeBackward3', 'UnsqueezeBackward0')


def spike_code_of(x: Tensor) -> tuple[Tensor, float] | None:
    """The ``uint8`` code and ``norm`` of a :class:`MultiSpike` output, found through its
    autograd graph, or None.

    ``x`` qualifies when it is the output of a :class:`MultiSpike` call (while autograd records
    the graph) or an order-preserving view of it (``view``/``reshape``/``flatten``/
    ``(un)squeeze``, contiguous, same number of elements) that nothing modified in place since.
    Then ``x == decode_spikes(code, norm, x.dtype).view(x.shape)`` bitwise.
    """
    fn = x.grad_fn
    while fn is not None and type(fn).__name__ in _VIEW_NODES:
        fn = fn.next_functions[0][0]
    if fn is None or type(fn) is not _MultiSpikeSTE._backward_cls:
        return None
    code = getattr(fn, 'code', None)
    if code is None or code.numel() != x.numel() or not (code.is_contiguous()
                                                         and x.is_contiguous()):
        return None
    return code, fn.norm


@MODELS.register_module()
class MultiSpike(nn.Module):
    """Integer multi-spike neuron ``s(x) = round(clamp(x, 0, D)) / norm``.

    Stateless and elementwise: accepts any layout (``[T, B, ...]`` with T = 1 in SDT-V3).
    ``torch.round`` rounds half to even (0.5 → 0, 2.5 → 2), exactly as the official model.
    Outputs are multiples of ``1 / norm``; at inference each integer stands for up to D binary
    spikes.

    Memory: for backward the neuron saves a 1-byte code per element (level and STE mask,
    :func:`spikes_and_code`) instead of its float input; convs that consume the output directly
    (:class:`~mmlrf.models.layers.RoutedConv2d`) save the same code instead of the float
    spikes, unless ``share_code=False`` (activation checkpointing recomputes the spikes: a code
    kept for the convs would outlive the dropped activations).
    Without autograd the output costs one tensor (clamp, then round and divide in place), or
    none with ``inplace=True``.

    Args:
        max_value (int): D, the largest integer spike count (official: 4).
        norm (float | None): divisor of the integer output; None means ``max_value``
            (official: 4 in the backbone, the neck/head ``T`` argument elsewhere).
        share_code (bool): let the convs that read the output save its 1-byte code.
    """

    def __init__(self, max_value: int = 4, norm: float | None = None,
                 share_code: bool = True) -> None:
        super().__init__()
        if int(max_value) != max_value or max_value < 1:
            raise ValueError(f'max_value must be a positive integer, got {max_value}')
        if norm is not None and not norm > 0:
            raise ValueError(f'norm must be > 0, got {norm}')
        self.max_value = int(max_value)
        self.norm = float(norm if norm is not None else max_value)
        self.share_code = bool(share_code)

    def reset(self) -> None:
        """Stateless: nothing to reset (present for the common neuron interface)."""

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """Spikes of ``x`` (any shape).

        Args:
            x (Tensor): membrane input.
            inplace (bool): overwrite ``x`` with its spikes when autograd does not record this
                call (inference) and ``x`` is :func:`writable`; ignored otherwise. Only for
                inputs nothing else reads later.
        """
        if not (torch.is_grad_enabled() and x.requires_grad):
            out = (x.clamp_(0, self.max_value) if inplace and writable(x)
                   else torch.clamp(x, 0, self.max_value))
            return out.round_().div_(self.norm)
        if self.max_value > MAX_CODE_LEVEL:
            return _RoundClampSTE.apply(x, float(self.max_value)) / self.norm
        return _MultiSpikeSTE.apply(x, self.max_value, self.norm, self.share_code)

    def extra_repr(self) -> str:
        return f'max_value={self.max_value}, norm={self.norm}'
