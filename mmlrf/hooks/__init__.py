"""mmlrf.hooks."""
