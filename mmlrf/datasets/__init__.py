"""mmlrf.datasets."""
