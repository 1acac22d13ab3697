"""Measurement tools, imported on demand (``import mmlrf`` stays light): :mod:`.benchmark`
(memory and speed), :mod:`.energy`, :mod:`.locality`, :mod:`.profile`; their methods
(:mod:`.memory`), inputs (:mod:`.loading`) and files (:mod:`.report`). Command lines:
``tools/analysis/``."""
