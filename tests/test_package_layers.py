"""The package's import structure: sub-packages import only lower layers, no module imports
``mmlrf`` inside a function or class body (the way an import cycle gets hidden), and the
module-level import graph has no cycle."""
import ast
import os.path as osp
from pathlib import Path

import pytest

import mmlrf

ROOT = Path(osp.dirname(mmlrf.__file__))
#: Rank of each part of the package: a module may import its own part and lower ranks only.
LAYERS = {
    'compat': 0, 'utils': 0, 'registry': 0,
    'ops': 1, 'interop': 1,
    'inference': 2,
    'models': 3, 'datasets': 3,
    'engine': 4, 'convert': 4, 'analysis': 4,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path, source: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported mmlrf module, line, inside a function or class) of every import in the module
    at ``path`` (its ``source``, read from the file by default)."""
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    nested = {id(node) for scope in ast.walk(tree)
              if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              for node in ast.walk(scope)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                targets = ['.'.join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module or '']
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in nested) for t in targets
                  if t == 'mmlrf' or t.startswith('mmlrf.')]
    return found


def _part(module: str) -> str:
    return module.split('.')[1] if '.' in module else ''


MODULES = sorted(ROOT.rglob('*.py'))
GRAPH = {_module_name(p): _imports(p) for p in MODULES}


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(name) for name in GRAPH} - {''}
    assert parts == set(LAYERS), f'parts without a layer: {sorted(parts - set(LAYERS))}'


@pytest.mark.parametrize('module', sorted(GRAPH))
def test_imports_go_to_lower_layers_at_module_level(module):
    for target, line, nested in GRAPH[module]:
        where = f'{module}:{line} imports {target}'
        assert not nested, f'{where} inside a function or class'
        if _part(module) and _part(target) != _part(module):
            assert LAYERS[_part(target)] < LAYERS[_part(module)], f'{where}: an upward import'


def test_module_import_graph_has_no_cycle():
    def resolve(target: str) -> str:  # ``from .x import name``: the module x, else its package
        while target not in GRAPH:
            target = target.rpartition('.')[0]
        return target

    edges = {m: {resolve(t) for t, _, _ in imports} - {m} for m, imports in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                # a package's __init__ re-exporting its own modules is not a cycle
                if not all(c.startswith(nxt + '.') or c == nxt for c in cycle):
                    pytest.fail('import cycle: ' + ' -> '.join(cycle))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_checks_see_an_upward_and_a_nested_import():
    bad = ROOT / 'ops' / '_layer_probe.py'
    source = 'from ..models import mixers\n\ndef f():\n    from mmlrf import utils\n'
    found = _imports(bad, source)
    assert found == [('mmlrf.models', 1, False), ('mmlrf', 4, True)]
    assert LAYERS[_part('mmlrf.models')] > LAYERS[_part(_module_name(bad))]
