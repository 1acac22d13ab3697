"""``--smoke``: any segmentation config shrunk to a run of seconds on generated data.

A smoke run checks that a config builds, trains, saves and evaluates end to end before the real
run is started; its numbers mean nothing. :func:`apply_smoke` changes the parsed config in place:

* schedule: 2 training iterations, validation and a checkpoint after the second, a log line per
  iteration (``train_cfg``, ``default_hooks``);
* sizes: every image size of the pipelines (``scale``, ``crop_size``), the data
  preprocessor's ``size`` and a sliding-window ``test_cfg`` (``crop_size``, ``stride``) scaled so
  that the training crop's short side is :data:`SMOKE_CROP` pixels, keeping the config's
  aspect ratios;
* loaders: batch 2 (training) and 1 (validation, test), ``num_workers=0`` with
  ``persistent_workers=False`` (the pair a user would otherwise have to set together);
* weights: a ``Pretrained`` initialisation is dropped (the model starts from its own
  initialisation, reported in the log);
* data: each dataloader's ``data_root`` points to ``<work_dir>/smoke_data``, where
  :func:`write_smoke_data` writes a few random images and label maps in the data set's own
  layout (its ``data_prefix`` folders and file suffixes, its class count, ``reduce_zero_label``
  honoured); data sets that generate themselves (``generate``) generate a small set there.
"""
from __future__ import annotations

import inspect
import os
import os.path as osp
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np
from mmengine.config import Config
from mmseg.registry import DATASETS

#: The short side of the training crop in a smoke run, in pixels.
SMOKE_CROP = 32
SMOKE_ITERS = 2
SMOKE_SAMPLES = {'train_dataloader': 4, 'val_dataloader': 2, 'test_dataloader': 2}
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
#: Pipeline keys holding an image size (a ``(w, h)`` / ``(h, w)`` pair or a single int).
SIZE_KEYS = ('scale', 'crop_size', 'img_scale')


def _scaled(value: Any, factor: float) -> Any:
    """``value`` (an int or a pair) scaled by ``factor``, at least 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, round(value * factor))
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return type(value)(max(1, round(v * factor)) for v in value)
    return value


def _scale_pipeline(pipeline: Iterable, factor: float, seen: set[int]) -> None:
    """Scale the sizes of each step once (a config may share one step between pipelines)."""
    for step in pipeline or ():
        if not isinstance(step, Mapping) or id(step) in seen:
            continue
        seen.add(id(step))
        for key in SIZE_KEYS:
            if key in step:
                step[key] = _scaled(step[key], factor)
        for inner in ('transforms',):  # wrappers such as TestTimeAug / RandomChoice
            if isinstance(step.get(inner), list):
                _scale_pipeline(step[inner], factor, seen)


def _train_crop(cfg: Config) -> tuple[int, int] | None:
    """The training crop ``(h, w)``: the data preprocessor's ``size``, else ``crop_size``."""
    size = (cfg.get('model') or {}).get('data_preprocessor', {}).get('size')
    size = size or cfg.get('crop_size')
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _datasets(dataset: Any) -> Iterable[Mapping]:
    """A dataloader's data set and those inside wrappers (``dataset`` / ``datasets``)."""
    if isinstance(dataset, Mapping):
        yield dataset
        yield from _datasets(dataset.get('dataset'))
        for inner in dataset.get('datasets') or ():
            yield from _datasets(inner)


def _drop_pretrained(node: Any) -> list[str]:
    """Replace every ``Pretrained`` init_cfg under ``node`` by None; the checkpoints dropped."""
    dropped = []
    if isinstance(node, Mapping):
        for key, value in list(node.items()):
            pretrained = isinstance(value, Mapping) and value.get('type') == 'Pretrained'
            if key == 'init_cfg' and pretrained:
                node[key] = None
                dropped.append(str(value.get('checkpoint')))
            else:
                dropped += _drop_pretrained(value)
    elif isinstance(node, list):
        for value in node:
            dropped += _drop_pretrained(value)
    return dropped


