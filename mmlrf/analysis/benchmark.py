"""Memory and speed benchmark of token mixers (operator level) and whole segmentors (model level).

A *case* is a JSON-able dict; :func:`run_case` measures one in this process, :func:`run_cases`
measures a list (on CPU each case in a fresh subprocess, see :mod:`mmlrf.analysis.memory`) and
:func:`compute_ratios` compares variants **of the same run** against a reference variant.

Case fields (all kinds): ``kind`` ('operator' | 'model' | 'floor'), ``variant`` (name, see
:data:`VARIANTS`; ``'lrf_dyn:<mode>'`` selects a :data:`DYNAMICS_MODES` path), ``mode``
('infer' | 'train'), ``batch``, ``dtype`` ('float32' | 'bfloat16' | 'float16').
Operator / floor cases: ``n_tokens``, ``hw`` ([H, W], H·W = n_tokens), ``channels`` (C of Q/K),
``heads``, ``v_ratio`` (V has v_ratio·C channels), ``T``.
Dynamics cases (the dendritic operator alone, ``variant`` ``'dynamics:<mode>'``, inference):
``channels`` (its C), ``hw``, ``n_tokens``, ``batch``; reported with ``output_mib`` and
``extra_over_output`` (peak minus the output tensor, over the output tensor).
Model cases: ``config`` (path), ``resolution`` ([H, W]), ``cfg_options`` (dict), ``attn_key``
(dotted config key of the attention dict the variant replaces, default ``model.backbone.attn``),
``fuse_conv_bn``, ``cuda_graph``, ``channels_last``, ``compile`` (``torch.compile`` the
inference forward, or in training the segmentor's ``loss`` as ``CompileHook`` does, whose
backward AOTAutograd compiles with it; reported with ``compile_s``, the first call) and
``conv_routes`` (default True; False runs every convolution through oneDNN,
:func:`mmlrf.conv.cpu_routes`) and ``lean`` (default True, the model as its config builds it;
False switches lean inference off, :func:`mmlrf.hooks.set_lean_inference`).
Any kind, CUDA only: ``memory_cap_mib`` (the caching allocator is capped at this many MiB above
what the case holds after its first call, weights and inputs, for the measured calls:
:func:`~mmlrf.analysis.memory.cuda_memory_cap`; cuDNN then takes convolution algorithms whose
workspaces fit; see :func:`with_memory_cap`).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .memory import (CPU_MEASURE_ENV, MIB, PIPELINED_MAX_MS, check_memory_cap, cuda_memory_cap,
                     frozen_gc, gc_pauses, measure, pipelined_ms, time_ms)
from .saved_tensors import SavedTensorMeter

#: Token mixer of each benchmark variant (a ``lrf_dyn:<mode>`` suffix selects the dynamics path).
VARIANTS: dict[str, dict] = {
    'official': dict(type='SSA', order='qk'),      # SDT-V3's SDSA: (Q Kᵀ) V, N×N map per head
    'ssa_kv': dict(type='SSA', order='kv'),        # Q (Kᵀ V), d×dv state per head
    'lrf_ssa': dict(type='LRFSSA', order='qk'),    # SDT-V3 + LRF-SSA (paper)
    'lrf_ssa_kv': dict(type='LRFSSA', order='kv'),
    'lrf_dyn': dict(type='LRFDyn'),                # modal parameters (default)
    'lrf_dyn_tridiagonal': dict(type='LRFDyn', dynamics_cfg=dict(parameterization='tridiagonal')),
}
KINDS = ('operator', 'model', 'floor', 'dynamics')
MODES = ('infer', 'train')
DTYPES = ('float32', 'bfloat16', 'float16')
REFERENCE = 'official'
#: TF32 settings of :func:`set_cuda_precision`: none, cuDNN convolutions only (PyTorch's default),
#: convolutions and matrix products.
TF32_MODES = ('off', 'convs', 'all')


# ----------------------------------------------------------------------------------- variants
def parse_variant(name: str) -> tuple[dict, str | None]:
    """``'lrf_dyn:scan'`` → (mixer config, dynamics mode or None).

    Raises:
        ValueError: naming ``variant`` for an unknown name or a mode suffix on a non-dynamics
            variant.
    """
    base, _, dyn_mode = name.partition(':')
    if base not in VARIANTS:
        raise ValueError(f'variant must be one of {sorted(VARIANTS)} (lrf_dyn may take '
                         f'":<mode>"), got {name!r}')
    if dyn_mode and VARIANTS[base]['type'] != 'LRFDyn':
        raise ValueError(f'variant {name!r}: only LRFDyn variants take a ":<mode>" suffix')
    return copy.deepcopy(VARIANTS[base]), dyn_mode or None


def apply_variant_mode(module: nn.Module, mode: str | None) -> None:
    """Put every :class:`DendriticDynamics` in ``module`` on a variant's ``:<mode>`` path
    (:func:`mmlrf.attention.set_dynamics_mode`); nothing for None.

    Raises:
        ValueError: if a mode is given but ``module`` has no dendritic dynamics.
    """
    from ..attention import set_dynamics_mode
    if mode is not None and not set_dynamics_mode(module, mode):
        raise ValueError(f'dynamics mode {mode!r} given but the model has no DendriticDynamics')


def dynamics_modes() -> tuple[str, ...]:
    """The dynamics evaluation paths available in this build (``DYNAMICS_MODES``)."""
    from ..attention.dynamics import DYNAMICS_MODES
    return tuple(m for m in DYNAMICS_MODES if m != 'auto')


# --------------------------------------------------------------------------- shapes and inputs
def grid_hw(n_tokens: int) -> tuple[int, int]:
    """A token grid H×W = N with H the largest divisor of N not above √N (8192 → 64×128)."""
    h = max(d for d in range(1, math.isqrt(n_tokens) + 1) if n_tokens % d == 0)
    return h, n_tokens // h


def spike_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 generator: torch.Generator, max_value: int = 4) -> Tensor:
    """Random integer multi-spike values ``{0, 1/D, …, 1}`` (what an SDT-V3 neuron emits)."""
    ints = torch.randint(0, max_value + 1, shape, generator=generator, device='cpu')
    return (ints.to(dtype) / max_value).to(device)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}, got {name!r}')
    return getattr(torch, name)


def _tensor_mib(numel: int, dtype: torch.dtype) -> float:
    return numel * torch.tensor([], dtype=dtype).element_size() / MIB


def _param_mib(module: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / MIB


# ------------------------------------------------------------------------------- attribution
def mixer_state_terms(mixer: nn.Module, shape_q: tuple[int, ...], shape_v: tuple[int, ...],
                      dtype: torch.dtype) -> dict[str, float]:
    """Analytic size (MiB) of a mixer's intermediate state for inputs of the given shapes.

    ``shape_q``: ``[T, B, C, H, W]``; ``shape_v``: ``[T, B, Cv, H, W]``. Terms: SSA 'qk':
    ``attention_map`` (T·B·heads·N²); 'kv': ``kv_state`` (T·B·heads·d·dv); LRF branch:
    ``lrf_branch_outputs`` (one V-sized map per dilation); dynamics: ``fft_buffers`` (input and
    product spectra of length N+1, complex, of the 2N-point rFFT) and ``fft_kernel`` (the kernel
    spectrum per channel) in 'fft' mode, ``dynamics_state`` (T·B·Cv·k complex) otherwise.
    """
    t, b, c, h, w = shape_q
    cv = shape_v[2]
    n = h * w
    terms: dict[str, float] = {}
    heads = getattr(mixer, 'num_heads', 1)
    order = getattr(mixer, 'order', None)
    if order == 'qk':
        terms['attention_map'] = _tensor_mib(t * b * heads * n * n, dtype)
    elif order == 'kv':
        terms['kv_state'] = _tensor_mib(t * b * heads * (c // heads) * (cv // heads), dtype)
    lrf = getattr(mixer, 'lrf', None)
    if lrf is not None and hasattr(lrf, 'dilations'):
        terms['lrf_branch_outputs'] = _tensor_mib(len(lrf.dilations) * t * b * cv * n, dtype)
    from ..attention.dynamics import DendriticDynamics
    for m in mixer.modules():
        if isinstance(m, DendriticDynamics):
            ch = getattr(m, 'channels', cv)
            complex_bytes = 2 * torch.tensor([], dtype=torch.float32).element_size()
            if m.mode == 'fft':
                terms['fft_buffers'] = 2 * t * b * ch * (n + 1) * complex_bytes / MIB
                terms['fft_kernel'] = ch * (n + 1) * complex_bytes / MIB
            else:
                k = getattr(m, 'num_dendrites', 8)
                terms['dynamics_state'] = t * b * ch * k * complex_bytes / MIB
            break
    return terms


# --------------------------------------------------------------------------------- the cases
def build_mixer(variant: str, channels: int, heads: int, v_ratio: int) -> nn.Module:
    """Build the token mixer of ``variant`` for C = ``channels``, V of ``v_ratio``·C channels."""
    from mmseg.registry import MODELS
    cfg, dyn_mode = parse_variant(variant)
    cfg.update(num_heads=heads, qk_channels=channels, v_channels=channels * v_ratio)
    mixer = MODELS.build(cfg)
    apply_variant_mode(mixer, dyn_mode)
    return mixer


def _operator_work(case: dict, device: torch.device) -> tuple[Callable[[], Any], dict]:
    dtype = _dtype(case['dtype'])
    t, b, c = case['T'], case['batch'], case['channels']
    h, w = case['hw']
    cv = c * case['v_ratio']
    gen = torch.Generator().manual_seed(0)
    shape_q, shape_v = (t, b, c, h, w), (t, b, cv, h, w)
    train = case['mode'] == 'train'
    q, k, x = (spike_tensor(shape_q, dtype, device, gen) for _ in range(3))
    v = spike_tensor(shape_v, dtype, device, gen)
    info: dict[str, Any] = dict(
        inputs_mib=_tensor_mib(3 * math.prod(shape_q) + math.prod(shape_v), dtype))
    if case['kind'] == 'floor':
        info.update(output_mib=_tensor_mib(math.prod(shape_v), dtype), weights_mib=0.0)
        return v.clone, info
    mixer = build_mixer(case['variant'], c, case['heads'], case['v_ratio']).to(device, dtype)
    mixer.train(train)
    info.update(weights_mib=_param_mib(mixer),
                output_mib=_tensor_mib(t * b * mixer.out_channels * h * w, dtype),
                analytic_mib=mixer_state_terms(mixer, shape_q, shape_v, dtype))
    args = [a if a_name in mixer.requires else None
            for a_name, a in (('q', q), ('k', k), ('v', v), ('x', x))]
    if not train:
        def infer() -> Tensor:
            with torch.no_grad():
                return mixer(*args)
        return infer, info
    for a in args:
        if a is not None:
            a.requires_grad_(True)
    meter = SavedTensorMeter()

    def step() -> None:
        mixer.zero_grad(set_to_none=True)
        for a in args:
            if a is not None:
                a.grad = None
        with meter:
            out = mixer(*args)
        out.float().square().mean().backward()
    step()
    info['saved_for_backward_mib'] = meter.bytes / MIB
    return step, info


def _dynamics_work(case: dict, device: torch.device) -> tuple[Callable[[], Any], dict]:
    from ..attention.dynamics import DendriticDynamics
    dtype = _dtype(case['dtype'])
    _, _, mode = case['variant'].partition(':')
    h, w = case['hw']
    shape = (case['batch'], case['channels'], h, w)
    op = DendriticDynamics(case['channels'], mode=mode).to(device).eval()
    u = spike_tensor(shape, dtype, device, torch.Generator().manual_seed(0))

    def infer() -> Tensor:
        with torch.no_grad():
            return op(u)
    info = dict(inputs_mib=_tensor_mib(u.numel(), dtype), weights_mib=_param_mib(op),
                output_mib=_tensor_mib(u.numel(), dtype))
    if op.resolved_mode(u) == 'triton':
        from ..attention.dynamics_triton import chosen_configs
        infer()  # autotunes: record which config the timed calls use
        info['triton_configs'] = chosen_configs()
    return infer, info


def dynamics_cases(modes: list[str], n_tokens: int = 8192, channels: int = 1440,
                   batch: int = 8, dtype: str = 'float32') -> list[dict]:
    """The dendritic operator alone (``[B, channels, H, W]``, H·W = ``n_tokens``), per mode."""
    return [dict(kind='dynamics', variant=f'dynamics:{m}', mode='infer', dtype=dtype,
                 n_tokens=n_tokens, hw=list(grid_hw(n_tokens)), channels=channels, heads=1,
                 v_ratio=1, batch=batch, T=1) for m in modes]


def variant_config(config: str, variant: str | None, cfg_options: dict | None = None,
                   attn_key: str = 'model.backbone.attn') -> tuple[Any, str | None]:
    """Load a segmentor config with its attention replaced by a benchmark variant.

    Args:
        config (str): config file.
        variant (str | None): a :data:`VARIANTS` name, optionally ``lrf_dyn:<mode>``; None
            keeps the config's own attention.
        cfg_options (dict | None): overrides merged before the replacement.
        attn_key (str): dotted key of the attention dict the variant replaces.

    Returns:
        (mmengine Config, dynamics mode or None)
    """
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if variant is None:
        return cfg, None
    mixer_cfg, dyn_mode = parse_variant(variant)
    node = cfg
    keys = attn_key.split('.')
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = mixer_cfg
    return cfg, dyn_mode


def build_variant_model(config: str, variant: str | None, cfg_options: dict | None = None,
                        attn_key: str = 'model.backbone.attn',
                        device: str | torch.device = 'cpu',
                        fuse_conv_bn: bool = False,
                        channels_last: bool = False,
                        lean: bool = True) -> tuple[nn.Module, Any, int | None]:
    """Build the segmentor of :func:`variant_config` on ``device`` (training mode unless fused).

    Args:
        fuse_conv_bn (bool): fold every BN into its conv (``mmcv.cnn.fuse_conv_bn``; puts the
            model in eval mode).
        channels_last (bool): store the 4-D weights channels-last
            (:func:`mmlrf.hooks.to_channels_last`).
        lean (bool): False switches lean inference off
            (:func:`mmlrf.hooks.set_lean_inference`); True keeps the config's setting.
        Others: see :func:`variant_config`.

    Returns:
        (model, config, number of BNs folded or None when not fused)
    """
    from mmseg.registry import MODELS

    from .loading import init_mmseg
    init_mmseg()
    cfg, dyn_mode = variant_config(config, variant, cfg_options, attn_key)
    model = MODELS.build(cfg.model).to(device)
    apply_variant_mode(model, dyn_mode)
    from ..hooks import fold_batchnorms, set_lean_inference, to_channels_last
    folded = fold_batchnorms(model.eval()) if fuse_conv_bn else None
    if channels_last:
        to_channels_last(model)
    if not lean:
        set_lean_inference(model, False)
    return model, cfg, folded


def _graphed(infer: Callable[[], Tensor], device: torch.device) -> tuple[Callable[[], Any],
                                                                          float]:
    """``infer`` replayed as a CUDA graph, and the peak memory of its capture in MiB (the pool
    the graph keeps: a replay allocates nothing, so the case's ``peak_mib`` misses it)."""
    from ..cuda_graph import GraphedForward
    if device.type != 'cuda':
        raise ValueError(f'cuda_graph cases need a CUDA device, got {device}')
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    graphed = GraphedForward(lambda _: infer(), torch.zeros(1, device=device))
    torch.cuda.synchronize(device)
    pool_mib = (torch.cuda.max_memory_allocated(device) - base) / MIB
    return (lambda: graphed(graphed.static_input)), pool_mib


def _model_work(case: dict, device: torch.device) -> tuple[Callable[[], Any], dict]:
    from ..attention import TokenMixer
    model, cfg, folded = build_variant_model(
        case['config'], case['variant'], case.get('cfg_options'),
        case.get('attn_key', 'model.backbone.attn'), device, case.get('fuse_conv_bn', False),
        case.get('channels_last', False), case.get('lean', True))
    dtype = _dtype(case['dtype'])
    b, (h, w) = case['batch'], case['resolution']
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, h, w, generator=gen).to(device)
    train = case['mode'] == 'train'
    model.train(train)
    info: dict[str, Any] = dict(weights_mib=_param_mib(model),
                                inputs_mib=_tensor_mib(images.numel(), torch.float32))
    if folded is not None:
        info['batchnorms_folded'] = folded
    attn_terms: list[dict[str, float]] = []

    def record(mixer: nn.Module, args: tuple) -> None:
        v = args[2]
        shape_q = (*v.shape[:2], mixer.qk_channels, *v.shape[3:])
        attn_terms.append(mixer_state_terms(mixer, shape_q, tuple(v.shape), dtype))
    handles = [m.register_forward_pre_hook(record) for m in model.modules()
               if isinstance(m, TokenMixer)]
    # a CUDA graph must not depend on autocast's cache of cast weights (freed on exit)
    autocast = (torch.autocast(device.type, dtype=dtype,
                               cache_enabled=not case.get('cuda_graph'))
                if dtype != torch.float32 else torch.autocast(device.type, enabled=False))
    if not train:
        def forward() -> Tensor:
            return model(images, mode='tensor')

        def run(fn: Callable[[], Tensor] = forward) -> Tensor:
            with torch.no_grad(), autocast:
                return fn()
    else:
        from .loading import random_label_loss
        forward = random_label_loss(model, cfg, images, gen)
        saved_bytes = [0]  # of the last step run

        def run(fn: Callable[[], Tensor] = forward) -> None:
            model.zero_grad(set_to_none=True)
            with SavedTensorMeter() as meter, autocast:
                loss = fn()
            saved_bytes[0] = meter.bytes
            loss.backward()
    run()  # eager, with the recording hooks
    for hd in handles:
        hd.remove()
    if case.get('compile'):
        # compiled without the recording hooks (they are part of what Dynamo guards on)
        if train:  # what CompileHook compiles for training: the segmentor's loss
            from ..hooks import compile_segmentor
            compile_segmentor(model, train=True)
        else:
            run = functools.partial(run, torch.compile(forward))
        start = time.perf_counter()
        run()
        info['compile_s'] = time.perf_counter() - start
    if train:
        info['saved_for_backward_mib'] = saved_bytes[0] / MIB  # compiled if asked
    if case.get('cuda_graph'):
        run, info['graph_pool_mib'] = _graphed(run, device)
    if attn_terms:
        per_layer = [sum(t.values()) for t in attn_terms]
        info['analytic_mib'] = dict(attention_state_max_layer=max(per_layer),
                                    attention_state_all_layers=sum(per_layer))
        info['attention_layers'] = len(attn_terms)
    return run, info


