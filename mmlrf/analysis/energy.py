"""Firing rates, synaptic operations and energy of a spiking network per image, from forward
hooks, by the field's conventions:

* **Spike count**: a MultiSpike output ``round(clamp(x, 0, D)) / norm`` times ``norm`` (0…D,
  each integer unrolled into as many binary spikes), a LIF output (0/1 per time step) as it is;
  a tensor's *firing rate* is its mean count per element.
* **SOPs** of a layer fed by spikes: ``rate(input) × FLOPs`` (the dense multiply-accumulates of
  the call over all T·B frames); ``sops_exact`` counts each input spike once per weight it meets
  (a conv of the counts with all-ones weights, zero padding included). **MACs** of a layer fed
  by a real-valued tensor (the first conv on the image): its FLOPs.
* **Attention products** from their operands: ``(Q Kᵀ) V``: ``rate(Q)·T·B·N²·C +
  rate(V)·T·B·N²·Cv``; ``Q (Kᵀ V)``: ``(rate(K) + rate(Q))·T·B·N·C·Cv/heads``; LRF-Dyn's
  gates ``k ⊙ v`` and ``q ⊙ ·``: ``rate(K)·numel(V)`` and ``rate(Q)·numel(V)``. The dendritic
  operator, whatever its evaluation path: ``rate(u)·numel(u)·k`` SOPs (input into k dendrites)
  and ``2·numel(u)·k`` MACs (update and readout of a real state); complex modes (PMSN) twice the
  SOPs (real and imaginary input weights) and ``6·numel(u)·k`` MACs (a complex update, the real
  part of a complex readout).
* **Energy** ``e_mac · MACs + e_ac · SOPs``, by default 4.6 pJ and 0.9 pJ (45 nm).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inference import set_lean_inference
from ..models.mixers import LRFDyn, TokenMixer
from ..models.neurons import MultiSpike, MultiStepLIF
from ..ops.dendritic import DendriticDynamics
from .report import new_figure, save_figure

E_MAC_PJ, E_AC_PJ = 4.6, 0.9
COMPUTE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
COUNTS = ('flops', 'sops', 'sops_exact', 'macs')


def layer_flops(layer: nn.Module, out: Tensor) -> int:
    """Dense multiply-accumulates of one call of a conv or linear layer (all samples)."""
    if isinstance(layer, nn.Linear):
        return out.numel() * layer.in_features
    return out.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)


def exact_sops(layer: nn.Module, counts: Tensor) -> float:
    """Accumulates the spike ``counts`` (the layer's input × scale) trigger in ``layer``."""
    if isinstance(layer, nn.Linear):
        return float(counts.sum()) * layer.out_features
    if layer.padding_mode != 'zeros':
        raise ValueError(f'padding_mode {layer.padding_mode!r} not supported, only zeros')
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
    ones = torch.ones(layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size,
                      dtype=counts.dtype, device=counts.device)
    return float(conv(counts, ones, None, layer.stride, layer.padding, layer.dilation,
                      layer.groups).sum())


class EnergyMeter:
    """Forward hooks counting the firing rates, SOPs and MACs of every layer of ``model``
    (neurons of :mod:`mmlrf.models.neurons`), at ``e_mac`` / ``e_ac`` pJ per MAC / accumulate.

    A context manager around forward passes; then :meth:`report`. Inside it lean inference is
    off (:func:`~mmlrf.inference.set_lean_inference`; each module's setting comes back on exit):
    its row strips would split one layer's call into several, and its in-place paths write real
    values over spike maps, which the meter recognises by address.
    """

    def __init__(self, model: nn.Module, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> None:
        self.model, self.e_mac, self.e_ac = model, e_mac, e_ac
        self.images = 0
        self.neurons: dict[str, dict] = {}
        self.layers: dict[str, dict] = {}
        # address of a neuron output -> (scale, the output: kept alive so that no other tensor
        # takes its address within the pass)
        self._spikes: dict[int, tuple[float, Tensor]] = {}
        self._handles: list = []
        self._lean: dict[nn.Module, bool] = {}

    def input_scale(self, x: Tensor) -> float | None:
        """The spike scale of ``x`` if a neuron emitted it (by address, else by value: every
        element a non-negative multiple of 1/scale of a scale seen), else None."""
        if x.data_ptr() in self._spikes:
            return self._spikes[x.data_ptr()][0]
        if x.is_floating_point() and x.numel() and bool((x >= 0).all()):
            for s in sorted({s for s, _ in self._spikes.values()}):
                if torch.equal(x * s, torch.round(x * s)):
                    return s
        return None

    def _entry(self, name: str, module: nn.Module) -> dict:
        return self.layers.setdefault(name, dict(dict.fromkeys(COUNTS, 0.0), count=0.0, elements=0,
                                                 type=type(module).__name__, input='real'))

    def _add(self, e: dict, x: Tensor, flops: float, exact: Callable[[Tensor], float]) -> None:
        """Add one call of ``flops`` fed by ``x``: SOPs if ``x`` is spikes, else MACs."""
        x = x.detach()
        e['flops'] += flops
        scale = self.input_scale(x)
        if scale is None:
            e['macs'] += flops
            return
        counts = x.double() * scale
        e['input'] = 'spike'
        e['count'] += float(counts.sum())
        e['elements'] += x.numel()
        e['sops'] += float(counts.mean()) * flops
        e['sops_exact'] += exact(counts)

    def _neuron_hook(self, name: str, module: nn.Module, args: tuple, out: Tensor) -> None:
        scale = float(module.norm) if isinstance(module, MultiSpike) else 1.0
        self._spikes[out.data_ptr()] = (scale, out)
        stat = self.neurons.setdefault(name, dict(type=type(module).__name__, scale=scale,
                                                  count=0.0, elements=0))
        stat['count'] += float(out.detach().double().sum()) * scale
        stat['elements'] += out.numel()

    def _layer_hook(self, name: str, module: nn.Module, args: tuple, out: Tensor) -> None:
        self._add(self._entry(name, module), args[0], layer_flops(module, out),
                  lambda counts: exact_sops(module, counts))

    def _mixer_hook(self, name: str, module: nn.Module, args: tuple) -> None:
        q, k, v, _ = args
        if isinstance(module, LRFDyn):
            self._gate_hook(name, module, q, k, v)
            return
        order = getattr(module, 'order', None)
        if order not in ('qk', 'kv') or q is None or k is None or v is None:
            return
        e = self._entry(name + '.product', module)
        t, b, c, h, w = q.shape
        n, heads, cv = h * w, module.num_heads, v.shape[2]
        pairs = (((q, n * c), (v, n * cv)) if order == 'qk' else ((k, c * cv // heads),
                                                                  (q, c * cv // heads)))
        for operand, per_token in pairs:
            flops = t * b * n * per_token
            self._add(e, operand, flops, lambda counts, f=flops: float(counts.mean()) * f)

    def _dynamics_hook(self, name: str, module: nn.Module, args: tuple, out: Tensor) -> None:
        e, u = self._entry(name, module), args[0]
        parts = 2 if module.parameterization == 'pmsn' else 1  # complex modes: real, imaginary
        k = module.num_dendrites * parts
        self._add(e, u, u.numel() * k, lambda counts: float(counts.sum()) * k)
        macs = (6 if parts == 2 else 2) * u.numel() * module.num_dendrites
        e['flops'] += macs
        e['macs'] += macs

    def _gate_hook(self, name: str, module: LRFDyn, q: Tensor | None, k: Tensor | None,
                   v: Tensor | None) -> None:
        """LRF-Dyn's element-wise products with spikes: ``k ⊙ v`` and the query readout."""
        cv = module.v_channels
        for tag, gate, used in (('key', k, module.token == 'k*v'), ('query', q,
                                                                    module.query_gate)):
            if used and gate is not None:
                flops = gate.numel() * cv // module.qk_channels
                self._add(self._entry(f'{name}.{tag}_gate', module), gate, flops,
                          lambda counts: float(counts.sum()) * cv / module.qk_channels)

    def __enter__(self) -> EnergyMeter:
        self._lean = {m: m.lean_inference for m in self.model.modules()
                      if hasattr(m, 'lean_inference')}
        set_lean_inference(self.model, False)
        for name, m in self.model.named_modules():
            hook = (self._neuron_hook if isinstance(m, (MultiSpike, MultiStepLIF)) else
                    self._layer_hook if isinstance(m, COMPUTE_LAYERS) else
                    self._dynamics_hook if isinstance(m, DendriticDynamics) else None)
            if hook is not None:
                self._handles.append(m.register_forward_hook(
                    lambda *a, name=name, hook=hook: hook(name, *a)))
            elif isinstance(m, TokenMixer):
                self._handles.append(m.register_forward_pre_hook(
                    lambda *a, name=name: self._mixer_hook(name, *a)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, lean in self._lean.items():
            module.lean_inference = lean

    def add_images(self, n: int) -> None:
        """Count ``n`` images seen and forget the outputs of the pass."""
        self.images += n
        self._spikes.clear()

    def report(self) -> dict:
        """Per-image numbers: ``images``, ``e_mac_pj``, ``e_ac_pj``, ``layers`` (``name, type,
        input`` ('spike' | 'real'), ``input_rate``, :data:`COUNTS`, ``energy_pj``), ``neurons``
        (``name, type, scale, firing_rate``) and ``totals`` (:data:`COUNTS`, ``energy_mj``,
        ``energy_exact_mj``, ``mean_firing_rate``)."""
        n = max(self.images, 1)
        layers = [dict(name=name, type=e['type'], input=e['input'],
                       input_rate=e['count'] / e['elements'] if e['elements'] else None,
                       **{key: e[key] / n for key in COUNTS}) for name, e in self.layers.items()]
        for row in layers:
            row['energy_pj'] = self.e_mac * row['macs'] + self.e_ac * row['sops']
        tot = {key: sum(r[key] for r in layers) for key in COUNTS}
        tot['energy_mj'] = (self.e_mac * tot['macs'] + self.e_ac * tot['sops']) * 1e-9
        tot['energy_exact_mj'] = (self.e_mac * tot['macs'] + self.e_ac * tot['sops_exact']) * 1e-9
        stats = self.neurons.values()
        tot['mean_firing_rate'] = (sum(s['count'] for s in stats)
                                   / max(sum(s['elements'] for s in stats), 1))
        neurons = [dict(name=name, type=s['type'], scale=s['scale'],
                        firing_rate=s['count'] / s['elements'] if s['elements'] else 0.0)
                   for name, s in self.neurons.items()]
        return dict(images=self.images, e_mac_pj=self.e_mac, e_ac_pj=self.e_ac, layers=layers,
                    neurons=neurons, totals=tot)


def measure_energy(model: nn.Module, batches: Iterable[Tensor], e_mac: float = E_MAC_PJ,
                   e_ac: float = E_AC_PJ,
                   forward: Callable[[nn.Module, Tensor], Any] | None = None) -> dict:
    """:meth:`EnergyMeter.report` of ``forward(model, x)`` (default ``model(x)``) over image
    batches ``[B, 3, H, W]``, in eval mode without autograd."""
    model.eval()
    meter = EnergyMeter(model, e_mac, e_ac)
    with torch.no_grad(), meter:
        for x in batches:
            (forward or (lambda m, t: m(t)))(model, x)
            meter.add_images(x.shape[0])
    return meter.report()


def format_table(report: dict) -> str:
    """The per-layer table and the totals as text."""
    lines = [f"{'layer':<48} {'type':<18} {'input':<5} {'rate':>7} {'MFLOPs':>10} "
             f"{'M SOPs':>10} {'M MACs':>10} {'uJ':>9}"]
    for r in report['layers']:
        rate = f"{r['input_rate']:.4f}" if r['input_rate'] is not None else '-'
        lines.append(f"{r['name'][-48:]:<48} {r['type'][:18]:<18} {r['input']:<5} {rate:>7} "
                     f"{r['flops'] / 1e6:>10.3f} {r['sops'] / 1e6:>10.3f} "
                     f"{r['macs'] / 1e6:>10.3f} {r['energy_pj'] * 1e-6:>9.3f}")
    t = report['totals']
    lines.append(f"TOTAL per image ({report['images']} images): {t['flops'] / 1e9:.4f} GFLOPs, "
                 f"{t['sops'] / 1e9:.4f} G SOPs ({t['sops_exact'] / 1e9:.4f} G exact), "
                 f"{t['macs'] / 1e9:.4f} G MACs, energy {t['energy_mj']:.4f} mJ (exact events "
                 f"{t['energy_exact_mj']:.4f} mJ) at E_MAC {report['e_mac_pj']} pJ, E_AC "
                 f"{report['e_ac_pj']} pJ; mean firing rate {t['mean_firing_rate']:.4f}")
    return '\n'.join(lines)


def plot_energy(report: dict, path: str) -> None:
    """One PNG: energy per layer, its SOP and MAC parts stacked."""
    layers = report['layers']
    fig, (ax,) = new_figure(1, 1, size=(10, 1.5 + 0.18 * max(len(layers), 1)))
    sop = [report['e_ac_pj'] * r['sops'] * 1e-6 for r in layers]
    ax.barh(range(len(layers)), sop, label='AC (SOPs)')
    ax.barh(range(len(layers)), [report['e_mac_pj'] * r['macs'] * 1e-6 for r in layers],
            left=sop, label='MAC')
    ax.set_yticks(range(len(layers)), [r['name'] for r in layers], fontsize=6)
    ax.invert_yaxis()
    ax.set(xlabel='energy per image (uJ)',
           title=f"total {report['totals']['energy_mj']:.4f} mJ per image")
    ax.legend()
    save_figure(fig, path)
