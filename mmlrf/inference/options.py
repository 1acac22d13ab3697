"""The inference flags of ``tools/test.py`` and ``tools/demo.py``: one model transform each.

``tools/test.py`` adds each chosen option's hook to the runner; ``tools/demo.py``, which has no
runner, applies the transform to the model directly. Both take them in the table's order (fold
the BatchNorms, then change the weight layout, then compile), the order of the hooks' priorities.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .transforms import compile_segmentor, fold_batchnorms, to_channels_last


@dataclass(frozen=True)
class InferenceOption:
    """One inference flag.

    Args:
        dest (str): the argparse destination; the flag is ``--`` + ``dest`` with ``-`` for ``_``.
        hook (str): the registered hook type that applies it in a runner.
        apply (Callable[[nn.Module], Any]): the same transform, applied to a model in place.
        help (str): the flag's help text.
    """
    dest: str
    hook: str
    apply: Callable[[nn.Module], Any]
    help: str

    @property
    def flag(self) -> str:
        return '--' + self.dest.replace('_', '-')


INFERENCE_OPTIONS = (
    InferenceOption('fuse_conv_bn', 'FuseConvBNHook', fold_batchnorms,
                    'fold every BatchNorm into its conv first (faster; may differ by float '
                    'rounding)'),
    InferenceOption('channels_last', 'ChannelsLastHook', to_channels_last,
                    'store the conv weights channels-last (lower CPU inference memory; may '
                    'differ by float rounding)'),
    InferenceOption('compile', 'CompileHook', compile_segmentor,
                    'run inference under torch.compile (compiles at the first input of each '
                    'shape, slower than one image; then faster, less memory; may differ by '
                    'float rounding)'),
)


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Add every :data:`INFERENCE_OPTIONS` flag to ``parser`` (off by default)."""
    for option in INFERENCE_OPTIONS:
        parser.add_argument(option.flag, action='store_true', help=option.help)


def chosen_inference_options(args: argparse.Namespace) -> list[InferenceOption]:
    """The options switched on in ``args``, in the order they must be applied."""
    return [option for option in INFERENCE_OPTIONS if getattr(args, option.dest)]
