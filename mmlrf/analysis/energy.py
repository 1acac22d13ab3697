"""Firing rates, synaptic operations and energy of a spiking network, from forward hooks.

Conventions (the field's, ``docs/benchmarks.md``):

* **Spike count.** A neuron's output is turned back into integer spike counts: MultiSpike
  outputs ``round(clamp(x, 0, D)) / norm``, so the count is ``output × norm`` (0…D, each integer
  unrolled into that many binary spikes at inference); a LIF emits 0/1 per time step (scale 1).
  The *firing rate* of a tensor is the mean count per element (per time step for LIF).
* **SOPs** of a layer whose input is a spike tensor: ``rate(input) × FLOPs``, FLOPs = the dense
  multiply-accumulates of the call over all T·B frames, i.e. per image ``rate × T × FLOPs_frame``.
  ``sops_exact`` also counts the actual events: each input spike triggers one accumulate per
  weight it meets (a conv of the count map with all-ones weights, summed), padding included.
* **MACs** for layers whose input is real-valued (the first conv on the image, and any layer fed
  by a non-spike tensor): their dense FLOPs.
* **Attention products** from the actual operand spikes: SSA ``(Q Kᵀ) V`` counts
  ``rate(Q) · T·B·heads·N²·d`` + ``rate(V) · T·B·heads·N²·dv`` SOPs, ``Q (Kᵀ V)`` counts
  ``rate(K) · T·B·heads·N·d·dv`` + ``rate(Q) · T·B·heads·N·d·dv``; the dendritic dynamics counts
  ``rate(u) · numel(u) · k`` SOPs (input injection into k dendrites) and ``2 · numel(u) · k``
  MACs (state update and readout of the real-valued state), whatever its evaluation path.
* Energy: ``E = e_mac · MACs + e_ac · SOPs`` with 4.6 pJ and 0.9 pJ (45 nm) by default.

Everything is reported per image (totals divided by the number of images seen).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..neurons import MultiSpike, MultiStepLIF

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
COMPUTE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def spike_scale(neuron: nn.Module) -> float:
    """Factor turning a neuron's output into integer spike counts (MultiSpike: ``norm``)."""
    return float(neuron.norm) if isinstance(neuron, MultiSpike) else 1.0


def layer_flops(layer: nn.Module, out: Tensor) -> int:
    """Dense multiply-accumulates of one call of a conv / linear layer (all samples)."""
    if isinstance(layer, nn.Linear):
        return out.numel() * layer.in_features
    per_out = layer.in_channels // layer.groups
    for k in layer.kernel_size:
        per_out *= k
    return out.numel() * per_out


def exact_sops(layer: nn.Module, counts: Tensor) -> float:
    """Accumulates triggered by the spike counts ``counts`` (the layer's input × scale)."""
    if isinstance(layer, nn.Linear):
        return float(counts.sum()) * layer.out_features
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
    ones = torch.ones(layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size,
                      dtype=counts.dtype, device=counts.device)
    if layer.padding_mode != 'zeros':
        raise ValueError(f'padding_mode {layer.padding_mode!r} not supported, only zeros')
    return float(conv(counts, ones, None, layer.stride, layer.padding, layer.dilation,
                      layer.groups).sum())


