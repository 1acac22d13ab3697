"""Checks of a config's files that run before anything else, so a run that cannot work stops
in a second with a message that says what to do, not after the Runner's config dump.

* :func:`check_data_roots`: each dataloader's ``data_root`` (and its image folder) exists,
  unless the data set generates itself there (a ``generate`` argument). The error names the
  path, the config key, the environment variable the config reads it from (``MMLRF_*_ROOT``,
  found in the config file and its bases) and ``--cfg-options data_root=PATH``.
* :func:`check_pretrained`: a ``Pretrained`` init checkpoint is an existing local file; the
  error says how to get it, point elsewhere, or train from scratch on purpose
  (``model.backbone.init_cfg=None``).
"""
from __future__ import annotations

import os
import os.path as osp
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mmengine.config import Config

#: ``{{$VARIABLE:default}}`` in a config file (mmengine's environment substitution).
ENV_SUBSTITUTION = re.compile(r'\{\{\s*\$(\w+)\s*:\s*([^}]*?)\s*\}\}')
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class DataRootError(FileNotFoundError):
    """A data set's root (or its image folder) does not exist."""


def root_variables(config_file: str | None) -> dict[str, str]:
    """``{variable: value}`` of the environment variables ending in ``ROOT`` that the config
    file and its local bases substitute (the value: the variable's, else the default)."""
    found: dict[str, str] = {}
    pending = [osp.abspath(config_file)] if config_file else []
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen or not osp.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding='utf-8') as f:
            text = f.read()
        for name, default in ENV_SUBSTITUTION.findall(text):
            if name.endswith('ROOT'):
                found.setdefault(name, os.environ.get(name, default.strip('\'"')))
        if path.endswith('.py'):
            pending += [osp.join(osp.dirname(path), base) for base in Config._get_base_files(path)
                        if '::' not in base]
    return found


def _datasets(dataset: Any, key: str) -> Iterable[tuple[str, Mapping]]:
    """``(config key, dataset dict)`` of a dataset and of those inside wrappers."""
    if not isinstance(dataset, Mapping):
        return
    yield key, dataset
    yield from _datasets(dataset.get('dataset'), f'{key}.dataset')
    for i, inner in enumerate(dataset.get('datasets') or ()):
        yield from _datasets(inner, f'{key}.datasets[{i}]')


def check_data_roots(cfg: Mapping, loaders: Iterable[str] = DATALOADERS,
                     config_file: str | None = None) -> None:
    """Refuse to start when a dataloader's data set root or image folder is missing.

    Args:
        cfg: the parsed config (after ``--cfg-options``).
        loaders: the dataloaders the run will use.
        config_file (str | None): the config's path, to name the environment variable.

    Raises:
        DataRootError: naming the path, the key, the variable and the options.
    """
    variables = root_variables(config_file)
    for loader in loaders:
        for key, dataset in _datasets((cfg.get(loader) or {}).get('dataset'), loader):
            root = dataset.get('data_root')
            if not isinstance(root, str) or dataset.get('generate') is not None:
                continue
            prefix = (dataset.get('data_prefix') or {}).get('img_path', '')
            missing = root if not osp.isdir(root) else (
                osp.join(root, prefix) if prefix and not osp.isdir(osp.join(root, prefix))
                else None)
            if missing is None:
                continue
            named = [v for v, value in variables.items()
                     if osp.abspath(value) == osp.abspath(root)]
            env = (f' The config reads it from the environment variable {named[0]}'
                   + (f' (now {os.environ[named[0]]!r})' if named[0] in os.environ else
                      ' (not set)') + f': export {named[0]}=PATH, or' if named else ' Set it with')
            what = ('data root' if missing == root
                    else f'image folder (data_prefix.img_path of data root {root!r})')
            raise DataRootError(
                f'{what} {missing!r} ({key}.data_root) does not exist.{env} '
                f'--cfg-options data_root=PATH (every dataloader). To try the run on generated '
                f'data in the data set\'s layout: tools/train.py CONFIG --smoke')


def check_pretrained(cfg: Any, key: str = 'model') -> None:
    """Refuse to start when a ``Pretrained`` init checkpoint is a missing local file.

    Raises:
        FileNotFoundError: naming the config key, the path and how to set it.
    """
    if isinstance(cfg, Mapping):
        if cfg.get('type') == 'Pretrained':
            path = cfg.get('checkpoint')
            if isinstance(path, str) and '://' not in path and not osp.isfile(path):
                raise FileNotFoundError(
                    f'pretrained checkpoint {path!r} ({key}.checkpoint) not found. For SDT-V3, '
                    'convert the official ImageNet weights: python tools/convert_sdtv3.py '
                    f'OFFICIAL.pth {path} (README, "Pretrained weights"); or point to a file '
                    f'with the MMLRF_PRETRAINED environment variable or --cfg-options '
                    f'{key}.checkpoint=PATH; to train from scratch on purpose: --cfg-options '
                    f'{key}=None')
        for name, value in cfg.items():
            check_pretrained(value, f'{key}.{name}')
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_pretrained(value, f'{key}[{i}]')
