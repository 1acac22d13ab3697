"""Measurement tools (thin command lines in ``tools/analysis/``; see ``docs/benchmarks.md``).

Submodules (imported on demand, so ``import mmlrf`` stays light):

* :mod:`~mmlrf.analysis.memory`: peak memory (CUDA allocator / CPU peak RSS) and timing.
* :mod:`~mmlrf.analysis.benchmark`: operator- and model-level memory/speed cases, presets,
  same-run ratios, JSON + PNG reports.
* :mod:`~mmlrf.analysis.energy`: firing rates, SOPs / MACs and energy from forward hooks.
* :mod:`~mmlrf.analysis.locality`: token-to-token weight vs distance, entropy, ERF maps.
* :mod:`~mmlrf.analysis.profile`: time of one forward pass per leaf-module type and operator.
* :mod:`~mmlrf.analysis.saved_tensors`: bytes autograd saves for backward, per dtype and per
  module that saved them.
* :mod:`~mmlrf.analysis.conv_bench`: convolutions, torch's kernels vs mmlrf's 1×1 and
  depth-wise routes.
* :mod:`~mmlrf.analysis.loading`: build a segmentor from a config, get input batches and
  random segmentation targets.
* :mod:`~mmlrf.analysis.model_args`: the config / variant / input arguments of the model tools.
* :mod:`~mmlrf.analysis.plotting`: matplotlib (Agg) helpers.
"""
__all__ = ['memory', 'benchmark', 'energy', 'locality', 'loading', 'plotting', 'profile',
           'conv_bench', 'saved_tensors', 'model_args']