class EnergyMeter:
    """Forward hooks collecting firing rates, SOPs and MACs of every layer of ``model``.

    Use as a context manager around forward passes, then call :meth:`report`. Inside it, every
    conv sees its whole map (:func:`~mmlrf.strips.whole_maps`), so each hooked call
    counts a whole layer.

    Args:
        model (nn.Module): the network (neurons from :mod:`mmlrf.neurons`).
        e_mac (float): energy of a multiply-accumulate, pJ.
        e_ac (float): energy of an accumulate, pJ.
    """

    def __init__(self, model: nn.Module, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> None:
        self.model, self.e_mac, self.e_ac = model, e_mac, e_ac
        self.images = 0
        self.neurons: OrderedDict[str, dict] = OrderedDict()
        self.layers: OrderedDict[str, dict] = OrderedDict()
        # data_ptr of a neuron output -> (scale, the output, kept alive so no other tensor
        # can take its address during the forward pass)
        self._spikes: dict[int, tuple[float, Tensor]] = {}
        self._scales: set[float] = set()
        self._handles: list = []

    # ------------------------------------------------------------------------------ hooks
    def _neuron_hook(self, name: str, scale: float):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            self._spikes[out.data_ptr()] = (scale, out)
            self._scales.add(scale)
            stat = self.neurons.setdefault(name, dict(type=type(module).__name__, scale=scale,
                                                      count=0.0, elements=0))
            stat['count'] += float(out.detach().double().sum()) * scale
            stat['elements'] += out.numel()
        return hook

    def input_scale(self, x: Tensor) -> float | None:
        """Spike scale of ``x`` if it is a neuron output (by storage, else by value), else None."""
        if x.data_ptr() in self._spikes:
            return self._spikes[x.data_ptr()][0]
        if x.is_floating_point() and x.numel() and bool((x >= 0).all()):
            for s in sorted(self._scales):
                c = x * s
                if torch.equal(c, torch.round(c)):
                    return s
        return None

    def _entry(self, name: str, module: nn.Module) -> dict:
        return self.layers.setdefault(name, dict(type=type(module).__name__, input='real',
                                                 flops=0.0, sops=0.0, sops_exact=0.0, macs=0.0,
                                                 count=0.0, elements=0))

    def _layer_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0].detach()
            e = self._entry(name, module)
            flops = layer_flops(module, out)
            e['flops'] += flops
            scale = self.input_scale(x)
            if scale is None:
                e['macs'] += flops
                return
            counts = x.double() * scale
            rate = float(counts.mean())
            e['input'] = 'spike'
            e['count'] += float(counts.sum())
            e['elements'] += x.numel()
            e['sops'] += rate * flops
            e['sops_exact'] += exact_sops(module, counts)
        return hook

    def _operand(self, x: Tensor | None) -> tuple[float, bool]:
        """(mean spike count, is spike) of an attention operand."""
        scale = self.input_scale(x.detach())
        if scale is None:
            return float(x.detach().double().abs().mean()), False
        return float(x.detach().double().mean()) * scale, True

    def _add_product(self, e: dict, operand: Tensor, flops: float) -> None:
        rate, is_spike = self._operand(operand)
        e['flops'] += flops
        if is_spike:
            e['input'] = 'spike'
            e['sops'] += rate * flops
            e['sops_exact'] += rate * flops
        else:
            e['macs'] += flops

    def _mixer_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            q, k, v, _ = args
            order = getattr(module, 'order', None)
            if order not in ('qk', 'kv') or q is None or k is None or v is None:
                return
            e = self._entry(name + '.product', module)
            t, b, c, h, w = q.shape
            heads, n, cv = module.num_heads, h * w, v.shape[2]
            d, dv = c // heads, cv // heads
            if order == 'qk':
                self._add_product(e, q, t * b * heads * n * n * d)
                self._add_product(e, v, t * b * heads * n * n * dv)
            else:
                self._add_product(e, k, t * b * heads * n * d * dv)
                self._add_product(e, q, t * b * heads * n * d * dv)
        return hook

    def _dynamics_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            u = args[0]
            e = self._entry(name, module)
            k = getattr(module, 'num_dendrites', 8)
            self._add_product(e, u, u.numel() * k)
            e['flops'] += 2 * u.numel() * k
            e['macs'] += 2 * u.numel() * k
        return hook

    def __enter__(self) -> 'EnergyMeter':
        from ..attention import TokenMixer
        from ..attention.dynamics import DendriticDynamics
        from ..strips import whole_maps
        self._whole_maps = whole_maps()  # one hooked call per conv and map
        self._whole_maps.__enter__()
        for name, m in self.model.named_modules():
            if isinstance(m, (MultiSpike, MultiStepLIF)):
                self._handles.append(m.register_forward_hook(
                    self._neuron_hook(name, spike_scale(m))))
            elif isinstance(m, COMPUTE_LAYERS):
                self._handles.append(m.register_forward_hook(self._layer_hook(name)))
            elif isinstance(m, TokenMixer):
                self._handles.append(m.register_forward_pre_hook(self._mixer_hook(name)))
            elif isinstance(m, DendriticDynamics):
                self._handles.append(m.register_forward_hook(self._dynamics_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._whole_maps.__exit__(*exc)

    def add_images(self, n: int) -> None:
        """Count ``n`` images seen (for per-image numbers) and forget stale output pointers."""
        self.images += n
        self._spikes.clear()

    # ----------------------------------------------------------------------------- report
    def report(self) -> dict:
        """Per-image numbers.

        Returns:
            dict: ``images``, ``e_mac_pj``, ``e_ac_pj``, ``layers`` (list of ``name, type,
            input ('spike'|'real'), input_rate, flops, sops, sops_exact, macs, energy_pj``),
            ``neurons`` (list of ``name, type, scale, firing_rate``) and ``totals``
            (``flops, sops, sops_exact, macs, energy_mj, energy_exact_mj``).
        """
        n = max(self.images, 1)
        layers = []
        for name, e in self.layers.items():
            row = dict(name=name, type=e['type'], input=e['input'],
                       input_rate=e['count'] / e['elements'] if e['elements'] else None)
            for key in ('flops', 'sops', 'sops_exact', 'macs'):
                row[key] = e[key] / n
            row['energy_pj'] = self.e_mac * row['macs'] + self.e_ac * row['sops']
            layers.append(row)
        neurons = [dict(name=name, type=s['type'], scale=s['scale'],
                        firing_rate=s['count'] / s['elements'] if s['elements'] else 0.0)
                   for name, s in self.neurons.items()]
        tot = {key: sum(r[key] for r in layers) for key in ('flops', 'sops', 'sops_exact',
                                                              'macs')}
        tot['energy_mj'] = (self.e_mac * tot['macs'] + self.e_ac * tot['sops']) * 1e-9
        tot['energy_exact_mj'] = (self.e_mac * tot['macs'] + self.e_ac * tot['sops_exact']) * 1e-9
        tot['mean_firing_rate'] = (sum(s['count'] for s in self.neurons.values()) /
                                   max(sum(s['elements'] for s in self.neurons.values()), 1))
        return dict(images=self.images, e_mac_pj=self.e_mac, e_ac_pj=self.e_ac, layers=layers,
                    neurons=neurons, totals=tot)


def measure_energy(model: nn.Module, batches: Iterable[Tensor], e_mac: float = E_MAC_PJ,
                   e_ac: float = E_AC_PJ, forward=None) -> dict:
    """Run ``model`` (eval, no grad) over image batches ``[B, 3, H, W]`` and report energy.

    Args:
        model: the network.
        batches: iterable of input tensors.
        e_mac, e_ac: energies in pJ.
        forward: callable ``forward(model, x)``; default ``model(x)``.
    """
    model.eval()
    meter = EnergyMeter(model, e_mac, e_ac)
    with torch.no_grad(), meter:
        for x in batches:
            (forward or (lambda m, t: m(t)))(model, x)
            meter.add_images(x.shape[0])
    return meter.report()


def format_table(report: dict) -> str:
    """The per-layer table and totals as text."""
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
                 f"{t['macs'] / 1e9:.4f} G MACs, energy {t['energy_mj']:.4f} mJ "
                 f"(exact events: {t['energy_exact_mj']:.4f} mJ) with E_MAC "
                 f"{report['e_mac_pj']} pJ, E_AC {report['e_ac_pj']} pJ; mean firing rate "
                 f"{t['mean_firing_rate']:.4f}")
    return '\n'.join(lines)


def plot_energy(report: dict, path: str) -> None:
    """Bar plot of energy per layer (SOP and MAC parts), one PNG."""
    from .plotting import new_figure, save_figure
    layers = report['layers']
    fig, (ax,) = new_figure(1, 1, size=(10, 1.5 + 0.18 * max(len(layers), 1)))
    y = range(len(layers))
    sop = [report['e_ac_pj'] * r['sops'] * 1e-6 for r in layers]
    mac = [report['e_mac_pj'] * r['macs'] * 1e-6 for r in layers]
    ax.barh(y, sop, label='AC (SOPs)')
    ax.barh(y, mac, left=sop, label='MAC')
    ax.set_yticks(list(y))
    ax.set_yticklabels([r['name'] for r in layers], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel('energy per image (uJ)')
    ax.legend()
    ax.set_title(f"total {report['totals']['energy_mj']:.4f} mJ per image")
    save_figure(fig, path)
