"""Locality of token mixing: token-to-token weight vs Manhattan distance, entropy, and effective
receptive fields (the paper's Fig. 2 and Fig. 5a).

**Token-to-token weight.** Every mixer in this project is affine in V once Q, K (and X) are
fixed, and channel-diagonal in V: SSA gives ``∂out[c, n] / ∂v[c, m] = s · q_n·k_m`` (the
softmax-free attention map), the LRF branch gives its depth-wise kernel taps, the dendritic
dynamics its impulse response placed on the scan order. :func:`token_influence` measures exactly
that: ``W[n, m] = mean_c |mixer(q, k, e_m, x) - mixer(q, k, 0, x)|[c, n]`` with ``e_m`` the one-hot
of token m in every channel. For SSA this is the per-query |QKᵀ| map, for LRF-SSA it adds the LRF
kernels' taps, for LRF-Dyn it is the dynamics' impulse response plus the LRF kernels applied to it.
Rows are normalised to sum to 1 (a distribution over keys per query).

**Statistics.** ``histogram[d]`` = mean over queries of the weight mass at Manhattan distance d
(sums to 1); ``mass_within_5`` = mass at d ≤ 5; ``entropy`` = mean over queries of the Shannon
entropy of the row divided by log N (0: one key, 1: uniform).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


def manhattan_distances(h: int, w: int) -> Tensor:
    """``[N, N]`` Manhattan distances between tokens of an h×w grid in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None]).abs() + (xs[:, None] - xs[None]).abs()


def normalise_rows(weights: Tensor) -> Tensor:
    """Rows divided by their sum (all-zero rows stay zero)."""
    s = weights.sum(-1, keepdim=True)
    return torch.where(s > 0, weights / s.clamp_min(1e-30), torch.zeros_like(weights))


def locality_stats(weights: Tensor, h: int, w: int, near: int = 5) -> dict:
    """Distance histogram, mass within ``near`` and normalised entropy of an ``[N, N]`` map.

    Args:
        weights: non-negative ``[N, N]`` (query × key) weights; rows are normalised here.
        h, w: the token grid.
        near: the distance threshold of ``mass_within``.

    Returns:
        dict: ``histogram`` (list, index = distance, sums to 1 over queries with any weight),
        ``mass_within_<near>``, ``entropy``, ``mean_distance``.
    """
    p = normalise_rows(weights.double())
    rows = p.sum(-1) > 0
    p = p[rows]
    dist = manhattan_distances(h, w)[rows]
    hist = torch.zeros(h + w - 1, dtype=torch.float64)
    hist.index_add_(0, dist.flatten(), p.flatten())
    hist /= max(int(rows.sum()), 1)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    entropy = float((-plogp.sum(-1)).mean() / math.log(h * w)) if h * w > 1 else 0.0
    return {'histogram': hist.tolist(), f'mass_within_{near}': float(hist[:near + 1].sum()),
            'entropy': entropy, 'mean_distance': float((p * dist).sum(-1).mean())}


def token_influence(fn: Callable[[Tensor], Tensor], v_shape: tuple[int, int, int],
                    chunk: int = 256) -> Tensor:
    """``W[n, m] = mean_c |fn(e_m) - fn(0)|[c, n]`` for a map ``fn`` affine in V.

    Args:
        fn: ``[T=1, B, Cv, H, W] → [1, B, C_out, H, W]``, batch-independent.
        v_shape: ``(Cv, H, W)``.
        chunk: one-hot inputs per call.

    Returns:
        Tensor: ``[N, N]`` (query n × key m), not normalised.
    """
    cv, h, w = v_shape
    n = h * w
    with torch.no_grad():
        zero = fn(torch.zeros(1, 1, cv, h, w))
        cols = []
        for start in range(0, n, chunk):
            m = torch.arange(start, min(start + chunk, n))
            onehot = torch.zeros(len(m), n)
            onehot[torch.arange(len(m)), m] = 1.0
            v = onehot[:, None, :].expand(len(m), cv, n).reshape(1, len(m), cv, h, w)
            out = (fn(v) - zero)[0]                       # [chunk, C_out, H, W]
            cols.append(out.abs().mean(1).flatten(1))     # [chunk (key m), N (query n)]
    return torch.cat(cols).T.contiguous()


def mixer_influence(mixer: nn.Module, q: Tensor | None, k: Tensor | None, v: Tensor,
                    x: Tensor | None) -> Tensor:
    """:func:`token_influence` of a token mixer with Q, K, X fixed to one image's spikes.

    Args:
        q, k, x: ``[T, B, C, H, W]`` (first frame and image are used) or None.
        v: ``[T, B, Cv, H, W]`` (only its shape is used).
    """
    def first(t: Tensor | None, b: int) -> Tensor | None:
        return None if t is None else t[:1, :1].expand(1, b, *t.shape[2:])

    def fn(vv: Tensor) -> Tensor:
        b = vv.shape[1]
        return mixer(first(q, b), first(k, b), vv, first(x, b))
    return token_influence(fn, tuple(v.shape[2:]))


