"""``--cfg-options`` that must name something in the config.

mmengine merges any ``KEY=VALUE`` into a config: a typo (``default_hooks.checkpoint.intervall``)
adds a key nobody reads (here ``CheckpointHook`` passes it on to the save, which crashes at the
first checkpoint), and a top-level variable of the config file (``max_iters``, ``crop_size``)
was read once while the file was parsed, so setting it changes nothing. :func:`check_cfg_options`
refuses both before anything runs, suggesting the closest existing key or, for a variable, the
keys that took its value.

A key may still be new where the config leaves a constructor argument at its default: under a
dict with a ``type``, any named argument of that class's ``__init__`` is accepted
(``model.backbone.depths``), and so is any ``DataLoader`` argument under a dataloader. Anything
else is added on purpose by writing it with a leading ``+``: ``+model.test_cfg.crop_size=...``.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import mmseg.registry as mmseg_registry
from mmengine.runner import Runner
from torch.utils.data import DataLoader

#: The prefix that adds a key on purpose (checked by nothing).
ADD_PREFIX = '+'
#: Top-level keys the Runner or mmseg's tools read after parsing (every other top-level key is
#: a variable of the config file).
RUNTIME_KEYS = frozenset(
    [name for name in inspect.signature(Runner.__init__).parameters if name != 'self']
    + ['runner_type', 'model_wrapper_cfg', 'find_unused_parameters', 'compile', 'sync_bn',
       'activation_checkpointing', 'efficient_conv_bn_eval', 'custom_imports', 'tta_model',
       'tta_pipeline'])
DATALOADER_KEYS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
#: Registries a ``type`` is looked up in, in this order (mmseg's scope).
REGISTRIES = ('MODELS', 'HOOKS', 'DATASETS', 'TRANSFORMS', 'DATA_SAMPLERS', 'OPTIMIZERS',
              'OPTIM_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'METRICS',
              'EVALUATOR', 'LOOPS', 'VISUALIZERS', 'VISBACKENDS', 'LOG_PROCESSORS',
              'WEIGHT_INITIALIZERS')
#: Arguments a type takes besides its registered class's: mmlrf's strict ``Pretrained``.
EXTRA_ARGUMENTS = {'Pretrained': ('strict',)}


class CfgOptionError(ValueError):
    """A ``--cfg-options`` key names nothing the run would read."""


def constructor_arguments(obj: Any) -> set[str]:
    """Named arguments of a class's ``__init__`` along its MRO (or of a function)."""
    names: set[str] = set()
    functions = ([c.__dict__['__init__'] for c in inspect.getmro(obj) if '__init__' in c.__dict__]
                 if inspect.isclass(obj) else [obj])
    for fn in functions:
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        names.update(p.name for p in parameters if p.name != 'self' and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
    return names


def type_arguments(type_name: Any) -> set[str] | None:
    """Named arguments of the registered ``type`` (None if no registry knows it)."""
    if not isinstance(type_name, str):
        return constructor_arguments(type_name) if callable(type_name) else None
    for name in REGISTRIES:
        registry = getattr(mmseg_registry, name, None)
        obj = registry.get(type_name) if registry is not None else None
        if obj is not None:
            extra = EXTRA_ARGUMENTS.get(type_name.split('.')[-1], ())
            return constructor_arguments(obj) | set(extra)
    return None


def _walk(node: Any, prefix: str = '') -> Iterable[tuple[str, Any]]:
    """Every ``(key path, value)`` under ``node`` (dict keys and list indices, dot-joined)."""
    items = (node.items() if isinstance(node, Mapping)
             else enumerate(node) if isinstance(node, (list, tuple)) else ())
    for key, value in items:
        path = f'{prefix}{key}'
        yield path, value
        yield from _walk(value, path + '.')


def _closest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(set(map(str, candidates))), n=1, cutoff=0.6)
    return f' Did you mean {match[0]!r}?' if match else ''


def _refuse(key: str, reason: str, hint: str = '', addable: bool = True) -> CfgOptionError:
    add = (f' To add a key on purpose, write it with a leading {ADD_PREFIX!r}: '
           f'{ADD_PREFIX}{key}=VALUE' if addable else '')
    return CfgOptionError(f'--cfg-options {key}: {reason}.{hint} Nothing was run.{add}')