def _check_case(case: dict) -> None:
    if case.get('kind') not in KINDS:
        raise ValueError(f"case kind must be one of {KINDS}, got {case.get('kind')!r}")
    if case.get('mode') not in MODES:
        raise ValueError(f"case mode must be one of {MODES}, got {case.get('mode')!r}")


def _case_work(case: dict, device: torch.device) -> tuple[Callable[[], Any], dict]:
    """The work of one iteration of ``case`` and its attribution fields (the builders run the
    work once: that is the first warm-up call)."""
    from ..conv import cpu_routes
    work = {'model': _model_work, 'dynamics': _dynamics_work}.get(case['kind'], _operator_work)
    routes = case.get('conv_routes', True)
    with cpu_routes(routes):
        fn, info = work(case, device)

    def routed() -> Any:
        with cpu_routes(routes):
            return fn()
    return routed, info


def _error(e: Exception) -> str:
    return f'{type(e).__name__}: {str(e)[:300]}'


def timed_pipelined(result: dict) -> bool:
    """Whether a timed result is also timed back to back (``time_ms_pipelined``): operator-level
    kinds whose median call is under :data:`~mmlrf.analysis.memory.PIPELINED_MAX_MS`, short
    enough for the host's per-call work to show in ``time_ms``."""
    return (result['kind'] != 'model' and result.get('time_ms') is not None
            and result['time_ms'] < PIPELINED_MAX_MS)


