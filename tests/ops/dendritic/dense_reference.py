"""Test helper: the dendritic operator written out from its raw parameters with dense matrices
and plain loops (matrix_exp, solve, one token at a time, complex where the modes are),
independent of mmlrf's maths."""
from __future__ import annotations

import math

import torch

from mmlrf.ops.dendritic.reference import LEAK_MIN


def token_order(height: int, width: int, order: str) -> list[int]:
    """Row-major flat indices in scan order, written as plain loops."""
    if order == 'raster':
        return [i * width + j for i in range(height) for j in range(width)]
    if order == 'snake':
        return [i * width + (j if i % 2 == 0 else width - 1 - j)
                for i in range(height) for j in range(width)]
    return [i * width + j for j in range(width) for i in range(height)]


def pmsn_system(module, direction: int, channel: int):
    """(Ā, B̄, C) of one channel of a 'pmsn' module as explicit complex matrices:
    ``M = diag(−exp(log_a_real) + i·a_imag)``, ``Ā = matrix_exp(M Δ)``,
    ``B̄ = M⁻¹ (Ā − I) B`` by a linear solve, ``Δ = exp(log_dt)``."""
    lam = torch.complex(-torch.exp(module.log_a_real[direction, channel].detach().double()),
                        module.a_imag[direction, channel].detach().double())
    m = torch.diag_embed(lam)
    dt = math.exp(float(module.log_dt[direction, channel].detach()))
    a_bar = torch.linalg.matrix_exp(m * dt)
    b = torch.view_as_complex(module.b[direction, channel].detach().double().contiguous())
    c = torch.view_as_complex(module.c[direction, channel].detach().double().contiguous())
    eye = torch.eye(len(lam), dtype=torch.complex128)
    return a_bar, torch.linalg.solve(m, (a_bar - eye) @ b), c


def dense_system(module, direction: int, channel: int):
    """(Ā, B̄, c) of one channel from the raw parameters: dense M, matrix_exp, solve. A modal
    module's M is the diagonal one (tridiagonal with zero couplings); a 'pmsn' one is complex
    (:func:`pmsn_system`)."""
    if module.parameterization == 'pmsn':
        return pmsn_system(module, direction, channel)
    k = module.num_dendrites
    leak_raw = module.leak_raw[direction, channel].detach().double().tolist()
    if module.parameterization == 'modal':
        gamma = [0.0] * (k - 1)
    else:
        gamma = module.coupling[direction, channel].detach().double().tolist()
    m = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        left = abs(gamma[i - 1]) if i > 0 else 0.0
        right = abs(gamma[i]) if i < k - 1 else 0.0
        softplus = max(leak_raw[i], 0.0) + math.log1p(math.exp(-abs(leak_raw[i])))
        m[i, i] = -(LEAK_MIN + softplus + left + right)
        if i < k - 1:
            m[i, i + 1] = m[i + 1, i] = gamma[i]
    raw = float(module.dt_raw[direction, channel].detach())
    sig = 1 / (1 + math.exp(-raw)) if raw >= 0 else math.exp(raw) / (1 + math.exp(raw))
    dt = math.exp(math.log(module.dt_min)
                  + (math.log(module.dt_max) - math.log(module.dt_min)) * sig)
    a_bar = torch.linalg.matrix_exp(m * dt)
    b_bar = torch.linalg.solve(m, (a_bar - torch.eye(k, dtype=torch.float64))
                               @ module.b[direction, channel].detach().double())
    return a_bar, b_bar, module.c[direction, channel].detach().double()


def naive_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The module's operator on ``x`` ``[B, C, H, W]``: plain loops over channels and tokens in
    the original (non-modal) state basis, float64."""
    bsz, ch, height, width = x.shape
    flat = x.double().flatten(2)
    idx = token_order(height, width, module.order)
    y = module.d.detach().double()[None, :, None] * flat
    directions = [(0, idx)] + ([(1, idx[::-1])] if module.bidirectional else [])
    for direction, seq in directions:
        for c in range(ch):
            a_bar, b_bar, c_vec = dense_system(module, direction, c)
            for b in range(bsz):
                s = torch.zeros(module.num_dendrites, dtype=a_bar.dtype)
                for pos in seq:
                    s = a_bar @ s + b_bar * flat[b, c, pos]
                    y[b, c, pos] = y[b, c, pos] + (c_vec @ s).real
    return y.reshape(x.shape)


def randomise(module, scale: float = 0.5, seed: int = 0):
    """Add ``scale`` times a standard normal draw to every parameter (in place); returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| in double precision (complex128 for complex tensors)."""
    def wide(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.complex128 if t.is_complex() else torch.float64)
    return ((wide(a) - wide(b)).abs().max() / wide(b).abs().max()).item()
