"""Silent failures made loud: a checkpoint that does not fit the model (test.py, demo.py,
load_from), non-finite weights and pixels, labels outside the classes and annotations of the
wrong size (train and test), heads and necks that do not fit, demo.py's odd inputs."""
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.dataset import Compose
from tool_loading import load_tool
from toy_run import TOY_CONFIG, save_toy_checkpoint, toy_data, toy_model, toy_options

import mmlrf  # noqa: F401  (must precede mmseg)
from mmlrf.datasets.sample_checks import SegSampleError
from mmlrf.engine.hooks import ModelDataMismatchError
from mmlrf.interop import CheckpointMismatchError, NonFiniteWeightsError


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """A toy data set and checkpoints of the shallow model (``tools/train.py`` and
    ``tools/test.py`` take :data:`SHALLOW`) and of the config's (``tools/demo.py`` builds it):
    a fitting one, a foreign one (a head of 3 classes, a missing and an unexpected key) and one
    with a NaN weight."""
    folder = tmp_path_factory.mktemp('toy')
    found = dict(data=toy_data(str(folder)))
    for suffix, shallow in (('', True), ('_full', False)):
        state = toy_model(shallow).state_dict()
        foreign = dict(state)
        foreign['decode_head.conv_seg.weight'] = foreign['decode_head.conv_seg.weight'][:3]
        foreign['extra.weight'] = foreign.pop('decode_head.conv_seg.bias')
        nan = {k: v.clone() for k, v in state.items()}
        nan['neck.lateral_convs.0.0.weight'].view(-1)[0] = float('nan')
        for name, weights in (('good', state), ('foreign', foreign), ('nan', nan)):
            found[name + suffix] = save_toy_checkpoint(str(folder / f'{name}{suffix}.pth'),
                                                       weights)
    return found


def _options(data, *extra):
    """Options of a short test or training run of the shallow toy model."""
    return toy_options(data, 1, *extra)


def _report(message):
    assert 'decode_head.conv_seg.bias' in message  # missing
    assert 'extra.weight' in message  # unexpected
    assert 'decode_head.conv_seg.weight' in message  # shape mismatch
    assert '--allow-partial' in message


def test_test_tool_refuses_a_foreign_checkpoint_unless_asked(toy, tmp_path):
    test = load_tool('test')
    with pytest.raises(CheckpointMismatchError) as err:
        test.main([TOY_CONFIG, toy['foreign'], '--work-dir', str(tmp_path / 'w'),
                   *_options(toy['data'])])
    _report(str(err.value))
    metrics = test.main([TOY_CONFIG, toy['foreign'], '--work-dir', str(tmp_path / 'w2'),
                         '--allow-partial', *_options(toy['data'])])
    assert 'mIoU' in metrics


def test_load_from_is_strict_too(toy, tmp_path):
    with pytest.raises(CheckpointMismatchError) as err:
        load_tool('train').main([TOY_CONFIG, '--work-dir', str(tmp_path / 'w'),
                                 *_options(toy['data'], f'load_from={toy["foreign"]}')])
    _report(str(err.value))


def test_demo_refuses_a_foreign_checkpoint(toy, tmp_path):
    image = osp.join(toy['data'], 'images', 'validation', 'toy_00000.png')
    with pytest.raises(CheckpointMismatchError) as err:
        load_tool('demo').main([image, TOY_CONFIG, toy['foreign_full'], '--out',
                                str(tmp_path / 'o.png')])
    _report(str(err.value))


def test_non_finite_weights_are_refused_at_load_naming_the_tensor(toy, tmp_path):
    image = osp.join(toy['data'], 'images', 'validation', 'toy_00000.png')
    with pytest.raises(NonFiniteWeightsError, match=r'neck\.lateral_convs\.0\.0\.weight'):
        load_tool('demo').main([image, TOY_CONFIG, toy['nan_full'], '--out',
                                str(tmp_path / 'o.png')])
    with pytest.raises(NonFiniteWeightsError, match=r'neck\.lateral_convs\.0\.0\.weight'):
        load_tool('test').main([TOY_CONFIG, toy['nan'], '--work-dir', str(tmp_path / 'w'),
                                '--allow-partial', *_options(toy['data'])])


def test_non_finite_input_pixel_is_an_error(toy):
    from mmseg.apis import inference_model, init_model
    model = init_model(TOY_CONFIG, None, device='cpu')
    image = np.full((32, 32, 3), 100.0, np.float32)
    image[5, 7, 1] = np.nan
    with pytest.raises(SegSampleError, match=r'1 non-finite values.*\(5, 7\)'):
        inference_model(model, image)


def _write_sample(folder, label, image_size=(64, 64)):
    image = str(folder / 'img.png')
    annotation = str(folder / 'ann.png')
    cv2.imwrite(image, np.zeros((*image_size, 3), np.uint8))
    cv2.imwrite(annotation, label.astype(np.uint8))
    return dict(img_path=image, seg_map_path=annotation, reduce_zero_label=True,
                seg_fields=[]), annotation


