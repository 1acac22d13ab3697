"""Strict, self-explaining loading of pretrained backbone weights.

mmengine's ``init_cfg=dict(type='Pretrained', ...)`` loads with ``strict=False`` and only logs the
mismatch; a backbone that silently kept half of its random initialisation then trains "fine".
Here a ``Pretrained`` init_cfg on a module using :class:`StrictPretrainedMixin` is loaded by
:func:`load_pretrained`: the checkpoint's keys are matched to the module after prefix handling,
and any missing, unexpected or shape-mismatched key raises :class:`CheckpointMismatchError` with a
readable report, unless the init_cfg says ``strict=False`` (then the report is logged as a warning
and the log never claims a complete load).

Variants: a token mixer names the submodules it adds to the attention it extends
(``pretrained_additions``: LRF-SSA's local branch, LRF-Dyn's branch and dynamics). Their tensors
are not expected in a checkpoint of the host model: missing, they are reported as new, by name,
and keep their initialisation; any other missing key is still an error.

Prefixes: a leading ``module.`` (DDP / EMA wrappers) is always stripped. With ``prefix=None`` the
keys are used as they are if they fit the module, else the ``backbone.`` sub-tree is used (an mmseg
segmentor or an mmpretrain ``ImageClassifier`` checkpoint); an explicit ``prefix`` selects that
sub-tree only. Keys outside the selected sub-tree (e.g. ``head.*``) are not "unexpected": they are
counted and listed as ignored.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

AUTO_PREFIXES: tuple[str, ...] = ('', 'backbone.')
_WRAPPER_PREFIX = re.compile(r'^module\.')
_STATE_DICT_KEYS = ('state_dict', 'model', 'module')


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit a module exactly (see :class:`LoadReport` for the details)."""


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or infinite weights."""


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or an infinity."""
    return [name for name, value in tensors.items()
            if torch.is_tensor(value) and value.is_floating_point()
            and not bool(torch.isfinite(value).all())]


def check_finite_weights(state_dict: Mapping[str, Any], source: str) -> None:
    """Refuse a state dict with NaN or infinite tensors.

    Raises:
        NonFiniteWeightsError: naming ``source`` and the tensors.
    """
    bad = non_finite_tensors(state_dict)
    if bad:
        shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
        raise NonFiniteWeightsError(
            f'checkpoint {source!r}: {len(bad)} tensors hold NaN or infinite values ({shown}); '
            'it was not loaded. Use an earlier checkpoint of the run.')


@dataclass
class LoadReport:
    """What loading a checkpoint into a module matched and what it did not.

    Attributes:
        source (str): the checkpoint path.
        prefix (str): the sub-tree of the checkpoint that was used ('' = all of it).
        loaded (list[str]): module keys filled from the checkpoint.
        missing (list[str]): module keys the checkpoint lacks (they keep their initialisation).
        unexpected (list[str]): checkpoint keys (within ``prefix``) the module does not have.
        mismatched (list[tuple[str, tuple, tuple]]): ``(key, checkpoint_shape, module_shape)``.
        ignored (list[str]): checkpoint keys outside ``prefix``.
        new (list[str]): module keys of a variant's additions that the checkpoint lacks (they
            keep their initialisation; not an error).
    """

    source: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every module key that is not :attr:`new` was loaded and every checkpoint
        key was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def format_new(self) -> str:
        """The new tensors by name, one line per added submodule."""
        groups: dict[str, list[str]] = {}
        for key in self.new:
            owner, _, name = key.rpartition('.')
            groups.setdefault(owner, []).append(name)
        lines = [f'{len(self.new)} tensors new in this model, left at their initialisation:']
        return '\n'.join(lines + [f'  {owner}: {", ".join(names)}'
                                   for owner, names in groups.items()])

    def format(self, max_keys: int = 20) -> str:
        """Human-readable multi-line summary (at most ``max_keys`` keys listed per group)."""

        def block(title: str, items: list[str]) -> list[str]:
            if not items:
                return []
            shown = [f'    {item}' for item in items[:max_keys]]
            if len(items) > max_keys:
                shown.append(f'    ... and {len(items) - max_keys} more')
            return [f'  {title} ({len(items)}):', *shown]

        total = len(self.loaded) + len(self.missing) + len(self.mismatched) + len(self.new)
        lines = [f'checkpoint {self.source!r}, prefix {self.prefix!r}: loaded {len(self.loaded)} '
                 f'of {total} module tensors']
        lines += block('missing in checkpoint', self.missing)
        lines += block('unexpected in checkpoint', self.unexpected)
        lines += block('shape mismatch (checkpoint vs module)',
                       [f'{k}: {tuple(a)} vs {tuple(b)}' for k, a, b in self.mismatched])
        if self.ignored:
            lines.append(f'  ignored {len(self.ignored)} checkpoint keys outside prefix '
                         f'{self.prefix!r} (e.g. {self.ignored[0]!r})')
        if self.new:
            lines.append(self.format_new())
        return '\n'.join(lines)


