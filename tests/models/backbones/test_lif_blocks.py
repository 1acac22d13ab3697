"""The LIF transformer block of Spikformer and QKFormer against the papers' equations written
out head by head."""
from __future__ import annotations

import pytest
import torch

import mmlrf  # noqa: F401  (registers modules; must precede mmseg.models)
from mmlrf.models.backbones.lif_blocks import LIFTransformerBlock


def _lif(x, tau=2.0, v_th=1.0):
    v, out = torch.zeros_like(x[0]), []
    for xt in x:
        h = v + (xt - v) / tau
        s = (h >= v_th).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def _conv_bn(x, conv_bn):
    conv, bn = conv_bn[0], conv_bn[1]
    y = torch.einsum('oi,tbihw->tbohw', conv.weight[:, :, 0, 0], x)
    if conv.bias is not None:
        y = y + conv.bias.view(-1, 1, 1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean.view(-1, 1, 1)) * scale.view(-1, 1, 1) + bn.bias.view(-1, 1, 1)


def _reference_block(blk, x, heads, kind):
    """Spikformer / QKFormer block written out from the papers' equations, head by head."""
    a = blk.attn
    t, b, c, h, w = x.shape
    q = _lif(_conv_bn(x, a.q_conv)).reshape(t, b, heads, c // heads, h * w)
    k = _lif(_conv_bn(x, a.k_conv)).reshape(t, b, heads, c // heads, h * w)
    if kind == 'ssa':
        v = _lif(_conv_bn(x, a.v_conv)).reshape(t, b, heads, c // heads, h * w)
        y = torch.zeros_like(q)
        for i in range(heads):  # (Q K^T) V per head, tokens as rows
            qi, ki, vi = (z[:, :, i].transpose(-1, -2) for z in (q, k, v))
            y[:, :, i] = ((qi @ ki.transpose(-1, -2) @ vi) * 0.125).transpose(-1, -2)
        y = _lif(y.reshape(t, b, c, h, w), v_th=0.5)
    else:  # QKTA: token mask from the per-head channel sum of Q gates K; no further neuron
        mask = _lif(q.sum(3), v_th=0.5)
        y = (mask.unsqueeze(3) * k).reshape(t, b, c, h, w)
    x = x + _lif(_conv_bn(y, a.proj_conv))
    hidden = _lif(_conv_bn(x, blk.mlp.fc1_conv))
    return x + _lif(_conv_bn(hidden, blk.mlp.fc2_conv))


@pytest.mark.parametrize('kind', ['ssa', 'qk'])
def test_block_matches_reference(kind):
    torch.manual_seed(0)
    mixer = dict(type='SSA', order='kv', scale=0.125) if kind == 'ssa' else \
        dict(type='QKTokenAttention', neuron=dict(type='MultiStepLIF', v_threshold=0.5))
    blk = LIFTransformerBlock(16, 2, mixer, dict(type='MultiStepLIF', tau=2.0)).double().eval()
    for m in blk.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(0.0, 1.0)
    for name in ('q_conv', 'k_conv', 'v_conv'):  # ~30% firing: the attention neuron is active
        if hasattr(blk.attn, name):
            getattr(blk.attn, name)[1].bias.data.uniform_(1.0, 1.5)
    rates = []
    blk.attn.attn_spike.register_forward_hook(lambda m, i, o: rates.append(o.mean().item()))
    x = torch.randint(0, 3, (3, 2, 16, 4, 5)).double()
    with torch.no_grad():
        out, ref = blk(x), _reference_block(blk, x, 2, kind)
    assert 0.05 < rates[0] < 0.95, rates  # neither silent nor saturated
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