def run_case(case: dict, device: str | torch.device = 'cpu', warmup: int = 1,
             repeats: int = 3) -> dict:
    """Measure one case in this process (see the module docstring for the case fields).

    Returns:
        dict: the case plus ``peak_mib`` (peak above the pre-run baseline), ``time_ms``
        (median), ``times_ms``, ``images_per_s`` (batch / time), ``time_ms_pipelined``
        where :func:`timed_pipelined` (:func:`~mmlrf.analysis.memory.pipelined_ms`), the
        attribution fields (``weights_mib``, ``inputs_mib``, ``output_mib``, ``analytic_mib``,
        ``saved_for_backward_mib``) and, for operators, ``peak_over_output``; or ``error``.
    """
    device = torch.device(device)
    _check_case(case)
    result = dict(case)
    try:
        fn, info = _case_work(case, device)
        result.update(info)
        with cuda_memory_cap(device, case.get('memory_cap_mib')):
            result.update(measure(fn, device, warmup=max(warmup - 1, 0), repeats=repeats))
            if timed_pipelined(result):
                result['time_ms_pipelined'] = pipelined_ms(fn, device, repeats)
    except Exception as e:  # noqa: BLE001  (recorded in the report; the other cases go on)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        result['error'] = _error(e)
        return result
    if result.get('time_ms'):
        result['images_per_s'] = case['batch'] / (result['time_ms'] / 1e3)
    if 'output_mib' in result and result['output_mib']:
        result['peak_over_output'] = result['peak_mib'] / result['output_mib']
        if case['kind'] == 'dynamics':
            result['extra_over_output'] = ((result['peak_mib'] - result['output_mib'])
                                           / result['output_mib'])
    return result


