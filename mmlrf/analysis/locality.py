"""Locality of token mixing: token-to-token weight against Manhattan distance, entropy, and the
effective receptive field (the paper's Fig. 2 and Fig. 5a).

Every mixer here is affine and channel-diagonal in V once Q, K (and X) are fixed: SSA's
``∂out[c, n] / ∂v[c, m]`` is ``s · q_n·k_m`` (the softmax-free attention map), the LRF branch's
its depth-wise kernel taps, the dendritic operator's its impulse response on the scan order.
:func:`token_influence` measures this *token-to-token weight* as ``W[n, m] = mean_c |f(e_m) -
f(0)|[c, n]``, ``e_m`` the one-hot of token m in every channel; each query's row is normalised
to sum to 1. ``histogram[d]``: the mean weight at distance d over queries (sums to 1);
``local_mass``: the weight at d ≤ ``radius``, half the grid's shorter side (a fixed distance
would measure the grid, not the mixer: on a 4×4 grid every token is within distance 6);
``entropy``: the mean Shannon entropy of the rows over log N (0: one key, 1: uniform);
``mean_distance``: the mean over queries.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..models.mixers import TokenMixer
from .report import new_figure, save_figure

STATS = ('local_mass', 'entropy', 'mean_distance')


def local_radius(h: int, w: int) -> int:
    """The radius of ``local_mass`` on an h×w grid: half the shorter side, at least 1."""
    return max(1, min(h, w) // 2)


def manhattan_distances(h: int, w: int) -> Tensor:
    """``[N, N]`` Manhattan distances between the tokens of an h×w grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None]).abs() + (xs[:, None] - xs[None]).abs()


def locality_stats(weights: Tensor, h: int, w: int) -> dict:
    """The :data:`STATS`, their ``radius`` (:func:`local_radius`) and the distance
    ``histogram`` (a list, index = distance) of a non-negative ``[N, N]`` (query × key) map on an
    h×w grid, over the queries with any weight (rows are normalised here)."""
    p = weights.double()
    rows = p.sum(-1) > 0
    p = p[rows] / p[rows].sum(-1, keepdim=True)
    dist = manhattan_distances(h, w)[rows]
    hist = torch.zeros(h + w - 1, dtype=torch.float64).index_add_(0, dist.flatten(), p.flatten())
    hist /= max(int(rows.sum()), 1)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    entropy = float(-plogp.sum(-1).mean() / math.log(h * w)) if h * w > 1 else 0.0
    radius = local_radius(h, w)
    return dict(histogram=hist.tolist(), radius=radius, local_mass=float(hist[:radius + 1].sum()),
                entropy=entropy, mean_distance=float((p * dist).sum(-1).mean()))


def token_influence(fn: Callable[[Tensor], Tensor], v_shape: tuple[int, int, int],
                    chunk: int = 256, device: str | torch.device = 'cpu') -> Tensor:
    """``W[n, m] = mean_c |fn(e_m) - fn(0)|[c, n]`` (``[N, N]``, query × key, on the CPU) of a
    batch-independent ``fn``: ``[1, B, Cv, H, W] → [1, B, C_out, H, W]`` affine in V, run on
    ``device`` with ``chunk`` one-hot inputs per call; ``v_shape`` is ``(Cv, H, W)``."""
    cv, h, w = v_shape
    n = h * w
    cols = []
    with torch.no_grad():
        zero = fn(torch.zeros(1, 1, cv, h, w, device=device))
        for start in range(0, n, chunk):
            m = torch.arange(start, min(start + chunk, n))
            onehot = torch.zeros(len(m), n, device=device)
            onehot[torch.arange(len(m)), m] = 1.0
            v = onehot[:, None, :].expand(len(m), cv, n).reshape(1, len(m), cv, h, w)
            cols.append((fn(v) - zero)[0].abs().mean(1).flatten(1))  # [keys m, queries n]
    return torch.cat(cols).T.contiguous().cpu()


def mixer_influence(mixer: nn.Module, q: Tensor | None, k: Tensor | None, v: Tensor,
                    x: Tensor | None) -> Tensor:
    """:func:`token_influence` of a token mixer with Q, K, X (``[T, B, C, H, W]`` or None)
    fixed to their first frame and image; only the shape and device of ``v`` are used."""
    def fn(vv: Tensor) -> Tensor:
        q1, k1, x1 = (None if t is None else t[:1, :1].expand(1, vv.shape[1], *t.shape[2:])
                      for t in (q, k, x))
        return mixer(q1, k1, vv, x1)
    return token_influence(fn, tuple(v.shape[2:]), device=v.device)