def capture_mixer_inputs(model: nn.Module, run: Callable[[], object]) -> list[tuple]:
    """Run ``run()`` and return ``(name, mixer, q, k, v, x)`` for every token-mixer call."""
    from ..attention import TokenMixer
    calls: list[tuple] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, TokenMixer):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: calls.append(
                    (name, mod, *[a.detach() if a is not None else None for a in args]))))
    try:
        with torch.no_grad():
            run()
    finally:
        for hd in handles:
            hd.remove()
    return calls


def effective_receptive_field(backbone: nn.Module, images: Tensor, level: int = -1) -> Tensor:
    """``|∂ Σ_c f[c, centre] / ∂ image|`` summed over colour channels, averaged over images,
    normalised to max 1 (the paper's Fig. 5a).

    Args:
        backbone: returns a tuple of ``[B, C, h, w]`` maps.
        images: ``[B, 3, H, W]``.
        level: which output map.

    Returns:
        Tensor: ``[H, W]``.
    """
    x = images.clone().requires_grad_(True)
    feat = backbone(x)[level]
    h, w = feat.shape[-2:]
    feat[:, :, h // 2, w // 2].sum().backward()
    erf = x.grad.abs().sum(1).mean(0)
    return erf / erf.max().clamp_min(1e-30)


def plot_locality(per_layer: list[dict], erf: Tensor | None, path: str, title: str) -> None:
    """Distance histograms (mean over layers, and each layer faintly) + the ERF map, one PNG."""
    from .plotting import new_figure, save_figure
    fig, axes = new_figure(1, 2 if erf is not None else 1, size=(12 if erf is not None else 7, 4))
    ax = axes[0]
    hists = [torch.tensor(r['histogram']) for r in per_layer]
    if hists:
        size = max(len(hh) for hh in hists)
        mean = torch.stack([torch.nn.functional.pad(hh, (0, size - len(hh))) for hh in hists]
                           ).mean(0)
        for hh in hists:
            ax.plot(range(len(hh)), hh.numpy(), color='0.8', lw=0.8)
        ax.bar(range(size), mean.numpy(), alpha=0.7, label='mean over layers')
        ax.legend()
    ax.set_xlabel('Manhattan distance (tokens)')
    ax.set_ylabel('attention-weight mass')
    ax.set_title(title)
    if erf is not None:
        im = axes[1].imshow(erf.numpy(), cmap='viridis')
        axes[1].set_title('effective receptive field')
        fig.colorbar(im, ax=axes[1])
    save_figure(fig, path)


def analyse_model(model: nn.Module, images: Tensor, max_tokens: int = 1024,
                  erf_images: int = 2) -> dict:
    """Locality statistics of every token-mixer call of a segmentor on ``images[:1]``, and the
    ERF of its backbone's last map over ``images[:erf_images]``.

    Layers with more than ``max_tokens`` tokens are listed as skipped (the map is N×N).

    Returns:
        dict: ``layers`` (``name, mixer, grid, histogram, mass_within_5, entropy,
        mean_distance`` or ``skipped``), ``mean`` (the layer-mean histogram and statistics),
        ``erf`` (``[H, W]`` list, or None when the model has no ``backbone``).
    """
    model.eval()
    calls = capture_mixer_inputs(model, lambda: model(images[:1], mode='tensor'))
    layers = []
    for name, mixer, q, k, v, x in calls:
        h, w = v.shape[-2:]
        row = dict(name=name, mixer=type(mixer).__name__, grid=[h, w])
        if h * w > max_tokens:
            row['skipped'] = f'{h * w} tokens > max_tokens={max_tokens}'
        else:
            row.update(locality_stats(mixer_influence(mixer, q, k, v, x), h, w))
        layers.append(row)
    done = [r for r in layers if 'histogram' in r]
    mean = None
    if done:
        size = max(len(r['histogram']) for r in done)
        hist = torch.zeros(size, dtype=torch.float64)
        for r in done:
            hist[:len(r['histogram'])] += torch.tensor(r['histogram'], dtype=torch.float64)
        hist /= len(done)
        mean = dict(histogram=hist.tolist(),
                    **{key: sum(r[key] for r in done) / len(done)
                       for key in ('mass_within_5', 'entropy', 'mean_distance')})
    erf = None
    if hasattr(model, 'backbone'):
        erf = effective_receptive_field(model.backbone, images[:erf_images]).tolist()
    return dict(layers=layers, mean=mean, erf=erf)
