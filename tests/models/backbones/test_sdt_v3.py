"""SDT-V3 backbone: architecture (sizes, strides, depths, parameter counts against the paper),
LRF mixers, layer configs, spike codes shared with ``RoutedConv2d`` (exact forward and gradients,
fewer saved bytes), activation checkpointing, dynamics modes, lean conv blocks, eval
determinism, option validation, registries, mmseg's heads on top."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from mmseg.registry import MODELS
from torch import nn

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.inference import set_lean_inference
from mmlrf.models.backbones import SDTV3
from mmlrf.models.backbones.sdt_v3 import ConvBlock
from mmlrf.models.decode_heads import SpikingFPNHead
from mmlrf.models.layers import RoutedConv2d
from mmlrf.models.necks import SpikingFPN
from mmlrf.models.neurons import MultiSpike

from batchnorm_stats import randomise_batchnorms
from saved_bytes import SavedBytes
from seg_samples import build_segmentor, seg_data_preprocessor, train_two_iterations

TINY = dict(embed_dims=[8, 16, 32, 32], num_heads=4)
TINY_DIMS = [8, 12, 24, 32]
ROUTED = dict(conv_cfg=dict(type='RoutedConv2d'))


def _tiny_backbone(**kwargs) -> SDTV3:
    return SDTV3(embed_dims=TINY_DIMS, **kwargs)


def _tiny_segmentor_parts(attn=dict(type='SSA', order='qk'), layers=None, **backbone_kwargs):
    """Seeded backbone, neck and head, all built with ``layers`` (conv_cfg / norm_cfg)."""
    layers = layers or {}
    torch.manual_seed(0)
    backbone = SDTV3(**TINY, attn=attn, **layers, **backbone_kwargs)
    neck = SpikingFPN(backbone.out_channels, 16, **layers)
    head = SpikingFPNHead(in_channels=[16] * 4, channels=16, num_classes=3,
                          in_index=[0, 1, 2, 3], **layers)
    return nn.ModuleList([backbone, neck, head])


def _run(parts, x):
    return parts[2](parts[1](parts[0](x)))


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]


def _share_codes(module: nn.Module, share: bool) -> None:
    for m in module.modules():
        if isinstance(m, MultiSpike):
            m.share_code = share


# --------------------------------------------------------------------------- architecture
@pytest.mark.parametrize('arch,classes_params', [('10M', 11_485_462), ('19M', 20_354_254)])
def test_full_segmentation_model_parameter_counts(arch, classes_params):
    with torch.device('meta'):
        backbone = MODELS.build(dict(type='SDTV3', arch=arch))
        neck = MODELS.build(dict(type='SpikingFPN', in_channels=backbone.out_channels,
                                 out_channels=128))
        head = MODELS.build(dict(type='SpikingFPNHead', in_channels=[128] * 4, channels=128,
                                 num_classes=150, in_index=[0, 1, 2, 3]))
    total = sum(p.numel() for m in (backbone, neck, head) for p in m.parameters())
    assert total == classes_params


def test_5m_arch_matches_paper_classification_size():
    """SDT-V3-S: 5.11 M parameters on ImageNet (backbone without layer scales + 1000-way head)."""
    with torch.device('meta'):
        model = SDTV3(arch='S')
    params = sum(p.numel() for k, p in model.named_parameters() if 'layer_scale' not in k)
    assert model.embed_dims == [32, 64, 128, 192]
    assert round((params + 192 * 1000 + 1000) / 1e6, 2) == 5.11


@pytest.mark.parametrize('size', [(40, 56), (33, 64)])
def test_true_strides_and_channels(size):
    model = _tiny_backbone(out_indices=(1, 3)).eval()
    assert model.strides == (2, 4, 8, 16)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    assert model.out_channels == [8, 32] and [f.shape[1] for f in feats] == [8, 32]
    for f, s in zip(feats, (4, 16)):
        assert tuple(f.shape[-2:]) == (math.ceil(size[0] / s), math.ceil(size[1] / s))


@pytest.mark.parametrize('mixer', ['LRFSSA', 'LRFDyn'])
def test_backbone_with_lrf_mixers_forward_backward(mixer):
    torch.manual_seed(0)
    model = _tiny_backbone(attn=dict(type=mixer), layer_scale_init=1.0).train()
    feats = model(torch.randn(1, 3, 32, 32))
    sum(f.square().mean() for f in feats).backward()
    mixer_params = [p for n, p in model.named_parameters() if '.attn.mixer.' in n]
    assert mixer_params and model.downsample1_1.encode_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mixer_params)


def test_depths_set_the_transformer_blocks_and_drop_path_ramp():
    """``depths`` builds that many blocks per stage (default: the official 6 + 2); the
    stochastic-depth rate rises linearly from 0 to ``drop_path_rate`` over all of them."""
    official = _tiny_backbone(drop_path_rate=0.35)
    assert official.depths == (6, 2) and (len(official.block3), len(official.block4)) == (6, 2)
    rates = [b.drop_path_rate for b in (*official.block3, *official.block4)]
    assert rates == pytest.approx([0.05 * j for j in range(8)])
    shallow = _tiny_backbone(depths=[2, 1], drop_path_rate=0.2)
    assert shallow.depths == (2, 1) and (len(shallow.block3), len(shallow.block4)) == (2, 1)
    assert [b.drop_path_rate for b in (*shallow.block3, *shallow.block4)] == \
        pytest.approx([0.0, 0.1, 0.2])
    single = _tiny_backbone(depths=(1, 1), drop_path_rate=0.2)
    assert [b.drop_path_rate for b in (*single.block3, *single.block4)] == [0.0, 0.2]
    with torch.no_grad():
        feats = single.eval()(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == single.out_channels


def test_layers_follow_conv_cfg_and_norm_cfg():
    """Default: ``nn.Conv2d`` and ``BatchNorm2d``; every conv of every block (mixer included)
    from ``conv_cfg``, every norm from ``norm_cfg``, under the same parameter names."""
    default = _tiny_backbone(depths=(1, 1), attn=dict(type='LRFSSA'))
    assert all(type(m) is nn.Conv2d for m in default.modules() if isinstance(m, nn.Conv2d))
    assert all(type(m) is nn.BatchNorm2d for m in default.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    model = _tiny_backbone(depths=(1, 1), attn=dict(type='LRFSSA'), **ROUTED,
                           norm_cfg=dict(type='SyncBN', requires_grad=True))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len([m for m in default.modules() if isinstance(m, nn.Conv2d)])
    assert all(type(m) is RoutedConv2d for m in convs)
    assert all(isinstance(m, nn.SyncBatchNorm) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert list(model.state_dict()) == list(default.state_dict())


def test_registered_in_mmpretrain():
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert PRETRAIN_MODELS.module_dict.get('SDTV3') is SDTV3


# ------------------------------------------------------------- spike codes and saved tensors
def test_shared_spike_codes_give_the_plain_forward_and_gradients():
    """With ``RoutedConv2d`` convs saving their spike inputs as the neurons' 1-byte codes, the
    whole network (backbone, neck, head) has exactly the outputs and gradients of the same
    network whose neurons keep their codes (``share_code=False``: every conv saves its float
    input)."""
    parts = _tiny_segmentor_parts(layers=ROUTED)
    ref = copy.deepcopy(parts)
    _share_codes(ref, False)
    x = torch.randn(2, 3, 40, 56, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = _run(parts, x), _run(ref, x_ref)
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    assert torch.equal(y, y_ref)
    for a, b in zip(_grads(parts, x), _grads(ref, x_ref)):
        assert torch.equal(a, b)


def test_backbone_saved_bytes_drop_by_the_conv_inputs():
    """Shared minus unshared codes saved bytes = 4 bytes × every distinct neuron output a conv
    reads (the neurons save their 1-byte code either way), found with hooks."""
    backbone = SDTV3(**TINY, **ROUTED).train()
    x = torch.randn(1, 3, 48, 48)
    params = list(backbone.parameters())
    with SavedBytes(params) as shared:
        backbone(x)
    neuron_outs, conv_inputs = set(), {}

    def on_neuron(m, a, out):
        neuron_outs.add(out.untyped_storage().data_ptr())

    def on_conv(m, a):
        conv_inputs[a[0].untyped_storage().data_ptr()] = a[0].numel()
    handles = [m.register_forward_hook(on_neuron) for m in backbone.modules()
               if isinstance(m, MultiSpike)]
    handles += [m.register_forward_pre_hook(on_conv) for m in backbone.modules()
                if isinstance(m, nn.Conv2d)]
    _share_codes(backbone, False)
    with SavedBytes(params) as unshared:
        backbone(x)
    for h in handles:
        h.remove()
    spike_elements = sum(n for ptr, n in conv_inputs.items() if ptr in neuron_outs)
    assert spike_elements > 0
    assert unshared.bytes - shared.bytes == 4 * spike_elements
    # every neuron keeps 1 byte per element, in both paths
    assert shared.by_dtype[torch.uint8] == unshared.by_dtype[torch.uint8] > 0


def test_inplace_inference_equals_recorded_forward():
    """Without autograd the neurons spike their temporaries in place: the recorded values."""
    parts = _tiny_segmentor_parts(attn=dict(type='LRFDyn', mode='scan')).eval()
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        y = _run(parts, x)
    y_rec = _run(parts, x.clone().requires_grad_())  # autograd on: no in-place path
    assert torch.equal(y, y_rec)


# -------------------------------------------------------------------- activation checkpoints
def test_with_cp_same_gradients_and_fewer_saved_bytes():
    """Checkpointed blocks: the same outputs and gradients (with ``RoutedConv2d`` convs, whose
    spike codes the checkpointed blocks' neurons do not share) and less than half the saved
    bytes."""
    torch.manual_seed(0)
    kwargs = dict(**TINY, attn=dict(type='LRFDyn', mode='scan'), layer_scale_init=1.0, **ROUTED)
    plain = SDTV3(**kwargs).train()
    ckpt = SDTV3(**kwargs, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    blocks = [ckpt.ConvBlock1_1, ckpt.ConvBlock1_2, ckpt.ConvBlock2_1, ckpt.ConvBlock2_2,
              ckpt.block3, ckpt.block4]
    inside = {id(m) for b in blocks for m in b.modules() if isinstance(m, MultiSpike)}
    neurons = [m for m in ckpt.modules() if isinstance(m, MultiSpike)]
    assert inside and all(m.share_code == (id(m) not in inside) for m in neurons)
    assert all(m.share_code for m in plain.modules() if isinstance(m, MultiSpike))
    x = torch.randn(2, 3, 24, 24)
    outs, grads = [], []
    for model in (plain, ckpt):
        model.zero_grad()
        y = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in y).backward()
        outs.append(y)
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    with SavedBytes(plain.parameters()) as saved_plain:
        plain(x)
    with SavedBytes(ckpt.parameters()) as saved_ckpt:
        ckpt(x)
    assert saved_ckpt.bytes < saved_plain.bytes / 2


# --------------------------------------------------------------------------- dynamics modes
@pytest.mark.parametrize('mode', ['stream', 'recurrent', 'scan'])
def test_dynamics_mode_flag_equal_outputs(mode):
    torch.manual_seed(0)
    ref = SDTV3(**TINY, attn=dict(type='LRFDyn', mode='fft', bidirectional=True,
                                  order='snake'), layer_scale_init=1.0).eval()
    model = SDTV3(**TINY, attn=dict(type='LRFDyn', bidirectional=True, order='snake'),
                  layer_scale_init=1.0, dynamics_mode=mode).eval()
    model.load_state_dict(ref.state_dict())
    assert {m.mode for m in model.modules() if hasattr(m, 'resolved_mode')} == {mode}
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- lean conv blocks
@pytest.mark.usefixtures('strips_on_small_maps')
@pytest.mark.parametrize('neuron, steps', [(dict(type='MultiSpike'), 1),
                                           (dict(type='MultiStepLIF'), 2)],
                         ids=['multispike', 'lif'])
@pytest.mark.parametrize('height', [13, 2])
def test_lean_conv_block_keeps_the_function(neuron, steps, height):
    """A conv block with ``lean_inference`` runs its 3×3 convs over row strips at inference
    (the tests' small maps too): the plain values; while autograd records, the plain path,
    with the plain gradients."""
    blocks = []
    for lean in (False, True):
        torch.manual_seed(0)
        block = randomise_batchnorms(ConvBlock(4, 4, neuron)).eval()
        assert not block.lean_inference  # off by default
        assert set_lean_inference(block, lean) == 1
        blocks.append(block)
    x = torch.randn(steps, 2, 4, height, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(blocks[1](x.clone()), blocks[0](x.clone()))
    outs, grads = [], []
    for block in blocks:
        given = x.clone().requires_grad_()
        outs.append(block(given))
        outs[-1].square().sum().backward()
        grads.append([given.grad, *(p.grad for p in block.parameters())])
    assert torch.equal(*outs)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.usefixtures('strips_on_small_maps')
def test_lean_conv_block_adds_its_strips_into_its_own_sum(monkeypatch):
    """Lean, the block adds the strips of its 3×3 convs into its residual sum in place (the
    strips run: ``add_over_strips`` is called), off it does not."""
    import mmlrf.models.backbones.sdt_v3 as sdt_v3
    calls = []
    real = sdt_v3.add_over_strips
    monkeypatch.setattr(sdt_v3, 'add_over_strips', lambda *a: calls.append(a) or real(*a))
    block = randomise_batchnorms(ConvBlock(4, 4, dict(type='MultiSpike'))).eval()
    x = torch.randn(1, 2, 4, 12, 9)
    before = x.clone()
    with torch.no_grad():
        plain = block(x)
        assert not calls
        block.lean_inference = True
        lean = block(x)
    assert len(calls) == 1 and lean is calls[0][0]  # the block's sum, added into in place
    assert torch.equal(lean, plain) and torch.equal(x, before)  # its input is left alone


def test_only_the_conv_blocks_have_a_lean_path():
    model = _tiny_backbone(depths=(1, 1))
    assert set_lean_inference(model, True) == 4  # ConvBlock1_1, 1_2, 2_1, 2_2
    assert all(b[0].lean_inference for b in (model.ConvBlock1_1, model.ConvBlock1_2,
                                             model.ConvBlock2_1, model.ConvBlock2_2))


# --------------------------------------------------------------------------- determinism
def test_eval_prediction_independent_of_batch_and_repetition():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='SDTV3', arch=None, embed_dims=[8, 16, 32, 32],
                              num_heads=2)).eval()
    images = torch.rand(3, 3, 24, 24) * 4 - 2
    with torch.no_grad():
        alone = model(images[:1])
        again = model(images[:1])
        batch = model(torch.cat([images[2:], images[:1], images[1:2]]))
    for a, r, b in zip(alone, again, batch):
        assert torch.equal(a, r)  # no state carried over from the previous call
        torch.testing.assert_close(b[1:2], a, rtol=1e-5, atol=1e-5)  # position/batch invariant


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='7M'), 'arch'),
    (dict(arch='XXL'), 'arch'),
    (dict(embed_dims=[7, 12, 24, 32]), 'embed_dims'),
    (dict(embed_dims=TINY_DIMS, num_heads=5), 'num_heads'),
    (dict(num_heads=7), 'num_heads'),
    (dict(embed_dims=TINY_DIMS, out_indices=(4,)), 'out_indices'),
    (dict(out_indices=(5,)), 'out_indices'),
    (dict(embed_dims=TINY_DIMS, attn='ssa'), 'attn'),
    (dict(embed_dims=TINY_DIMS, drop_path_rate=1.0), 'drop_path_rate'),
    (dict(embed_dims=TINY_DIMS, depths=(6,)), 'depths'),
    (dict(embed_dims=TINY_DIMS, depths=(0, 2)), 'depths'),
    (dict(embed_dims=TINY_DIMS, depths=(1.5, 2)), 'depths'),
    (dict(embed_dims=TINY_DIMS, depths=6), 'depths'),
    (dict(embed_dims=TINY_DIMS, mlp_ratio=0), 'mlp_ratio'),
    (dict(**TINY, dynamics_mode='parallel'), 'dynamics_mode must be None or one of'),
    (dict(**TINY, dynamics_mode='stream'), 'needs an attention with dendritic dynamics'),
    (dict(**TINY, attn=dict(type='SSA', order='vq')), 'order'),
    (dict(**TINY, attn=dict(type='LRFSSA', dilations=(0, ))), 'dilations'),
    (dict(**TINY, neuron=dict(type='Sigmoid')), 'neuron'),
])
def test_invalid_options_raise_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDTV3(**kwargs)
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='SDTV3', **kwargs))


def test_wrong_input_layout_is_refused():
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        _tiny_backbone(depths=(1, 1))(torch.zeros(1, 1, 3, 16, 16))


# --------------------------------------------------------------------------- mmseg heads
def test_with_mmseg_uperhead_and_fcnhead():
    model = build_segmentor(dict(
        type='EncoderDecoder', data_preprocessor=seg_data_preprocessor(),
        backbone=dict(type='SDTV3', arch=None, embed_dims=[8, 16, 32, 32], num_heads=2),
        decode_head=dict(type='UPerHead', in_channels=[4, 8, 16, 32], in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2), channels=8, num_classes=3, norm_cfg=dict(type='BN')),
        auxiliary_head=dict(type='FCNHead', in_channels=16, in_index=2, channels=8, num_convs=1,
                            num_classes=3, norm_cfg=dict(type='BN'),
                            loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4))))
    train_two_iterations(model)


@pytest.mark.parametrize('arch', ['5M', '10M', '19M'])
@pytest.mark.parametrize('attn', [dict(type='LRFDyn'), dict(type='LRFSSA', order='qk')])
def test_official_attention_keys_exist_in_every_variant(arch, attn):
    """Every key of the SDSA backbone (the official model's) exists with the same shape in the
    LRF-SSA and LRF-Dyn backbones of the same size: official weights load into each."""
    with torch.device('meta'):
        official = SDTV3(arch=arch).state_dict()
        variant = SDTV3(arch=arch, attn=attn).state_dict()
    assert {k: v.shape for k, v in official.items()} == {
        k: variant[k].shape for k in official if k in variant}
    assert set(official) <= set(variant)
