"""Report files of the measurement tools: ``<out>.json`` and matplotlib (Agg) PNG figures."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import matplotlib

matplotlib.use('Agg')  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def command_line(tool: str, argv: list[str] | None = None) -> str:
    """The command a report records: ``tool`` and its arguments (``argv``, or the process's)."""
    return ' '.join([tool] + (sys.argv[1:] if argv is None else argv))


def run_meta(command: str, device: str = 'cpu') -> dict:
    """Where and how a report was made: date, versions, machine, torch threads, ``command``."""
    return dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device=device,
                gpu=torch.cuda.get_device_name(device) if device.startswith('cuda') else None,
                command=command)


def write_json(report: dict, path: str) -> None:
    """Write ``report`` to ``path`` as indented JSON, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8, 5)):
    """A figure and the flat list of its ``rows`` × ``cols`` axes."""
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig, path: str) -> None:
    """Save ``fig`` as a PNG at ``path`` (creating the folder) and close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
