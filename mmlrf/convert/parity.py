"""Check mmlrf's SDT-V3 segmentor against an official parity fixture directory.

A fixture directory (format ``sdtv3-parity-fixture/1``) holds ``tiny_model.json`` (official
constructor arguments), ``tiny_state_dict.pt`` (official segmentor state dict), ``inputs.pt``
(image batches by name) and ``expected.pt`` (per input: 4 backbone maps, 4 neck maps, logits;
plus ``spike_layers`` and ``spike_level_counts``, the per-neuron counts of output levels 0..D in
execution order).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models.neurons import MultiSpike
from .sdtv3 import SDTV3Segmentor, convert_official_state_dict, mmlrf_config_from_official

#: Tolerance recommended by the fixture README (``torch.allclose``).
RTOL = ATOL = 1e-4
DTYPES = {'float32': torch.float32, 'float64': torch.float64}


@dataclass
class ParityResult:
    """Outcome of :func:`check_fixture`.

    Attributes:
        rows (list[tuple[str, str, tuple, float, bool]]): ``(input, tensor, shape, max abs
            diff, within tolerance)`` for every expected tensor.
        spike_mismatches (list[str]): one line per input whose per-neuron level counts (or
            neuron names) differ, naming the first differing neuron.
        errors (list[str]): structural problems (shapes, conversion, neuron count).
    """

    rows: list[tuple[str, str, tuple, float, bool]] = field(default_factory=list)
    spike_mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.spike_mismatches and all(r[4] for r in self.rows)

    @property
    def worst(self) -> float:
        return max((r[3] for r in self.rows), default=float('inf'))

    def format(self) -> str:
        lines = [f'{name} {tag:<12} {str(shape):<18} max|diff| {err:.2e}'
                 + ('' if good else '  MISMATCH') for name, tag, shape, err, good in self.rows]
        lines += [f'spike counts: {m}' for m in self.spike_mismatches]
        lines += [f'error: {e}' for e in self.errors]
        lines.append(f'worst max|diff| {self.worst:.2e}; '
                     + ('PASS' if self.ok else 'FAIL'))
        return '\n'.join(lines)


def load_fixture(fixture_dir: str | Path) -> tuple[dict, dict, dict, dict]:
    """Return ``(cfg, state_dict, inputs, expected)`` of a fixture directory."""
    root = Path(fixture_dir)
    cfg = json.loads((root / 'tiny_model.json').read_text())

    def load(name: str):
        return torch.load(root / name, map_location='cpu', weights_only=True)

    return cfg, load('tiny_state_dict.pt'), load('inputs.pt'), load('expected.pt')


@contextmanager
def record_spike_levels(model: nn.Module) -> Iterator[list[tuple[str, Tensor]]]:
    """Record ``(module name, counts of output levels 0..D)`` for every :class:`MultiSpike`
    call inside ``model``, in execution order (counted on the neuron input as
    ``bincount(round(clamp(x, 0, D)))``)."""
    records: list[tuple[str, Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, MultiSpike):
            def hook(mod: MultiSpike, args: tuple, name: str = name) -> None:
                levels = torch.round(torch.clamp(args[0].detach(), 0, mod.max_value)).long()
                records.append((name, torch.bincount(levels.flatten().cpu(),
                                                     minlength=mod.max_value + 1)))
            handles.append(module.register_forward_pre_hook(hook))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _compare_spikes(name: str, records: list[tuple[str, Tensor]], layers: list[str],
                    counts: Tensor) -> str | None:
    if len(records) != len(layers):
        return f'{name}: {len(records)} neuron calls, expected {len(layers)}'
    for i, ((got_name, got), want_name, want) in enumerate(zip(records, layers, counts)):
        if got_name != want_name or not torch.equal(got, want.to(got.dtype)):
            return (f'{name}: first difference at neuron #{i} {want_name} (ours {got_name}): '
                    f'{got.tolist()} vs expected {want.tolist()}')
    return None


def check_fixture(fixture_dir: str | Path, dtype: torch.dtype = torch.float32,
                  rtol: float = RTOL, atol: float = ATOL) -> ParityResult:
    """Build our model from the fixture's ``tiny_model.json``, convert and strictly load its
    state dict, run every input and compare every expected tensor and spike-level count.

    Args:
        fixture_dir (str | Path): the fixture directory.
        dtype (torch.dtype): computation dtype (float32 or float64).
        rtol, atol (float): ``torch.allclose`` tolerances.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg, state, inputs, expected = load_fixture(fixture_dir)
    result = ParityResult()
    model = SDTV3Segmentor(**mmlrf_config_from_official(cfg))
    converted, report = convert_official_state_dict(
        state, target={k: v.shape for k, v in model.state_dict().items()})
    if not report.ok:
        result.errors.append('conversion is partial:\n' + report.format())
        return result
    model.load_state_dict(converted, strict=True)
    model = model.to(dtype).eval()
    layers = expected.get('spike_layers')
    with torch.no_grad():
        for name, x in inputs.items():
            ref = expected[name]
            with record_spike_levels(model) as records:
                feats, neck, logits = model.forward_parts(x.to(dtype))
            pairs = [(f'backbone[{i}]', a, b)
                     for i, (a, b) in enumerate(zip(feats, ref['backbone']))]
            pairs += [(f'neck[{i}]', a, b) for i, (a, b) in enumerate(zip(neck, ref['neck']))]
            pairs.append(('logits', logits, ref['logits']))
            if len(feats) != len(ref['backbone']) or len(neck) != len(ref['neck']):
                result.errors.append(f'{name}: {len(feats)} backbone / {len(neck)} neck maps, '
                                     f'expected {len(ref["backbone"])} / {len(ref["neck"])}')
            for tag, got, want in pairs:
                got, want = got.double(), want.double()
                if got.shape != want.shape:
                    result.errors.append(f'{name} {tag}: shape {tuple(got.shape)} vs expected '
                                         f'{tuple(want.shape)}')
                    continue
                err = (got - want).abs().max().item()
                result.rows.append((name, tag, tuple(want.shape), err,
                                    torch.allclose(got, want, rtol=rtol, atol=atol)))
            if layers is not None:
                mismatch = _compare_spikes(name, records, layers,
                                           expected['spike_level_counts'][name])
                if mismatch:
                    result.spike_mismatches.append(mismatch)
    return result
