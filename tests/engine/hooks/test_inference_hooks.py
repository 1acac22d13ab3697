"""The inference hooks of ``tools/test.py``: ``FuseConvBNHook`` and ``ChannelsLastHook`` keep
every model family's function, ``CompileHook`` routes mmseg's ``predict`` through the compiled
``encode_decode``."""
import os.path as osp

import pytest
import torch

import mmlrf  # noqa: F401  (first: compat fixes + registration)
from mmlrf.engine.hooks import ChannelsLastHook, CompileHook, FuseConvBNHook
from mmlrf.inference.transforms import count_batchnorms
from mmlrf.models.backbones.spikformer import SpikingDeconv

from config_models import (MODEL_GROUPS, ROOT, SIZE, build_small, group_id,
                           randomise_batchnorms)


def _runner(model):
    return type('Runner', (), dict(model=model))()


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=group_id)
def test_fuse_conv_bn_keeps_the_function(paths):
    """``FuseConvBNHook`` (mmcv's sibling-order fusion) folds every BN that follows a conv, in
    every model family, and leaves the eval-mode output unchanged: mmlrf registers each BN right
    after its conv. Only the BNs after Spikformer's transposed convs stay."""
    model = build_small(paths[0]).eval()
    randomise_batchnorms(model)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expect = model(images, mode='tensor')
    assert count_batchnorms(model) > 0
    FuseConvBNHook().before_test(_runner(model))
    kept = [m for m in model.modules() if isinstance(m, SpikingDeconv)]
    assert count_batchnorms(model) == len(kept)
    with torch.no_grad():
        got = model(images, mode='tensor')
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('paths', MODEL_GROUPS, ids=group_id)
def test_channels_last_keeps_the_function(paths):
    """``ChannelsLastHook`` stores every conv weight channels-last, the activations follow, and
    the eval-mode output is unchanged up to float rounding, in every model family."""
    model = build_small(paths[0]).eval()
    randomise_batchnorms(model)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expect = model(images, mode='tensor')
    ChannelsLastHook().before_test(_runner(model))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         for m in convs)
    with torch.no_grad():
        got = model(images, mode='tensor')
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


def test_hook_priorities_fold_before_the_layout_and_the_compilation():
    from mmengine.runner.priority import get_priority
    assert get_priority(FuseConvBNHook.priority) < get_priority(ChannelsLastHook.priority)
    assert get_priority(ChannelsLastHook.priority) == get_priority(CompileHook.priority)


def test_compile_hook_compiles_the_inference(eager_compile):
    """``CompileHook`` routes mmseg's ``predict`` through the compiled network: ``encode_decode``
    (plain) and ``_forward`` (lean prediction). A graph is captured at the first batch of each
    (Dynamo's eager backend keeps this short; the generated code runs in the command-line
    tests), the outputs are kept, and the training forward stays as it was."""
    import torch._dynamo
    from mmseg.structures import SegDataSample
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = build_small(osp.join(ROOT, 'configs', 'toy',
                                 'fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py'))
    model.eval()
    randomise_batchnorms(model)
    images = torch.rand(1, 3, 32, 32)
    meta = dict(img_shape=(32, 32), ori_shape=(32, 32), pad_shape=(32, 32))

    def predict(lean: bool) -> SegDataSample:
        model.lean_inference = lean
        with torch.no_grad():
            return model.predict(images, [SegDataSample(metainfo=meta)])[0]
    expect = {lean: predict(lean) for lean in (False, True)}
    CompileHook().before_test(_runner(model))
    assert len(eager_compile) == 2
    assert {'encode_decode', '_forward'} <= set(vars(model)) and 'loss' not in vars(model)
    for lean in (False, True):
        graphs = counters['stats']['unique_graphs']
        got = predict(lean)
        assert counters['stats']['unique_graphs'] > graphs, lean
        assert torch.equal(got.pred_sem_seg.data, expect[lean].pred_sem_seg.data)
    torch.testing.assert_close(predict(False).seg_logits.data, expect[False].seg_logits.data,
                               rtol=1e-4, atol=1e-5)


def test_compile_hook_before_training_compiles_loss_and_inference(eager_compile):
    model = torch.nn.Linear(2, 2)
    model.encode_decode, model.loss = model.forward, model.forward
    CompileHook().before_train(_runner(model))
    assert len(eager_compile) == 2
    assert vars(model)['loss'] is not model.forward
    assert vars(model)['encode_decode'] is not model.forward
