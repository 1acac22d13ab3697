"""Operators below the model layer (no mmlrf model code imported here)."""