def capture_mixer_inputs(model: nn.Module, run: Callable[[], object]) -> list[tuple]:
    """``(name, mixer, q, k, v, x)`` (copies) of every token-mixer call of ``run()``."""
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: calls.append(
        (name, mod, *[None if a is None else a.detach().clone() for a in args])))
        for name, m in model.named_modules() if isinstance(m, TokenMixer)]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def effective_receptive_field(backbone: nn.Module, images: Tensor, level: int = -1) -> Tensor:
    """``|∂ Σ_c f[c, centre] / ∂ image|`` of the backbone's map ``level`` (a tuple of
    ``[B, C, h, w]``) for ``images`` ``[B, 3, H, W]``, summed over colour channels, averaged over
    images, normalised to max 1: ``[H, W]`` on the CPU (the paper's Fig. 5a)."""
    x = images.clone().requires_grad_(True)
    feat = backbone(x)[level]
    feat[:, :, feat.shape[-2] // 2, feat.shape[-1] // 2].sum().backward()
    erf = x.grad.abs().sum(1).mean(0)
    return (erf / erf.max().clamp_min(1e-30)).cpu()


def analyse_model(model: nn.Module, images: Tensor, max_tokens: int = 1024,
                  erf_images: int = 2) -> dict:
    """Locality of every token-mixer call of a segmentor on ``images[:1]``, and the ERF of its
    backbone's last map over ``images[:erf_images]``.

    Returns:
        dict: ``layers`` (``name, mixer, grid`` and :func:`locality_stats`, or ``skipped``: more
        than ``max_tokens`` tokens, or no weight at all), ``mean`` (the histogram and
        :data:`STATS` averaged over the layers measured; None without any) and ``erf``
        (``[H, W]`` list; None without a ``backbone``).
    """
    model.eval()
    layers = []
    for name, mixer, q, k, v, x in capture_mixer_inputs(
            model, lambda: model(images[:1], mode='tensor')):
        h, w = v.shape[-2:]
        row = dict(name=name, mixer=type(mixer).__name__, grid=[h, w])
        weights = mixer_influence(mixer, q, k, v, x) if h * w <= max_tokens else None
        if weights is None:
            row['skipped'] = f'{h * w} tokens > max_tokens={max_tokens}'
        elif not weights.any():
            row['skipped'] = 'no token-to-token weight (e.g. Q or K silent)'
        else:
            row.update(locality_stats(weights, h, w))
        layers.append(row)
    done = [r for r in layers if 'histogram' in r]
    mean = None
    if done:
        hist = torch.zeros(max(len(r['histogram']) for r in done), dtype=torch.float64)
        for r in done:
            hist[:len(r['histogram'])] += torch.tensor(r['histogram'], dtype=hist.dtype)
        hist /= len(done)
        mean = dict(histogram=hist.tolist(),
                    **{key: sum(r[key] for r in done) / len(done) for key in STATS})
    erf = None
    if hasattr(model, 'backbone'):
        erf = effective_receptive_field(model.backbone, images[:erf_images]).tolist()
    return dict(layers=layers, mean=mean, erf=erf)


def plot_locality(report: dict, path: str, title: str) -> None:
    """One PNG: each layer's distance histogram (faint), their mean (bars) and the ERF map."""
    erf = report['erf']
    fig, axes = new_figure(1, 1 + (erf is not None), size=(12 if erf is not None else 7, 4))
    for r in report['layers']:
        if 'histogram' in r:
            axes[0].plot(r['histogram'], color='0.8', lw=0.8)
    if report['mean']:
        axes[0].bar(range(len(report['mean']['histogram'])), report['mean']['histogram'],
                    alpha=0.7, label='mean over layers')
        axes[0].legend()
    axes[0].set(xlabel='Manhattan distance (tokens)', ylabel='attention-weight mass',
                title=title)
    if erf is not None:
        fig.colorbar(axes[1].imshow(erf, cmap='viridis'), ax=axes[1])
        axes[1].set_title('effective receptive field')
    save_figure(fig, path)
