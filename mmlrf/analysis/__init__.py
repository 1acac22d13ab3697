"""mmlrf.analysis."""
