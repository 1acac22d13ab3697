"""Building mmlrf components from the mmseg registry, whatever runner scope is active."""
from __future__ import annotations

from typing import Any

from mmengine.registry import DefaultScope
from mmseg.registry import MODELS


def build_component(cfg: dict) -> Any:
    """Build ``cfg`` from mmseg's ``MODELS`` inside the 'mmseg' scope.

    mmlrf's sub-components (neurons, token mixers) live in mmseg's registry; under another
    runner scope (e.g. ``default_scope='mmpretrain'``) a plain ``MODELS.build`` would look them
    up in that scope's registry and fail.
    """
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg)
