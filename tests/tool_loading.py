"""Test helper: import a command-line script of ``tools/`` as a module, to call its ``main``."""
from __future__ import annotations

import importlib.util
import os.path as osp
from types import ModuleType

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (``name`` may include a folder: ``'analysis/benchmark'``)."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name.replace("/", "_")}',
                                                  osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
