"""mmlrf.backbones."""
