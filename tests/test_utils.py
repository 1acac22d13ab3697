"""Helpers shared by the whole package: positive-integer checks and whether a tensor may be
changed in place."""
import pytest
import torch

from mmlrf.utils import check_positive_int, writable


@pytest.mark.parametrize('value, expected', [(1, 1), (7, 7), (3.0, 3)])
def test_check_positive_int_accepts_and_returns_an_int(value, expected):
    out = check_positive_int(value, 'strips')
    assert out == expected and type(out) is int


@pytest.mark.parametrize('value', [0, -2, 1.5, True, '3', None, float('inf'), float('nan')])
def test_check_positive_int_refuses_naming_the_argument(value):
    with pytest.raises(ValueError, match='num_heads must be a positive integer'):
        check_positive_int(value, 'num_heads')


def test_writable():
    assert writable(torch.zeros(2))
    with torch.inference_mode():
        frozen = torch.zeros(2)
        assert writable(frozen)  # inside inference mode it may be changed
    assert not writable(frozen)  # outside, PyTorch refuses in-place updates
    with torch.no_grad():
        assert not writable(frozen)
