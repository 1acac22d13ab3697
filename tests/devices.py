"""Test helper: the marker of tests that need a CUDA device (skipped without one)."""
import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