def time_interleaved(cases: list[dict], device: str | torch.device = 'cpu', warmup: int = 1,
                     repeats: int = 3, freeze_gc: bool = False) -> list[dict]:
    """Time several cases in this process, round-robin: repeat r of every case runs before
    repeat r + 1 of any, so a slow spell of a shared machine hits all of them alike. All the
    cases' models and inputs are alive at once. One case is plain sequential timing.
    ``freeze_gc``: the round-robin runs under :func:`~mmlrf.analysis.memory.frozen_gc` (built
    and warmed-up models, imports and inputs frozen out of the collector's scans).

    Returns:
        list[dict]: per case, the case plus ``time_ms`` (median), ``times_ms``, ``gc_ms`` (per
        timed call, the time Python's cyclic garbage collector ran during it:
        :func:`~mmlrf.analysis.memory.gc_pauses`), ``images_per_s`` and, where
        :func:`timed_pipelined`, ``time_ms_pipelined`` (measured after the round-robin); or
        ``error`` (the other cases go on).
    """
    device = torch.device(device)
    results, fns = [], []
    for case in cases:
        _check_case(case)
        if case.get('memory_cap_mib') is not None:
            raise ValueError('a memory cap bounds one case at a time: time capped cases with '
                             'run_case, not interleaved (every case of a group is alive at once)')
        results.append(dict(case, times_ms=[], gc_ms=[]))
        try:
            fn, _ = _case_work(case, device)
            for _ in range(max(warmup - 1, 0)):
                fn()
        except Exception as e:  # noqa: BLE001
            results[-1]['error'], fn = _error(e), None
        fns.append(fn)
    with frozen_gc() if freeze_gc else contextlib.nullcontext():
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                if fn is None:
                    continue
                try:
                    with gc_pauses() as pauses:
                        results[i]['times_ms'] += time_ms(fn, device, 1)
                    results[i]['gc_ms'].append(sum(pauses))
                except Exception as e:  # noqa: BLE001
                    results[i]['error'], fns[i] = _error(e), None
    for res, fn in zip(results, fns):
        if 'error' not in res and res['times_ms']:
            res['time_ms'] = statistics.median(res['times_ms'])
            res['images_per_s'] = res['batch'] / (res['time_ms'] / 1e3)
            if timed_pipelined(res):
                try:
                    res['time_ms_pipelined'] = pipelined_ms(fn, device, repeats)
                except Exception as e:  # noqa: BLE001
                    res['error'] = _error(e)
    return results


def _worker() -> None:
    """Subprocess entry: read a job from stdin as JSON, print ``RESULT <json>``. A job is
    ``{case, device, warmup, repeats, threads}`` (:func:`run_case`) or
    ``{cases, device, warmup, repeats, threads, freeze_gc}`` (:func:`time_interleaved`)."""
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(job['threads'])
    import mmlrf  # noqa: F401  (registries)
    if 'cases' in job:
        res = time_interleaved(job['cases'], job['device'], job['warmup'], job['repeats'],
                               job['freeze_gc'])
    else:
        res = run_case(job['case'], job['device'], job['warmup'], job['repeats'])
    print('RESULT ' + json.dumps(res))


def _subprocess_job(job: dict, env: dict[str, str], timeout_s: float | None) -> Any:
    """Run one :func:`_worker` job in a fresh Python process with ``env`` added; on failure
    the job's case(s) with an ``error``."""
    try:
        proc = subprocess.run(
            [sys.executable, '-c', 'import mmlrf.analysis.benchmark as b; b._worker()'],
            input=json.dumps(job), capture_output=True, text=True,
            env={**os.environ, **env}, timeout=timeout_s)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
        if lines:
            return json.loads(lines[-1][7:])
        error = f'worker exit {proc.returncode}: {proc.stderr.strip()[-300:]}'
    except subprocess.TimeoutExpired:
        error = f'timeout after {timeout_s} s'
    if 'cases' in job:
        return [dict(c, error=error) for c in job['cases']]
    return dict(job['case'], error=error)


