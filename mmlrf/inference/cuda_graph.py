"""Fixed-shape inference replayed as one CUDA graph (no per-kernel launch overhead)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


class GraphedForward:
    """``forward(x)`` captured once as a CUDA graph for ``example``'s shape, then replayed.

    A spiking segmentor launches thousands of small kernels per image (neurons, BN, residual
    adds); replaying them as one graph removes the CPU launch path and the gaps between kernels.
    Capture follows PyTorch's recipe: ``warmup`` eager calls on a side stream (they also run
    Triton autotuning and other lazy set-up, which cannot happen during capture), then one
    captured call. The model must not synchronise with the host in its forward pass (mmlrf's
    inference path does not; ``parameterization='tridiagonal'`` dynamics would). The graph keeps
    its own memory pool, about the eager peak of one call, until this object is deleted. It reads
    the tensors ``forward`` reaches (parameters, buffers, cached kernel parameters) in place, so
    this object keeps ``forward``, and with it the model, alive: a replay never reads freed
    memory, even when the caller drops its own references.

    Args:
        forward (Callable[[Tensor], Any]): one inference pass, e.g.
            ``lambda x: model(x, mode='tensor')``; called under ``torch.no_grad()``.
        example (Tensor): a CUDA input with the shape, dtype and device of every later input.
        warmup (int): eager calls before the capture (>= 1).

    Raises:
        ValueError: if ``example`` is not a CUDA tensor or ``warmup`` < 1.

    Example::

        graphed = GraphedForward(lambda x: model(x, mode='tensor'), frame)
        for frame in frames:            # each [1, 3, 1024, 2048] on the GPU
            logits = graphed(frame)     # overwritten by the next call: clone() to keep it
    """

    def __init__(self, forward: Callable[[Tensor], Any], example: Tensor,
                 warmup: int = 3) -> None:
        if not (isinstance(example, Tensor) and example.is_cuda):
            raise ValueError('GraphedForward needs a CUDA example input, got '
                             f'{getattr(example, "device", type(example))}')
        if warmup < 1:
            raise ValueError(f'warmup must be >= 1, got {warmup}')
        self.forward = forward
        self.static_input = example.detach().clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):
                forward(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = forward(self.static_input)

    def __call__(self, x: Tensor) -> Any:
        """Copy ``x`` into the captured input and replay; returns the captured output.

        Raises:
            ValueError: if ``x`` differs from the example in shape, dtype or device.
        """
        ref = self.static_input
        if (x.shape, x.dtype, x.device) != (ref.shape, ref.dtype, ref.device):
            raise ValueError(f'the graph was captured for {tuple(ref.shape)} {ref.dtype} on '
                             f'{ref.device}, got {tuple(x.shape)} {x.dtype} on {x.device}')
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output