def _argument_default(cls: type, name: str) -> Any:
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def write_smoke_data(dataset: Mapping, count: int, size: tuple[int, int], seed: int = 0) -> int:
    """Write ``count`` random images and label maps of ``size`` ``(h, w)`` into the folders a
    dataset config reads (``data_root`` + ``data_prefix``, the class's file suffixes).

    Labels are uniform over the data set's classes, stored as the data set reads them: shifted
    by one under ``reduce_zero_label`` (0 is then the ignored value). Existing files are kept.

    Returns:
        int: the number of files written.

    Raises:
        ValueError: the data set type is unknown or declares no classes.
    """
    cls = DATASETS.get(dataset['type'])
    if cls is None:
        raise ValueError(f"--smoke: unknown data set type {dataset['type']!r}")
    classes = (dataset.get('metainfo') or {}).get('classes') or cls.METAINFO.get('classes')
    if not classes:
        raise ValueError(f"--smoke: data set {dataset['type']!r} declares no classes")
    option = {name: dataset.get(name, _argument_default(cls, name))
              for name in ('img_suffix', 'seg_map_suffix', 'reduce_zero_label')}
    prefix = dataset.get('data_prefix') or {}
    root = dataset['data_root']
    img_dir = osp.join(root, prefix.get('img_path', ''))
    ann_dir = osp.join(root, prefix.get('seg_map_path', ''))
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    shift = 1 if option['reduce_zero_label'] else 0
    written = 0
    for i in range(count):
        image = osp.join(img_dir, f'smoke{i:03d}{option["img_suffix"] or ".png"}')
        label = osp.join(ann_dir, f'smoke{i:03d}{option["seg_map_suffix"] or ".png"}')
        if not osp.exists(image):
            cv2.imwrite(image, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            written += 1
        if not osp.exists(label):
            values = rng.integers(0, len(classes), size) + shift
            cv2.imwrite(label, values.astype(np.uint8))
            written += 1
    return written


def apply_smoke(cfg: Config, data_dir: str) -> list[str]:
    """Shrink ``cfg`` in place to a smoke run on data generated under ``data_dir``.

    See the module docstring.

    Returns:
        list[str]: what was changed, one line each, for the log.
    """
    notes = []
    crop = _train_crop(cfg)
    factor = SMOKE_CROP / min(crop) if crop else 1.0
    model = cfg.get('model') or {}
    if crop:
        preprocessor = model.get('data_preprocessor') or {}
        if preprocessor.get('size'):
            preprocessor['size'] = _scaled(tuple(preprocessor['size']), factor)
        test_cfg = model.get('test_cfg') or {}
        for key in ('crop_size', 'stride'):
            if key in test_cfg:
                test_cfg[key] = _scaled(tuple(test_cfg[key]), factor)
        notes.append(f'image sizes x {factor:g} (training crop {crop} -> '
                     f'{_scaled(crop, factor)})')
    seen: set[int] = set()
    for name in ('train_pipeline', 'test_pipeline'):
        if isinstance(cfg.get(name), list):
            _scale_pipeline(cfg[name], factor, seen)
    image_size = _scaled(crop, factor * 2) if crop else (2 * SMOKE_CROP, 2 * SMOKE_CROP)
    for loader in DATALOADERS:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        loader_cfg.update(batch_size=2 if loader == 'train_dataloader' else 1, num_workers=0,
                          persistent_workers=False)
        for dataset in _datasets(loader_cfg.get('dataset')):
            _scale_pipeline(dataset.get('pipeline'), factor, seen)
            if 'data_root' not in dataset and 'type' not in dataset:
                continue
            if dataset.get('dataset') is not None or dataset.get('datasets') is not None:
                continue  # a wrapper: its inner data sets hold the files
            dataset['data_root'] = osp.join(data_dir, str(dataset['type']))
            if dataset.get('generate') is not None:
                # generated at the crop (such sets are read uncropped)
                side = min(_scaled(crop, factor)) if crop else SMOKE_CROP
                dataset['generate'] = dict(dataset['generate'], num_train=4, num_val=2,
                                           size=max(16, int(side)))
            else:
                write_smoke_data(dataset, SMOKE_SAMPLES[loader], tuple(image_size))
    notes.append(f'data generated under {data_dir!r}; batch 2 / 1, num_workers=0')
    train_cfg = cfg.get('train_cfg') or {}
    if 'max_iters' in train_cfg:
        train_cfg.update(max_iters=SMOKE_ITERS, val_interval=SMOKE_ITERS)
    elif 'max_epochs' in train_cfg:
        train_cfg.update(max_epochs=1, val_interval=1)
    hooks = cfg.get('default_hooks') or {}
    if 'checkpoint' in hooks:
        hooks.checkpoint.update(interval=SMOKE_ITERS if 'max_iters' in train_cfg else 1)
    if 'logger' in hooks:
        hooks.logger.update(interval=1)
    notes.append(f'{SMOKE_ITERS} iterations, then validation and a checkpoint')
    for checkpoint in _drop_pretrained(model):
        notes.append(f'pretrained weights {checkpoint!r} not loaded (smoke run: from scratch)')
    return notes