def run_cases(cases: list[dict], device: str = 'cpu', warmup: int = 1, repeats: int = 3,
              isolate: bool | None = None, threads: int | None = None,
              timeout_s: float | None = None, interleave: bool = False,
              freeze_gc: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Measure every case; on CPU (default ``isolate``) each in two fresh subprocesses.

    Args:
        cases: case dicts (module docstring).
        device: 'cpu' or 'cuda[:i]'.
        warmup, repeats: see :func:`mmlrf.analysis.memory.measure`.
        isolate: measure the peak in a subprocess started with :data:`CPU_MEASURE_ENV` and the
            time in another one with the default allocator (that setting slows allocation-heavy
            work; see :mod:`mmlrf.analysis.memory`). Default: on CPU yes, on CUDA no — the CUDA
            allocator's peak is exact in-process.
        threads: torch CPU threads of each subprocess (default: this process's).
        timeout_s: per-subprocess timeout; a timed-out case gets an ``error``.
        interleave: time the cases of each :func:`timing_key` group together with
            :func:`time_interleaved` (one process per group when isolated), after all peaks.
        freeze_gc: interleaved timing under a frozen collector (:func:`time_interleaved`).
        log: called with one progress line per case.
    """
    dev = torch.device(device)
    isolate = dev.type == 'cpu' if isolate is None else isolate
    job = dict(device=device, warmup=warmup, threads=threads or torch.get_num_threads())

    def times_of(group: list[dict]) -> list[dict]:
        if not isolate:
            return time_interleaved(group, dev, warmup, repeats, freeze_gc)
        return _subprocess_job(dict(job, cases=group, repeats=repeats, freeze_gc=freeze_gc), {},
                               timeout_s)

    def merge(res: dict, timed: dict) -> None:
        if 'error' in timed:
            res['error'] = timed['error']
        else:
            res.update({k: timed[k] for k in ('time_ms', 'times_ms', 'gc_ms', 'images_per_s',
                                              'time_ms_pipelined') if k in timed})

    results = []
    for case in cases:
        if isolate:
            res = _subprocess_job(dict(job, case=case, repeats=0), CPU_MEASURE_ENV, timeout_s)
        else:
            res = run_case(case, dev, warmup, 0 if interleave else repeats)
        if not interleave and isolate and 'error' not in res and repeats > 0:
            merge(res, times_of([case])[0])
        results.append(res)
        if not interleave:
            log(format_row(res))
    if interleave:
        groups: dict[str, list[int]] = {}
        for i, res in enumerate(results):
            if 'error' not in res and repeats > 0:
                groups.setdefault(timing_key(res), []).append(i)
        for members in groups.values():
            for i, timed in zip(members, times_of([cases[i] for i in members])):
                merge(results[i], timed)
        for res in results:
            log(format_row(res))
    return results


# ------------------------------------------------------------------------------------ ratios
def group_key(result: dict) -> str:
    """Everything that identifies a measurement except the variant (same shapes, same mode)."""
    if result['kind'] == 'model':
        h, w = result['resolution']
        shape = f"{os.path.basename(result['config'])} {result['batch']}x{h}x{w}"
        if result.get('fuse_conv_bn'):
            shape += ' fused-BN'
        if result.get('channels_last'):
            shape += ' channels-last'
        if result.get('cuda_graph'):
            shape += ' cuda-graph'
        if result.get('compile'):
            shape += ' compiled'
        if not result.get('conv_routes', True):
            shape += ' oneDNN-convs'
        if not result.get('lean', True):
            shape += ' plain-inference'

    else:
        shape = (f"N={result['n_tokens']} C={result['channels']} heads={result['heads']} "
                 f"Cv={result['channels'] * result['v_ratio']} B={result['batch']} "
                 f"T={result['T']}")
    if result.get('memory_cap_mib') is not None:
        shape += f" capped at {result['memory_cap_mib']:g} MiB"
    kind = 'operator' if result['kind'] == 'floor' else result['kind']
    return f"{kind} {result['mode']} {result['dtype']} {shape}"


def timing_key(result: dict) -> str:
    """:func:`group_key` of the case with mmlrf's conv routes on: a case and its oneDNN-convs
    twin are timed together by ``--interleave`` (same-run ratios between the two settings)."""
    return group_key(dict(result, conv_routes=True))


def compute_ratios(results: list[dict], reference: str = REFERENCE) -> list[dict]:
    """Peak-memory and time ratios ``variant / reference`` within each group of one run.

    Returns:
        list[dict]: ``group``, ``variant``, ``reference``, ``peak_mib``,
        ``reference_peak_mib``, ``peak_ratio``, ``time_ms``, ``reference_time_ms``,
        ``time_ratio`` (a ratio is None when the reference number is missing or zero).
    """
    groups: dict[str, list[dict]] = {}
    for r in results:
        if 'error' not in r:
            groups.setdefault(group_key(r), []).append(r)
    ratios = []
    for key, rows in groups.items():
        refs = [r for r in rows if r['variant'] == reference and r['kind'] != 'floor']
        if not refs:
            continue
        ref = refs[0]
        for r in rows:
            if r is ref:
                continue
            name = 'floor' if r['kind'] == 'floor' else r['variant']
            time_ratio = (r['time_ms'] / ref['time_ms']
                          if r.get('time_ms') and ref.get('time_ms') else None)
            ratios.append(dict(group=key, variant=name, reference=reference,
                               peak_mib=r['peak_mib'], reference_peak_mib=ref['peak_mib'],
                               peak_ratio=(r['peak_mib'] / ref['peak_mib']
                                           if ref['peak_mib'] > 0 else None),
                               time_ms=r.get('time_ms'), reference_time_ms=ref.get('time_ms'),
                               time_ratio=time_ratio))
    return ratios


# ------------------------------------------------------------------------------ case builders
def operator_cases(variants: list[str], n_tokens: list[int], channels: int = 360,
                   heads: int = 8, v_ratio: int = 4, batches: list[int] = (1,),
                   ts: list[int] = (1,), modes: list[str] = ('infer',),
                   dtypes: list[str] = ('float32',), floor: bool = True) -> list[dict]:
    """The cross product of the operator sweep (plus one 'floor' case per shape if asked)."""
    cases = []
    for mode in modes:
        for dtype in dtypes:
            for n in n_tokens:
                for b in batches:
                    for t in ts:
                        shape = dict(mode=mode, dtype=dtype, n_tokens=n, hw=list(grid_hw(n)),
                                     channels=channels, heads=heads, v_ratio=v_ratio,
                                     batch=b, T=t)
                        cases += [dict(kind='operator', variant=v, **shape) for v in variants]
                        if floor and mode == 'infer':
                            cases.append(dict(kind='floor', variant='floor', **shape))
    return cases


def model_cases(config: str, variants: list[str], resolutions: list[tuple[int, int]],
                batches: list[int] = (1,), modes: list[str] = ('infer',),
                dtypes: list[str] = ('float32',), cfg_options: dict | None = None,
                attn_key: str = 'model.backbone.attn', fused: Sequence[bool] = (False,),
                graphed: Sequence[bool] = (False,),
                channels_last: Sequence[bool] = (False,),
                conv_routes: Sequence[bool] = (True,),
                compiled: Sequence[bool] = (False,),
                lean: Sequence[bool] = (True,)) -> list[dict]:
    """The cross product of the whole-model sweep. ``fused`` lists the BN settings (True: fold
    every BN into its conv before measuring), ``graphed`` the launch settings (True: replay
    the forward as one CUDA graph, :class:`mmlrf.cuda_graph.GraphedForward`) and
    ``channels_last`` the weight layouts (True: :func:`mmlrf.hooks.to_channels_last`), e.g.
    ``(False, True)`` for both; these apply to inference only. ``compiled`` lists the
    execution settings (True: ``torch.compile``, default mode, of the inference forward or,
    as :func:`mmlrf.hooks.compile_segmentor` does, of the segmentor's ``loss``) and
    ``conv_routes`` the convolution settings (False: every conv through oneDNN,
    :func:`mmlrf.conv.cpu_routes`); both apply to any mode. ``lean`` lists the lean-inference
    settings (False: :func:`mmlrf.hooks.set_lean_inference` off), inference only.

    Raises:
        ValueError: for a fused, graphed, channels-last or plain-inference setting with a
            'train' mode, or graphed and compiled settings together.
    """
    if (any(fused) or any(graphed) or any(channels_last) or not all(lean)) and \
            'train' in modes:
        raise ValueError('fused, graphed, channels-last and plain-inference cases measure '
                         f'inference: they apply to the infer mode only, got modes={list(modes)}')
    if any(graphed) and any(compiled):
        raise ValueError('graphed and compiled cases are separate settings: measure them in '
                         'separate runs')
    return [dict(kind='model', variant=v, mode=mode, dtype=dtype, config=config,
                 resolution=list(res), batch=b, cfg_options=cfg_options or {},
                 attn_key=attn_key, fuse_conv_bn=fuse, cuda_graph=graph, channels_last=last,
                 conv_routes=routes, compile=comp, lean=lean_on)
            for fuse in fused for graph in graphed for last in channels_last
            for routes in conv_routes for comp in compiled for lean_on in lean
            for mode in modes for dtype in dtypes
            for res in resolutions for b in batches
            for v in variants]


def with_memory_cap(cases: list[dict], cap_mib: float) -> list[dict]:
    """``cases``, then each again capped at ``cap_mib`` MiB (``memory_cap_mib``, CUDA).

    The capped twins come last: cuDNN caches the algorithm it chose per convolution shape for
    the whole process, and a capped case replaces a cached algorithm whose workspace does not
    fit, which uncapped cases measured after it would then inherit.

    Raises:
        ValueError: for a cap ≤ 0.
    """
    check_memory_cap(cap_mib)
    return list(cases) + [dict(c, memory_cap_mib=cap_mib) for c in cases]


# ----------------------------------------------------------------------------------- reports
def format_row(r: dict) -> str:
    """One human-readable line per result."""
    name = f"{r['kind']:<8} {r['variant']:<16} {group_key(r)}"
    if 'error' in r:
        return f'{name}  ERROR {r["error"]}'
    t = f"{r['time_ms']:.3f} ms" if r.get('time_ms') else '-'
    if r.get('time_ms_pipelined'):
        t += f" ({r['time_ms_pipelined']:.3f} ms back to back)"
    ips = f"{r['images_per_s']:.2f} img/s" if r.get('images_per_s') else ''
    extra = (f"  extra/output {r['extra_over_output']:.2f}x" if 'extra_over_output' in r
             else '')
    if any(r.get('gc_ms', [])):
        extra += (f"  GC {sum(r['gc_ms']):.1f} ms in {sum(g > 0 for g in r['gc_ms'])} of "
                  f"{len(r['gc_ms'])} calls")
    return f"{name}  peak {r['peak_mib']:.1f} MiB  {t}  {ips}{extra}"


def format_ratio(r: dict) -> str:
    """One line per ratio."""
    t = f"  time {r['time_ratio']:.3f}x" if r['time_ratio'] is not None else ''
    p = f"{r['peak_ratio']:.3f}x" if r['peak_ratio'] is not None else 'n/a'
    return (f"RATIO {r['variant']}/{r['reference']} [{r['group']}]: peak {p} "
            f"({r['peak_mib']:.1f} / {r['reference_peak_mib']:.1f} MiB){t}")


def set_cuda_precision(tf32: str = 'off', cudnn_benchmark: bool = False) -> None:
    """Set the process-wide CUDA float32 precision and cuDNN autotuning for the measurements.

    Args:
        tf32 (str): one of :data:`TF32_MODES`: ``'off'`` (true fp32 everywhere, what the parity
            fixtures need), ``'convs'`` (TF32 in cuDNN convolutions only: PyTorch's default)
            or ``'all'`` (convolutions and matrix products).
        cudnn_benchmark (bool): let cuDNN time and pick conv algorithms (mmseg's runtime
            default; they may take larger workspaces).

    Raises:
        ValueError: for an unknown ``tf32``.
    """
    if tf32 not in TF32_MODES:
        raise ValueError(f'tf32 must be one of {TF32_MODES}, got {tf32!r}')
    torch.backends.cuda.matmul.allow_tf32 = tf32 == 'all'
    torch.backends.cudnn.allow_tf32 = tf32 != 'off'
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def environment(device: str) -> dict:
    """Machine, versions and settings recorded with every report."""
    env = dict(date=datetime.date.today().isoformat(), torch=torch.__version__,
               python=platform.python_version(), platform=platform.platform(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device=device)
    if device.startswith('cuda') and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(device),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark)
    return env


def plot_results(results: list[dict], path: str, title: str = 'mmlrf benchmark') -> None:
    """Horizontal bar plot of peak memory and time per measurement (log scale), one PNG."""
    from .plotting import new_figure, save_figure
    rows = [r for r in results if 'error' not in r]
    labels = [f"{r['variant']} | {group_key(r)}" for r in rows]
    fig, axes = new_figure(1, 2, size=(16, 1.5 + 0.35 * max(len(rows), 1)))
    for ax, field, unit in ((axes[0], 'peak_mib', 'peak memory above baseline (MiB)'),
                            (axes[1], 'time_ms', 'time per iteration (ms, median)')):
        values = [max(r.get(field) or 0.0, 1e-6) for r in rows]
        ax.barh(range(len(rows)), values, color=['C1' if r['variant'] == REFERENCE else 'C0'
                                                 for r in rows])
        ax.set_xscale('log')
        ax.set_xlabel(unit)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=7)
        ax.invert_yaxis()
    fig.suptitle(title)
    save_figure(fig, path)


def write_report(results: list[dict], out_prefix: str, device: str, command: str,
                 highlights: list[dict] | None = None) -> dict:
    """Write ``<out_prefix>.json`` and ``<out_prefix>.png``; return the report dict.

    JSON fields: ``meta`` (:func:`environment` + ``command`` + ``memory_method``),
    ``results`` (:func:`run_case` dicts), ``ratios`` (:func:`compute_ratios`),
    ``highlights`` (the ratios a preset asked for, by ``label``).
    """
    from .memory import __doc__ as memory_doc
    method = ('cuda: max_memory_allocated above the pre-run allocation' if device.startswith('cuda')
              else 'cpu: peak RSS (VmHWM, reset via /proc/self/clear_refs) above the pre-run '
                   'RSS, one fresh subprocess per case with MALLOC_MMAP_THRESHOLD_=65536')
    report = dict(meta=dict(environment(device), command=command, memory_method=method,
                            memory_method_doc=(memory_doc or '').strip()),
                  results=results, ratios=compute_ratios(results), highlights=highlights or [])
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    with open(out_prefix + '.json', 'w') as f:
        json.dump(report, f, indent=1)
    plot_results(results, out_prefix + '.png')
    return report


def find_ratio(ratios: list[dict], case: dict) -> dict | None:
    """The ratio row of ``case`` (its variant, or 'floor', in its group), None if not measured."""
    name, key = ('floor' if case['kind'] == 'floor' else case['variant']), group_key(case)
    return next((r for r in ratios if r['variant'] == name and r['group'] == key), None)


def pick_case(cases: list[dict], variant: str, **fields: Any) -> dict:
    """The first case of ``variant`` whose ``fields`` have the given values (a highlight's case).

    Raises:
        ValueError: if no case matches.
    """
    for c in cases:
        if c['variant'] == variant and all(c.get(k) == v for k, v in fields.items()):
            return c
    raise ValueError(f'no case of {variant!r} with {fields}')


# ----------------------------------------------------------------------------------- presets
#: The SDT-V3-19M + spiking FPN segmentor with the official attention (ADE20K head, 150 classes).
MODEL_19M_CONFIG = os.path.join('configs', '_base_', 'models', 'fpn_sdtv3.py')
PRESETS = ('issue4', 'issue5', 'sweep')
#: Tiny CPU-sized model used by :func:`smoke_cases`.
TOY_CONFIG = os.path.join('configs', 'toy', 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py')


def estimate_mib(case: dict) -> float:
    """Rough lower bound of a case's peak (MiB): the N×N maps of QK-first variants.

    Used only to skip cases that cannot fit the memory budget (``run_cases``'s caller marks
    them 'skipped'); SDT-V3 attention runs at stride 16 with 8 heads.
    """
    if case['kind'] in ('floor', 'dynamics'):
        return 0.0
    cfg, _ = parse_variant(case['variant'])
    if cfg.get('order') != 'qk':
        return 0.0
    size = _dtype(case['dtype'])
    if case['kind'] == 'model':
        h, w = case['resolution']
        n, heads, t = math.ceil(h / 16) * math.ceil(w / 16), 8, 1
        maps = 8 if case['mode'] == 'train' else 1   # saved for backward in every block
    else:
        n, heads, t, maps = case['n_tokens'], case['heads'], case['T'], 1
    return maps * _tensor_mib(t * case['batch'] * heads * n * n, size)


def preset_cases(name: str, device: str = 'cpu', model_config: str = MODEL_19M_CONFIG,
                 cpu_train_batch: int = 2) -> tuple[list[dict], list[dict]]:
    """Cases and highlight specs of a named preset.

    * ``issue4``: operator N = 4096 (64×64), C = 360, 8 heads, V = 4C, batch 1, fp32 inference:
      official, KV-first SSA, LRF-SSA, LRF-Dyn, floor; whole 19M model at 1×1024×2048
      inference: official, LRF-SSA, LRF-Dyn.
    * ``sweep``: whole 19M model, official vs LRF-SSA vs LRF-Dyn, inference at 512×512 and
      1024×2048 with batch 1 and 8, a training step at 8×512×512; on CUDA also bfloat16
      (autocast) inference at 1×1024×2048 and bfloat16 operators at N = 8192, batch 8.
    * ``issue5``: operator N = 8192 (64×128), batch 8, C = 360, 8 heads, V = 4C, fp32
      inference: official, KV-first, LRF-Dyn in every dynamics mode, floor; operator N = 4096
      batch 1 (the CPU target); whole model 1×1024×2048 inference (on CPU also with the BNs
      folded and the weights channels-last) and a training step at 8×512×512 (on CPU batch
      ``cpu_train_batch``), official vs LRF-Dyn; the dendritic
      operator alone on ``[8, 1440, 64, 128]`` in every mode (kind 'dynamics', reported with
      ``extra_over_output``: the issue's "extra memory ≤ 2× the output tensor" target). TF32
      stays off unless ``--tf32`` (run once with and once without to compare). The highlight
      labels quote the targets; on the CPU they are the issue's ratios to the official model
      (1.25 GB / 2.5 GB = 0.5 and 15.2 / 23 img/s = 0.66 for inference, 10.8 / 18.0 GiB = 0.6
      and 1.0 for the training step).

    Returns:
        (cases, highlights): each highlight is ``dict(label, case)``, ``case`` one of ``cases``
        (its ratio to the official model in the same group is highlighted; shrink it along
        with the cases for a smoke run).
    """
    if name not in PRESETS:
        raise ValueError(f'preset must be one of {PRESETS}, got {name!r}')
    op = dict(channels=360, heads=8, v_ratio=4)
    if name == 'issue4':
        cases = operator_cases(['official', 'ssa_kv', 'lrf_ssa', 'lrf_dyn'], [4096], **op)
        cases += model_cases(model_config, ['official', 'lrf_ssa', 'lrf_dyn'], [(1024, 2048)])
        highlights = [
            dict(label='operator N=4096 inference peak memory, LRF-Dyn / official',
                 case=pick_case(cases, 'lrf_dyn', kind='operator')),
            dict(label='SDT-V3-19M 1x1024x2048 inference peak memory, LRF-Dyn / official',
                 case=pick_case(cases, 'lrf_dyn', kind='model'))]
        return cases, highlights
    if name == 'sweep':
        three = ['official', 'lrf_ssa', 'lrf_dyn']
        cases = model_cases(model_config, three, [(512, 512), (1024, 2048)], batches=[1, 8])
        cases += model_cases(model_config, three, [(512, 512)], batches=[8], modes=['train'])
        if device.startswith('cuda'):
            cases += model_cases(model_config, ['official', 'lrf_dyn'], [(1024, 2048)],
                                 dtypes=['bfloat16'])
            cases += operator_cases(['official', 'ssa_kv', 'lrf_dyn'], [8192], batches=[8],
                                    dtypes=['bfloat16'], **op)
        return cases, []
    modes = [m for m in dynamics_modes() if m != 'triton' or device.startswith('cuda')]
    cases = operator_cases(['official', 'ssa_kv'] + [f'lrf_dyn:{m}' for m in modes], [8192],
                           batches=[8], **op)
    cases += operator_cases(['official', 'lrf_dyn'], [4096], floor=False, **op)
    cases += dynamics_cases(modes)
    cases += model_cases(model_config, ['official', 'lrf_dyn'], [(1024, 2048)])
    if not device.startswith('cuda'):
        cases += model_cases(model_config, ['official', 'lrf_dyn'], [(1024, 2048)],
                             fused=(True,), channels_last=(True,))
    train_batch = 8 if device.startswith('cuda') else cpu_train_batch
    cases += model_cases(model_config, ['official', 'lrf_dyn'], [(512, 512)],
                         batches=[train_batch], modes=['train'])
    highlights = [dict(label=f'operator N=8192 B=8 forward, LRF-Dyn ({m}) / official',
                       case=pick_case(cases, f'lrf_dyn:{m}', n_tokens=8192)) for m in modes]
    highlights += [
        dict(label='operator N=8192 B=8: floor (V.clone()) / official',
             case=pick_case(cases, 'floor', n_tokens=8192)),
        dict(label='operator N=4096 B=1 peak memory, LRF-Dyn / official (target <= 0.25)',
             case=pick_case(cases, 'lrf_dyn', kind='operator', n_tokens=4096)),
        dict(label='SDT-V3-19M+FPN 1x1024x2048 inference, LRF-Dyn / official (CPU targets: '
                   'peak <= 0.5, time <= 0.66)',
             case=pick_case(cases, 'lrf_dyn', kind='model', mode='infer', fuse_conv_bn=False,
                            channels_last=False)),
        dict(label=f'SDT-V3-19M+FPN training step {train_batch}x512x512, LRF-Dyn / official '
                   '(CPU targets: peak <= 0.6, time <= 1.0)',
             case=pick_case(cases, 'lrf_dyn', kind='model', mode='train'))]
    if not device.startswith('cuda'):
        highlights.append(dict(
            label='SDT-V3-19M+FPN 1x1024x2048 inference, BN folded + channels-last, LRF-Dyn / '
                  'official (CPU targets: peak <= 0.5, time <= 0.66)',
            case=pick_case(cases, 'lrf_dyn', kind='model', fuse_conv_bn=True,
                           channels_last=True)))
    return cases, highlights


def smoke_cases(cases: list[dict], toy_config: str = TOY_CONFIG) -> list[dict]:
    """Shrink cases to a quick CPU dry run: operators to N/16 tokens, C = 32, 4 heads; models
    to the toy config at 1/16 of each side (at least 64 px), batch at most 2."""
    out = []
    for c in cases:
        c = dict(c, batch=min(c['batch'], 2))
        if c['kind'] == 'model':
            c.update(config=toy_config,
                     resolution=[max(64, c['resolution'][0] // 16),
                                 max(64, c['resolution'][1] // 16)])
        else:
            n = max(c['n_tokens'] // 16, 16)
            c.update(n_tokens=n, hw=list(grid_hw(n)), channels=32,
                     heads=1 if c['kind'] == 'dynamics' else 4)
        out.append(c)
    return out


def run_benchmark(cases: list[dict], device: str, out_prefix: str, command: str,
                  highlights: list[dict] | None = None, warmup: int = 1, repeats: int = 3,
                  budget_mib: float | None = None, timeout_s: float | None = None,
                  isolate: bool | None = None, interleave: bool = False,
                  freeze_gc: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run cases (skipping those whose :func:`estimate_mib` exceeds ``budget_mib``), write the
    JSON + PNG report, print every ratio and the highlights, and return the report
    (``interleave``, ``freeze_gc``: see :func:`run_cases`)."""
    todo, skipped = [], []
    for c in cases:
        est = estimate_mib(c)
        if budget_mib is not None and est > budget_mib:
            skipped.append(dict(c, error=f'skipped: estimated >= {est:.0f} MiB exceeds the '
                                         f'budget {budget_mib:.0f} MiB'))
            log(format_row(skipped[-1]))
        else:
            todo.append(c)
    results = run_cases(todo, device, warmup, repeats, isolate, timeout_s=timeout_s,
                        interleave=interleave, freeze_gc=freeze_gc, log=log) + skipped
    ratios = compute_ratios(results)
    found = []
    for h in highlights or []:
        r = find_ratio(ratios, h['case'])
        found.append(dict(h, ratio=r))
    report = write_report(results, out_prefix, device, command, found)
    for r in report['ratios']:
        log(format_ratio(r))
    for h in found:
        r = h['ratio']
        log(f"HIGHLIGHT {h['label']}: " + (format_ratio(r) if r else
                                           'not measured (see errors above)'))
    return report
