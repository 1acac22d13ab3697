"""Matplotlib helpers (Agg backend, no display needed)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8, 5)):
    """A figure and a flat list of its axes."""
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig, path: str) -> None:
    """Save ``fig`` as a PNG (creating the folder) and close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
