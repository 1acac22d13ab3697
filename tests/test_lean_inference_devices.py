"""Lean inference (row strips, released maps, spikes in place) against plain inference of the
same built model, on the CPU and on CUDA (skipped without it). On the CPU the values are bit for
bit the plain ones. cuDNN picks its algorithm per shape, so a strip may round differently from
the whole map: CUDA is held to float tolerance, and each CUDA test prints how far it was
(``pytest -rP`` shows it; the GPU suite's ``graph_tests`` step runs these tests so)."""
import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
import pytest
import torch
from torch import nn

from mmlrf.analysis import benchmark as bm
from mmlrf.conv import RoutedConv2d
from mmlrf.hooks import set_lean_inference
from mmlrf.strips import conv_bn_over_input
from batchnorm_stats import randomise_batchnorms
from devices import needs_cuda

DEVICES = ['cpu', pytest.param('cuda', marks=needs_cuda)]


def report(name: str, got: torch.Tensor, expected: torch.Tensor) -> str:
    """One line: the largest absolute difference and how many elements differ."""
    diff = (got - expected).abs()
    return (f'{name}: max |lean - plain| = {diff.max().item():.3g} (max |plain| = '
            f'{expected.abs().max().item():.3g}), {int((diff > 0).sum())} of {diff.numel()} '
            f'elements differ')


@pytest.mark.usefixtures('strips_on_small_maps', 'cuda_precision')
@pytest.mark.parametrize('device', DEVICES)
def test_lean_inference_matches_plain_inference(device):
    """The toy LRF-Dyn config (SDT-V3 conv blocks in strips, the FPN releasing its inputs),
    strips on its small maps too, TF32 off: the backbone's maps (before the neck spikes them,
    where a strip's error is not yet rounded away) and the logits."""
    torch.manual_seed(0)
    model = bm.build_variant_model(bm.TOY_CONFIG, None, device=device)[0]
    randomise_batchnorms(model).eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)).to(device)
    outputs = []
    bm.set_cuda_precision('off')
    with torch.no_grad():
        for lean in (True, False):
            assert set_lean_inference(model, lean) > 0
            outputs.append([*model.backbone(images.clone()),
                            model(images.clone(), mode='tensor')])
    names = [f'backbone map {i}' for i in range(len(outputs[0]) - 1)] + ['logits']
    for name, lean, plain in zip(names, *outputs):
        if device == 'cpu':
            assert torch.equal(lean, plain), name
            continue
        print(report(f'toy model {tuple(images.shape)}, {name}', lean, plain))
        torch.testing.assert_close(lean, plain, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f'{name}: {m}')


@needs_cuda
@pytest.mark.usefixtures('cuda_precision')
@pytest.mark.parametrize('tf32', [False, True], ids=['fp32', 'tf32'])
def test_conv_strips_on_cuda_at_the_flagship_necks_shape(tf32):
    """The neck's and head's largest conv at 1×1024×2048 (3×3, 128 → 128 channels, 512×1024,
    BN after it) written over its input in 8 strips, against the whole conv. Spikes ``k / 4``
    and the weights round to TF32 alike in both, so only the accumulation may differ."""
    torch.manual_seed(0)
    conv = RoutedConv2d(128, 128, 3, padding=1).cuda()
    bn = randomise_batchnorms(nn.BatchNorm2d(128)).cuda().eval()
    x = torch.randint(0, 5, (1, 128, 512, 1024), device='cuda').float() / 4
    bm.set_cuda_precision('convs' if tf32 else 'off')
    with torch.no_grad():
        expected = bn(conv(x))
        got = conv_bn_over_input(conv, bn, x, 8)
    assert got.data_ptr() == x.data_ptr()  # the strips ran, over the input
    print(report(f'conv 3x3 128->128 at 512x1024, {"TF32" if tf32 else "fp32"}', got,
                 expected))
    tolerance = 1e-3 if tf32 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
