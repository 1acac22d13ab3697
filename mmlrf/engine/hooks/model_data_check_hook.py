"""Hook refusing a run whose model does not fit its data set or whose layers are miswired.

Checked once the Runner has built the model and the data loaders, before weights are
initialised or a batch is read (``before_run``):

* every head's ``num_classes`` is at least 1 and equals the number of classes of each data set
  the run uses (a head with fewer classes fails deep in the loss, one with more trains output
  channels no label ever asks for), and so does the ``num_classes`` of a ``CheckSegSample`` in
  the data set's pipeline;
* the channels the neck (or, without a neck, each head) expects are those the module before it
  gives (a wrong ``in_channels`` otherwise surfaces as a reshape error inside a convolution).

Each error names the config key, the value set and the value the rest of the run implies.
"""
from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner.base_loop import BaseLoop
from mmseg.registry import HOOKS
from torch import nn

from ...datasets.sample_checks import CheckSegSample


class ModelDataMismatchError(ValueError):
    """The model's class count or channel wiring does not fit the run."""


def _heads(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(config key, head)`` of the decode head and every auxiliary head."""
    heads = [('model.decode_head', model.decode_head)] if hasattr(model, 'decode_head') else []
    aux = getattr(model, 'auxiliary_head', None)
    if isinstance(aux, nn.ModuleList):
        heads += [(f'model.auxiliary_head[{i}]', head) for i, head in enumerate(aux)]
    elif aux is not None:
        heads.append(('model.auxiliary_head', aux))
    return heads


def _datasets(runner: Any) -> list[tuple[str, Any]]:
    """``(dataloader key, data set)`` of each loop the Runner has built for this run."""
    found = []
    for key, loop in (('train_dataloader', runner._train_loop),
                      ('val_dataloader', runner._val_loop),
                      ('test_dataloader', runner._test_loop)):
        if isinstance(loop, BaseLoop):
            found.append((key, loop.dataloader.dataset))
    return found


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_class_counts(model: nn.Module, datasets: list[tuple[str, Any]]) -> None:
    """Refuse heads whose ``num_classes`` is below 1 or is not each data set's class count.

    Raises:
        ModelDataMismatchError: naming the head's key, its value and the data set's count.
    """
    for key, head in _heads(model):
        num = getattr(head, 'num_classes', None)
        if isinstance(num, int) and num < 1:
            raise ModelDataMismatchError(f'{key}.num_classes must be >= 1, got {num}')
    for loader, dataset in datasets:
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        if not classes:
            continue
        name = f'{loader}.dataset ({type(dataset).__name__})'
        for key, head in _heads(model):
            num = getattr(head, 'num_classes', None)
            if isinstance(num, int) and num != len(classes):
                raise ModelDataMismatchError(
                    f'{key}.num_classes is {num} but {name} has {len(classes)} classes '
                    f'({", ".join(map(str, classes[:6]))}{", ..." if len(classes) > 6 else ""})'
                    f'. Set {key}.num_classes={len(classes)}, or give the data set the '
                    'classes the model predicts (dataset metainfo).')
        pipeline = getattr(getattr(dataset, 'pipeline', None), 'transforms', [])
        for step in pipeline:
            if isinstance(step, CheckSegSample) and step.num_classes != len(classes):
                raise ModelDataMismatchError(
                    f'CheckSegSample in {loader}.dataset.pipeline has num_classes='
                    f'{step.num_classes} but {name} has {len(classes)} classes')


def _check_wiring(key: str, expected: list, given: list, source: str) -> None:
    if expected != given:
        raise ModelDataMismatchError(
            f'{key} is {expected if len(expected) > 1 else expected[0]} but {source} gives '
            f'{given if len(given) > 1 else given[0]} channels: set {key}='
            f'{given if len(given) > 1 else given[0]}')


def check_channels(model: nn.Module) -> None:
    """Refuse a neck or head whose ``in_channels`` are not what the module before it gives.

    Only modules that state their widths are compared: the backbone's ``out_channels`` (a
    list, one per output), a neck's ``in_channels`` (list) and, for the output, its
    ``out_channels`` x ``num_outs``, a head's ``in_channels`` with ``in_index``.

    Raises:
        ModelDataMismatchError: naming the key, the value set and the value given.
    """
    backbone = getattr(model, 'backbone', None)
    outputs = getattr(backbone, 'out_channels', None)
    if not isinstance(outputs, (list, tuple)):
        return
    outputs = list(outputs)
    source = f'the backbone ({type(backbone).__name__})'
    neck = getattr(model, 'neck', None) if getattr(model, 'with_neck', False) else None
    if neck is not None:
        if not isinstance(getattr(neck, 'in_channels', None), (list, tuple)):
            return
        _check_wiring('model.neck.in_channels', list(neck.in_channels), outputs, source)
        width, num_outs = getattr(neck, 'out_channels', None), getattr(neck, 'num_outs', None)
        if not (isinstance(width, int) and isinstance(num_outs, int)):
            return
        outputs, source = [width] * num_outs, f'the neck ({type(neck).__name__})'
    for key, head in _heads(model):
        in_channels, in_index = getattr(head, 'in_channels', None), getattr(head, 'in_index', None)
        if in_channels is None or in_index is None:
            continue
        indices = _as_list(in_index)
        if any(not isinstance(i, int) or not -len(outputs) <= i < len(outputs)
               for i in indices):
            raise ModelDataMismatchError(
                f'{key}.in_index is {in_index} but {source} gives {len(outputs)} outputs')
        _check_wiring(f'{key}.in_channels', _as_list(in_channels),
                      [outputs[i] for i in indices], source)


@HOOKS.register_module()
class ModelDataCheckHook(Hook):
    """Refuse, before anything runs, a model whose class count or wiring does not fit.

    See the module docstring; runs in ``before_run`` of training, validation and testing.

    Raises:
        ModelDataMismatchError: naming the config key, the value set and the one expected.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_channels(model)
        check_class_counts(model, _datasets(runner))
