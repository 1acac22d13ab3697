"""Test helper: the SDT-V3 parity fixture of the official code (``tests/data/sdtv3``, see its
README): a tiny model's weights, inputs and official outputs, and key/shape listings."""
from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / 'data' / 'sdtv3'
#: Widths of the fixture's tiny model.
TINY_DIMS = [8, 12, 24, 32]


def fixture_dir() -> Path:
    assert (FIXTURE / 'tiny_model.json').is_file(), f'SDT-V3 parity fixture not found at {FIXTURE}'
    return FIXTURE


def keys_json() -> dict:
    return json.loads((fixture_dir() / 'keys.json').read_text())
