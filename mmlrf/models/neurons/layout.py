"""Layout checks for multi-step spiking tensors ``[T, B, ...]``."""
from __future__ import annotations

from torch import Tensor


def check_multistep(x: Tensor, ndim: int | None, name: str = 'input') -> None:
    """Reject a tensor that is not in the expected multi-step layout.

    A common bug in the field is feeding ``[T*B, C, H, W]`` to a neuron that treats dim 0 as
    time: with ``ndim=5`` the 4-D tensor is refused instead of silently mixing the batch into time.

    Args:
        x (Tensor): the tensor, expected ``[T, B, ...]`` with ``ndim`` dimensions.
        ndim (int | None): expected rank, or None to accept any rank >= 2.
        name (str): name used in the error message.
    """
    if ndim is None:
        if x.dim() < 2:
            raise ValueError(f'{name} must be [T, B, ...], got shape {tuple(x.shape)}')
    elif x.dim() != ndim:
        raise ValueError(
            f'{name} must have {ndim} dims in the multi-step layout [T, B, ...] '
            f'(e.g. [T, B, C, H, W] for ndim=5), got shape {tuple(x.shape)}; '
            'did you flatten T into the batch?')