def extract_state_dict(checkpoint: Any, source: str = '<checkpoint>') -> dict[str, torch.Tensor]:
    """Return the tensor dict of a loaded checkpoint, with any ``module.`` wrapper prefix removed.

    Accepts mmengine checkpoints (``state_dict``), official ones (``model``), and bare state dicts.

    Args:
        checkpoint: the object :func:`torch.load` returned.
        source (str): its path, for error messages.

    Returns:
        dict[str, Tensor]: key -> tensor.

    Raises:
        CheckpointMismatchError: the object holds no tensors.
    """
    state = checkpoint
    while isinstance(state, Mapping):
        inner = next((state[k] for k in _STATE_DICT_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not any(torch.is_tensor(v) for v in state.values()):
        raise CheckpointMismatchError(
            f'{source!r} holds no state dict: expected a mapping of tensors, or one under '
            f'{list(_STATE_DICT_KEYS)}')
    return OrderedDict((_WRAPPER_PREFIX.sub('', k), v) for k, v in state.items() if torch.is_tensor(v))


def variant_additions(module: nn.Module) -> tuple[str, ...]:
    """Key prefixes (``'block3.0.attn.mixer.lrf.'``, ...) of the submodules that the modules
    inside ``module`` declare as their own additions (``pretrained_additions``)."""
    return tuple(f'{name}.{added}.' if name else f'{added}.'
                 for name, sub in module.named_modules()
                 for added in getattr(sub, 'pretrained_additions', ()))


def match_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     prefix: str | None = None, source: str = '<checkpoint>'
                     ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Select the checkpoint sub-tree for ``module`` and compare it key by key.

    Args:
        module (nn.Module): the module to load into.
        state_dict (Mapping[str, Tensor]): checkpoint tensors (see :func:`extract_state_dict`).
        prefix (str | None): sub-tree to use (a trailing '.' is added); None tries
            :data:`AUTO_PREFIXES` and keeps the one matching most module keys.
        source (str): the checkpoint path, for the report.

    Returns:
        tuple: the loadable subset ``{module_key: tensor}`` and the :class:`LoadReport`.
    """
    expected = module.state_dict()
    if prefix is None:
        prefix = max(AUTO_PREFIXES, key=lambda p: sum(p + k in state_dict for k in expected))
    elif prefix and not prefix.endswith('.'):
        prefix += '.'
    report = LoadReport(source=source, prefix=prefix)
    selected = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
    report.ignored = [k for k in state_dict if not k.startswith(prefix)]
    loadable: dict[str, torch.Tensor] = OrderedDict()
    additions = variant_additions(module)
    for key, target in expected.items():
        if key not in selected:
            (report.new if key.startswith(additions) else report.missing).append(key)
        elif selected[key].shape != target.shape:
            report.mismatched.append((key, tuple(selected[key].shape), tuple(target.shape)))
        else:
            loadable[key] = selected[key]
            report.loaded.append(key)
    report.unexpected = [k for k in selected if k not in expected]
    return loadable, report


def load_pretrained(module: nn.Module, checkpoint: str, prefix: str | None = None,
                    strict: bool = True, map_location: str = 'cpu') -> LoadReport:
    """Load pretrained weights into ``module``, strictly by default, and report what happened.

    Args:
        module (nn.Module): the module (typically a backbone) to fill.
        checkpoint (str): path or URL understood by mmengine's ``CheckpointLoader``.
        prefix (str | None): checkpoint sub-tree holding the module (e.g. ``'backbone.'``);
            None: auto (see :func:`match_state_dict`).
        strict (bool): raise on any missing / unexpected / shape-mismatched key (nothing is
            loaded then). With False the matching tensors are loaded and the report is logged
            as a warning.
        map_location (str): as for :func:`torch.load`.

    Returns:
        LoadReport: the comparison (``report.complete`` tells whether it was a full load).

    Raises:
        CheckpointMismatchError: ``strict`` and the checkpoint does not fit exactly.
        NonFiniteWeightsError: a tensor the module would take is NaN or infinite.
    """
    state_dict = extract_state_dict(_load_checkpoint(checkpoint, map_location=map_location),
                                    source=checkpoint)
    loadable, report = match_state_dict(module, state_dict, prefix=prefix, source=checkpoint)
    check_finite_weights(loadable, checkpoint)
    name = type(module).__name__
    if not report.complete and strict:
        raise CheckpointMismatchError(
            f'{name}: pretrained checkpoint does not match (strict loading; pass strict=False in '
            f'the init_cfg to load the matching part only)\n{report.format()}')
    if not report.loaded:
        raise CheckpointMismatchError(f'{name}: no tensor of the checkpoint fits\n{report.format()}')
    module.load_state_dict(loadable, strict=False)
    if report.complete:
        print_log(f'{name}: loaded all {len(report.loaded)} tensors of the checkpoint '
                  f'{checkpoint!r} (prefix {report.prefix!r})'
                  + (f'\n{report.format_new()}' if report.new else ''), logger='current')
    else:
        print_log(f'{name}: PARTIAL load (strict=False)\n{report.format()}', logger='current',
                  level=logging.WARNING)
    return report


class StrictPretrainedMixin:
    """Make ``init_cfg=dict(type='Pretrained', checkpoint=..., [prefix], [strict])`` strict.

    Put it before ``BaseModule`` in the bases (``class MyBackbone(StrictPretrainedMixin,
    BaseModule)``). ``init_weights`` first runs every other init_cfg entry and the children's
    own initialisation, then loads the ``Pretrained`` entry with :func:`load_pretrained`
    (``strict=True`` unless the entry says otherwise), so nothing overwrites the loaded weights.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        for cfg in self._pretrained_cfgs():
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'strict', 'map_location'}
            if unknown or 'checkpoint' not in cfg:
                raise ValueError(
                    f"init_cfg type='Pretrained': unknown option(s) {sorted(unknown)} or no "
                    "'checkpoint'; allowed: 'checkpoint' (required), 'prefix', 'strict', "
                    "'map_location'")

    def _pretrained_cfgs(self) -> list[Mapping[str, Any]]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        return [c for c in cfgs if isinstance(c, Mapping) and c.get('type') == 'Pretrained']

    def init_weights(self) -> None:
        """Initialise, then load the ``Pretrained`` init_cfg entry strictly (see class doc)."""
        pretrained = self._pretrained_cfgs()
        if not pretrained:
            super().init_weights()  # type: ignore[misc]
            return
        original = self.init_cfg
        cfgs = original if isinstance(original, list) else [original]
        others = [c for c in cfgs if c is not None and all(c is not p for p in pretrained)]
        self.init_cfg = others or None
        try:
            super().init_weights()  # type: ignore[misc]
        finally:
            self.init_cfg = original
        for cfg in pretrained:
            load_pretrained(self, **{k: v for k, v in cfg.items() if k != 'type'})  # type: ignore
