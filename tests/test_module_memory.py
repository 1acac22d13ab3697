"""Per-leaf-module memory of an inference pass (mmlrf.analysis.module_memory) and its CLI."""
import json
import os
import subprocess
import sys

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from torch import nn

from mmlrf.analysis.memory import CPU_MEASURE_ENV
from mmlrf.analysis.module_memory import format_leaf_memory, leaf_memory
from devices import needs_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = 'configs/toy/fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py'
TEMP_MIB = 64


class Temporary(nn.Module):
    """A leaf that fills a ``mib`` MiB temporary and returns ``x`` plus one of its values."""

    def __init__(self, mib: int) -> None:
        super().__init__()
        self.mib = mib

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(self.mib << 18, device=x.device)[0]


class Net(nn.Module):
    """Two small leaves around a leaf with a big temporary; ``outside_mib`` > 0 adds a
    temporary of that size in the parent's own code, between leaf calls."""

    def __init__(self, outside_mib: int = 0) -> None:
        super().__init__()
        self.first, self.big, self.last = nn.Identity(), Temporary(TEMP_MIB), nn.ReLU()
        self.outside_mib = outside_mib

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.big(self.first(x))
        if self.outside_mib:
            x = x + torch.ones(self.outside_mib << 18, device=x.device)[0]
        return self.last(x)


def measure(device: str) -> list[dict]:
    """``leaf_memory`` of ``Net()`` and ``Net(2 * TEMP_MIB)`` on ``device``."""
    dev = torch.device(device)
    x = torch.zeros(4, device=dev)
    return [leaf_memory(net, lambda net=net: net(x), dev) for net in (Net(), Net(2 * TEMP_MIB))]


def check(inside: dict, outside: dict) -> None:
    rows = {r['name']: r for r in inside['modules']}
    assert inside['modules'][0]['name'] == 'big' and rows['big']['calls'] == 1
    assert TEMP_MIB - 1 <= rows['big']['transient_mib'] < TEMP_MIB + 8
    assert rows['first']['transient_mib'] < 8 and rows['last']['transient_mib'] < 8
    assert inside['leaf_calls'] == 3 and not inside['outside_leaves']
    assert abs(inside['pass_peak_mib'] - inside['leaf_peak_mib']) < 1
    # the parent's own 128 MiB temporary, between leaf calls: the pass peaks outside the leaves
    assert outside['outside_leaves']
    assert outside['pass_peak_mib'] >= 2 * TEMP_MIB - 1 > outside['leaf_peak_mib']
    assert 'the pass peaks between leaf calls' in format_leaf_memory(outside)


def test_leaf_memory_on_cpu():
    """Measured in a process started with CPU_MEASURE_ENV (the CPU method needs it)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **CPU_MEASURE_ENV})
    assert proc.returncode == 0, proc.stderr[-2000:]
    check(*json.loads(proc.stdout.splitlines()[-1]))


@needs_cuda
def test_leaf_memory_on_cuda():
    check(*measure('cuda'))


def test_leaf_memory_argument_errors():
    with pytest.raises(ValueError, match='warmup must be >= 0'):
        leaf_memory(Net(), lambda: None, torch.device('cpu'), warmup=-1)
    with pytest.raises(ValueError, match='top >= 1'):
        leaf_memory(Net(), lambda: None, torch.device('cpu'), top=0)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join('tools', 'analysis', 'module_memory.py'),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_module_memory_tool(tmp_path):
    """The CLI on the toy LRF-Dyn segmentor (CPU: it reruns itself with CPU_MEASURE_ENV):
    the top rows, highest peak first, in the JSON; bad arguments are refused."""
    out = tmp_path / 'toy'
    proc = run_tool(TOY_CONFIG, '--device', 'cpu', '--resolution', '64x64', '--warmup', '1',
                    '--top', '5', '--fuse-conv-bn', '--out', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / 'toy.json').read_text())
    peaks = [r['peak_mib'] for r in report['modules']]
    assert len(peaks) == 5 and peaks == sorted(peaks, reverse=True)
    assert report['leaf_calls'] > 5 and report['fuse_conv_bn'] and report['device'] == 'cpu'
    # CPU figures are RSS counts, accurate to a fraction of a MiB
    assert report['pass_peak_mib'] > report['leaf_peak_mib'] - 1 and report['leaf_peak_mib'] > 0
    assert 'highest leaf call' in proc.stdout
    bad = run_tool(TOY_CONFIG, '--device', 'cpu', '--top', '0')
    assert bad.returncode != 0 and '--top >= 1' in bad.stderr
    missing = run_tool('configs/no_such.py', '--device', 'cpu')
    assert missing.returncode != 0 and 'config file not found' in missing.stderr


if __name__ == '__main__':  # the CPU measurement of test_leaf_memory_on_cpu
    print(json.dumps(measure('cpu')))
