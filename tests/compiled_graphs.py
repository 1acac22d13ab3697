"""Test helper: the ATen ops of the backward graph that ``torch.compile`` builds for a function,
after inductor's decompositions (what its code generator sees), without generating code."""
from __future__ import annotations

from typing import Callable

import torch

#: Ops that accumulate into indexed places. Inductor's CPU code for one fused into a transposed
#: tile can write out of bounds (torch 2.13).
SCATTER_ADDS = frozenset({'index_put', '_unsafe_index_put', 'index_add', 'scatter_add',
                          'scatter_reduce', 'unfold_backward', 'upsample_nearest2d_backward'})


def backward_ops(fn: Callable[..., torch.Tensor], *leaves: torch.Tensor) -> set[str]:
    """Names (``'bmm'``, ``'sum'``, ...) of the ops in the backward of ``fn(*leaves).sum()``
    compiled whole (``fullgraph``) by AOTAutograd with inductor's decompositions."""
    import torch._dynamo
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table
    torch._dynamo.reset()
    graphs = []

    def keep(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(gm)
        return make_boxed_func(gm.forward)
    backend = aot_autograd(fw_compiler=keep, bw_compiler=keep,
                           decompositions=select_decomp_table())
    leaves = tuple(t.detach().requires_grad_() for t in leaves)
    torch.compile(fn, fullgraph=True, backend=backend)(*leaves).sum().backward()
    assert len(graphs) == 2, f'expected a forward and a backward graph, got {len(graphs)}'
    return {str(n.target).split('.')[1] for n in graphs[1].graph.nodes
            if n.op == 'call_function' and str(n.target).startswith('aten.')}