@pytest.mark.parametrize('pipeline', ['train_pipeline', 'test_pipeline'])
def test_label_outside_the_classes_names_file_and_value(tmp_path, pipeline):
    label = np.ones((64, 64))
    label[3, 3] = 201  # 200 after reduce_zero_label; 5 classes
    sample, annotation = _write_sample(tmp_path, label)
    with pytest.raises(SegSampleError, match=rf"{annotation!r} has label value\(s\) 200 "
                       r'\(stored in the file as 201'):
        Compose(Config.fromfile(TOY_CONFIG)[pipeline])(sample)


@pytest.mark.parametrize('pipeline', ['train_pipeline', 'test_pipeline'])
def test_annotation_of_another_size_names_file_and_both_sizes(tmp_path, pipeline):
    sample, annotation = _write_sample(tmp_path, np.ones((48, 40)))
    with pytest.raises(SegSampleError, match=rf'{annotation!r} is 48x40 \(height x width\) '
                       r'but its image .* is 64x64'):
        Compose(Config.fromfile(TOY_CONFIG)[pipeline])(sample)


def test_test_tool_stops_at_a_bad_label_naming_the_file(toy, tmp_path):
    import shutil
    data = str(tmp_path / 'toy')
    shutil.copytree(toy['data'], data)
    bad = osp.join(data, 'annotations', 'validation', 'toy_00001.png')
    label = cv2.imread(bad, cv2.IMREAD_UNCHANGED)
    label[0, 0] = 200
    cv2.imwrite(bad, label)
    with pytest.raises(SegSampleError, match=rf'{bad!r} has label value\(s\) 199'):
        load_tool('test').main([TOY_CONFIG, toy['good'], '--work-dir', str(tmp_path / 'w'),
                                *_options(data)])


def test_head_with_other_classes_is_refused_before_training(toy, tmp_path):
    with pytest.raises(ModelDataMismatchError, match=r'model.decode_head.num_classes is 4 but '
                       r'train_dataloader.dataset \(ToyTextureDataset\) has 5 classes'):
        load_tool('train').main([TOY_CONFIG, '--work-dir', str(tmp_path / 'w'),
                                 *_options(toy['data'], 'model.decode_head.num_classes=4')])
    assert not list((tmp_path / 'w').glob('*.pth'))


@pytest.mark.parametrize('change, match', [
    (dict(decode_head=dict(num_classes=7)),
     r'num_classes is 7 but data.dataset \(ToyTextureDataset\) has 5 classes'),
    (dict(decode_head=dict(num_classes=0)), r'model.decode_head.num_classes must be >= 1, got 0'),
    (dict(neck=dict(in_channels=[4, 8, 16, 16])), r'model.neck.in_channels is \[4, 8, 16, 16\] '
     r'but the backbone \(SDTV3\) gives \[4, 8, 16, 32\] channels: set '
     r'model.neck.in_channels=\[4, 8, 16, 32\]'),
])
def test_model_that_does_not_fit_is_refused(toy, change, match):
    from mmseg.registry import DATASETS, MODELS

    from mmlrf.engine.hooks.model_data_check_hook import check_channels, check_class_counts
    cfg = Config.fromfile(TOY_CONFIG)
    cfg.merge_from_dict({f'model.{k}.{n}': v for k, d in change.items() for n, v in d.items()})
    cfg.model.backbone.depths = (1, 1)
    cfg.val_dataloader.dataset.data_root = toy['data']
    model = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    with pytest.raises(ModelDataMismatchError, match=match):
        check_channels(model)
        check_class_counts(model, [('data', dataset)])


def test_demo_draws_a_one_pixel_image(toy, tmp_path):
    image = str(tmp_path / 'pixel.png')
    cv2.imwrite(image, np.full((1, 1, 3), 90, np.uint8))
    out = str(tmp_path / 'overlay.png')
    load_tool('demo').main([image, TOY_CONFIG, toy['good_full'], '--out', out])
    overlay = cv2.imread(out)
    assert overlay is not None and overlay.shape[2] == 3 and min(overlay.shape[:2]) >= 1


def test_demo_refuses_an_out_without_extension_or_equal_to_the_input(toy, tmp_path):
    image = osp.join(toy['data'], 'images', 'validation', 'toy_00000.png')
    before = open(image, 'rb').read()
    demo = load_tool('demo')
    with pytest.raises(ValueError, match=r"--out '.*overlay' has no image extension"):
        demo.main([image, TOY_CONFIG, toy['good_full'], '--out', str(tmp_path / 'overlay')])
    with pytest.raises(ValueError, match='is the input image'):
        demo.main([image, TOY_CONFIG, toy['good_full'], '--out', image])
    with pytest.raises(ValueError, match='is the input image'):
        demo.main([image, TOY_CONFIG, toy['good_full'], '--out',
                   osp.join(osp.dirname(image), '.', osp.basename(image))])
    assert open(image, 'rb').read() == before