def _dead_variable(cfg: Mapping, key: str, top: str) -> CfgOptionError:
    """The error for a key under a top-level variable, naming the keys that took its value:
    copies of a dict or list variable, or keys of the same name for a scalar one."""
    parts = key.split('.')
    value = cfg[top]
    runtime = [(p, v) for p, v in _walk(cfg) if p.split('.')[0] in RUNTIME_KEYS - {top}]
    if isinstance(value, (Mapping, list, tuple)) and value:
        rest = ''.join('.' + part for part in parts[1:])
        users = [p + rest for p, v in runtime if v == value]
    else:
        users = [p for p, _ in runtime if p.rsplit('.', 1)[-1] == parts[-1]]
    hint = (f' Set the key(s) that took its value instead: {", ".join(users[:4])}'
            f'{" ..." if len(users) > 4 else ""}.' if users else '')
    return _refuse(key, f'{top!r} is a variable of the config file, read only while the file '
                   'was parsed: setting it now changes nothing', hint, addable=False)


def check_key(cfg: Mapping, key: str, handled: Iterable[str] = ()) -> None:
    """Refuse ``key`` unless it names something the run reads (see the module docstring).

    Args:
        cfg: the parsed config.
        key (str): a dotted ``--cfg-options`` key (list indices as numbers).
        handled: top-level keys the calling tool reads itself (e.g. ``data_root``).

    Raises:
        CfgOptionError: naming the key, why, and the closest existing key.
    """
    cfg = getattr(cfg, '_cfg_dict', cfg)  # mmengine's Config: its ConfigDict
    parts = key.split('.')
    top = parts[0]
    if top in handled:
        return
    if top not in cfg:
        if top in RUNTIME_KEYS:
            return  # a Runner argument the config leaves at its default
        raise _refuse(key, f'the config has no top-level key {top!r}',
                      _closest(top, list(cfg) + sorted(RUNTIME_KEYS)))
    if top not in RUNTIME_KEYS or (top == 'data_preprocessor'
                                   and 'data_preprocessor' in cfg.get('model', {})):
        raise _dead_variable(cfg, key, top)
    node: Any = cfg[top]
    for depth in range(1, len(parts)):
        part, where = parts[depth], '.'.join(parts[:depth])
        if isinstance(node, (list, tuple)):
            if not (part.isdigit() and int(part) < len(node)):
                raise _refuse(key, f'{where} is a list of {len(node)} items; {part!r} is not '
                              f'an index of it (0 to {len(node) - 1})')
            node = node[int(part)]
        elif isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            allowed = type_arguments(node['type']) if 'type' in node else None
            if where in DATALOADER_KEYS:
                allowed = constructor_arguments(DataLoader)
            if depth == len(parts) - 1 and allowed is not None and part in allowed:
                return  # an argument the config leaves at its default
            what = f' ({node["type"]})' if 'type' in node else ''
            if allowed is not None and part in allowed:
                raise _refuse(key, f'{where}{what} leaves {part!r} at its default, so it has no '
                              f'key {".".join(parts[depth + 1:])!r} to set')
            raise _refuse(key, f'{where}{what} has no key {part!r}'
                          + ('' if allowed is None else ' and takes no such argument'),
                          _closest(part, list(node) + sorted(allowed or ())))
        else:
            raise _refuse(key, f'{where} is {node!r}, not a dict: it has no key {part!r}')


def check_cfg_options(cfg: Mapping, options: Mapping[str, Any] | None,
                      handled: Iterable[str] = ()) -> dict[str, Any]:
    """Check every ``--cfg-options`` key (:func:`check_key`) and return the options to merge.

    Keys written with the leading :data:`ADD_PREFIX` are not checked; the prefix is removed.

    Raises:
        CfgOptionError: for the first key that names nothing.
    """
    merged: dict[str, Any] = {}
    handled = tuple(handled)
    for key, value in (options or {}).items():
        if key.startswith(ADD_PREFIX):
            key = key[len(ADD_PREFIX):]
        else:
            check_key(cfg, key, handled)
        merged[key] = value
    return merged
