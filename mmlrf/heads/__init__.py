"""mmlrf.heads."""
