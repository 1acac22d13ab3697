"""Triton kernels of the dendritic operator (imported only where Triton is)."""
