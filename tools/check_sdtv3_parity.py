"""Check mmlrf's SDT-V3 segmentor against an official parity fixture directory.

Builds our model from the fixture's ``tiny_model.json`` (any size, class count or input shapes
in that format), converts and strictly loads ``tiny_state_dict.pt``, runs ``inputs.pt`` and
compares every tensor of ``expected.pt`` with ``allclose(rtol=1e-4, atol=1e-4)`` plus the
per-neuron spike-level counts. Prints the max abs difference per tensor; exits 1 on mismatch.

Usage::

    python tools/check_sdtv3_parity.py FIXTURE_DIR [--dtype float32|float64]
"""
from __future__ import annotations

import argparse
import sys

import mmlrf  # noqa: F401  (must precede mmseg: compat fixes + registration)
from mmlrf.convert.parity import DTYPES, check_fixture


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='SDT-V3 parity check against a fixture')
    parser.add_argument('fixture_dir', help='directory with tiny_model.json, tiny_state_dict.pt, '
                        'inputs.pt, expected.pt')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='computation dtype (default: %(default)s)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = check_fixture(args.fixture_dir, DTYPES[args.dtype])
    print(result.format())
    return 0 if result.ok else 1


if __name__ == '__main__':
    sys.exit(main())
