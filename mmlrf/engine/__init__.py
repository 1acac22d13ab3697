"""Runner-side pieces: mmengine hooks."""
from . import hooks  # noqa: F401
