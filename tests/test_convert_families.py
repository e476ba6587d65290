"""torchvision / timm / AFA checkpoints -> Gluon networks, without torch: fixture .pth files
written by tests/pth_writer.py (zip and legacy layouts) with random weights and non-trivial
BatchNorm statistics; expected logits from the independent numpy forwards of
tests/numpy_torchvision.py (eval mode, float64)."""
import collections
import os

import numpy as np
import pytest
import mxnet as mx

import gluon_transfer as gt
from gluon_transfer.convert_torch import convert, convert_file, detect_source
from gluon_transfer.errors import CheckpointError, ConfigError
from gluon_transfer.weights import load_params

import numpy_torchvision as T
import pth_writer
from tool_helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


@pytest.fixture
def gen():
    return np.random.default_rng(0)


@pytest.fixture(scope='module')
def tool():
    return load_tool('convert_torch')


def _net(arch, path, classes, allow_missing=False):
    net = gt.get_model(arch, classes=classes)
    net.initialize()
    report = load_params(net, str(path), allow_missing=allow_missing)
    assert not report['unexpected']
    return net


def _close(got, want):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _bn_count(sd):
    return sum(k.endswith('.running_mean') for k in sd)


# ----------------------------------------------------------------- ResNet
@pytest.mark.parametrize('depth,layout', [(18, 'zip'), (50, 'legacy')])
def test_torchvision_resnet_reproduces_logits(tmp_path, gen, depth, layout):
    sd = T.resnet_state(gen, depth)
    src, dst = tmp_path / ('resnet%d.pth' % depth), tmp_path / 'out.params'
    (pth_writer.save_zip if layout == 'zip' else pth_writer.save_legacy)(sd, str(src))
    conv = convert_file(str(src), str(dst))
    arch = 'resnet%d_v1b' % depth
    assert (conv.arch, conv.classes, conv.source) == (arch, 1000, 'torchvision ResNet-%d' % depth)
    n_bn = _bn_count(sd)
    assert n_bn == {18: 20, 50: 53}[depth]          # conv1's BN, 2 or 3 per block, one per downsample
    assert sorted(k for k, _ in conv.dropped) == sorted(k for k in sd if k.endswith('num_batches_tracked'))
    assert len(conv.renamed) == 2 * n_bn and ('bn1.weight', 'bn1.gamma', 'BatchNorm weight/bias -> gamma/beta') \
        in conv.renamed
    assert len(conv.params) == len(sd) - n_bn
    np.testing.assert_array_equal(conv.params['layer1.0.bn2.running_var'], sd['layer1.0.bn2.running_var'])
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 32, 32))
    logits = _net(arch, dst, 1000)(mx.nd.array(x)).asnumpy()
    _close(logits, T.resnet_forward(sd, x, depth))


def test_afa_resnet101_checkpoint(tmp_path, gen):
    """AFA saves ``{'model': state_dict}`` of a torchvision ResNet-101 with a 120-class fc,
    possibly from DataParallel (``module.`` prefix)."""
    sd = T.resnet_state(gen, 101, classes=120)
    src, dst = tmp_path / 'afa.pth', tmp_path / 'afa.params'
    pth_writer.save_zip({'model': collections.OrderedDict(('module.' + k, v) for k, v in sd.items()),
                         'epoch': 42}, str(src))
    conv = convert_file(str(src), str(dst))
    assert (conv.arch, conv.classes) == ('resnet101_v1b', 120)
    lines = conv.report()
    assert lines[0] == 'detected: torchvision ResNet-101 -> resnet101_v1b (120 classes), %d arrays' % len(conv.params)
    assert any("['model']" in ln for ln in lines) and any("'module.' prefix" in ln for ln in lines)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, 32, 32))
    _close(_net('resnet101_v1b', dst, 120)(mx.nd.array(x)).asnumpy(), T.resnet_forward(sd, x, 101))


@pytest.mark.parametrize('depth,last', [(34, 'layer3.5.bn2.gamma'), (152, 'layer3.35.bn3.gamma')])
def test_other_depths_detected_and_complete(gen, depth, last):
    """Key-level check (no forward; ResNet-18/50/101 are checked end to end above): every
    key is placed or dropped, the blocks per stage pick the target."""
    sd = T.resnet_state(gen, depth)
    assert detect_source(sd)[1] == 'resnet%d_v1b' % depth
    conv = convert(sd)
    assert len(conv.params) + len(conv.dropped) == len(sd) and last in conv.params


# ----------------------------------------------------------------- MobileNetV2
def test_mobilenet_v2_zero_bias_reproduces_logits(tmp_path, gen):
    sd = T.mobilenet_v2_state(gen)
    sd['classifier.1.bias'][:] = 0
    src, dst = tmp_path / 'mnv2.pth', tmp_path / 'mnv2.params'
    pth_writer.save_legacy(sd, str(src))
    conv = convert_file(str(src), str(dst))
    assert (conv.arch, conv.classes) == ('mobilenetv2_1.0', 1000)
    assert ('classifier.1.bias', 'classifier bias, all zeros (the target classifier has no bias)') in conv.dropped
    assert ('features.3.conv.1.0.weight', 'features.5.out.3.weight', 'structural rename') in conv.renamed
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 32, 32))
    _close(_net('mobilenetv2_1.0', dst, 1000)(mx.nd.array(x)).asnumpy(), T.mobilenet_v2_forward(sd, x))


def test_mobilenet_v2_bias_needs_a_new_head(tmp_path, gen, tool, capsys):
    sd = T.mobilenet_v2_state(gen, classes=120)           # AFA's MobileNetV2: classifier.1 (120, 1280) + bias
    src, dst = tmp_path / 'mnv2.pth', tmp_path / 'mnv2.params'
    pth_writer.save_zip({'model': sd}, str(src))
    assert tool.main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "'classifier.1.bias' has no place in mobilenetv2_1.0" in err
    assert not dst.exists()
    assert tool.main([str(src), str(dst), '--classes', '7']) == 0
    out = capsys.readouterr().out
    assert 'mobilenetv2_1.0 (7 classes)' in out and 'classifier.1.bias' in out and 'output.0.weight' in out
    net = _net('mobilenetv2_1.0', dst, 7)
    assert net.output[0].weight.shape == (7, 1280, 1, 1)
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 32, 32))
    _close(net.features(mx.nd.array(x)).asnumpy().reshape(2, -1), T.mobilenet_v2_features(sd, x))


# ----------------------------------------------------------------- Inception-v3
def _gluon_v3_pooled(net, x):
    """GluonCV features up to Mixed_7c (children 0..17), then the spatial mean: the 8x8
    average pool of its head only fits 299 px inputs, the small test input gives 1x1."""
    y = mx.nd.array(x)
    for i, blk in enumerate(net.features):
        if i == 18:
            break
        y = blk(y)
    return y.mean(axis=(2, 3))


def test_inception_v3_features_and_logits(tmp_path, gen):
    sd = T.inception_v3_state(gen)
    src, dst = tmp_path / 'v3.pth', tmp_path / 'v3.params'
    pth_writer.save_zip(sd, str(src))
    conv = convert_file(str(src), str(dst))
    assert (conv.arch, conv.classes) == ('inceptionv3', 1000)
    aux = [k for k in sd if k.startswith('AuxLogits.')]
    assert len(aux) == 2 * 6 + 2 and {k for k, _ in conv.dropped} >= set(aux)
    assert ('Mixed_7b.branch3x3dbl_3b.conv.weight', 'features.16.2.1.1.0.0.weight', 'structural rename') \
        in conv.renamed
    assert any('transform_input' in n for n in conv.notes)
    net = _net('inceptionv3', dst, 1000)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, 75, 75))          # ImageNet-normalised input
    pooled = _gluon_v3_pooled(net, x)
    _close(pooled.asnumpy(), T.inception_v3_features(sd, x, transform_input=True))
    _close(net.output(pooled).asnumpy(), T.inception_v3_forward(sd, x, transform_input=True))
    # a model built with transform_input=False: nothing folded
    plain = convert(sd, transform_input=False)
    np.testing.assert_array_equal(plain.params['features.0.0.weight'], sd['Conv2d_1a_3x3.conv.weight'])
    path = tmp_path / 'plain.params'
    mx.nd.save(str(path), {k: mx.nd.array(v) for k, v in plain.params.items()})
    _close(_gluon_v3_pooled(_net('inceptionv3', path, 1000), x).asnumpy(),
           T.inception_v3_features(sd, x, transform_input=False))


# ----------------------------------------------------------------- Inception-v4
def test_inception_v4_reproduces_logits(tmp_path, gen):
    sd = T.inception_v4_state(gen, classes=10)
    src, dst = tmp_path / 'v4.pth', tmp_path / 'v4.params'
    pth_writer.save_legacy({'state_dict': sd, 'epoch': 3, 'arch': 'inception_v4'}, str(src))
    conv = convert_file(str(src), str(dst))
    assert (conv.arch, conv.classes, conv.source) == ('inception_v4', 10, 'timm Inception-v4')
    assert ('last_linear.weight', 'output.weight', 'classifier') in conv.renamed
    assert len(conv.params) == len(sd) - _bn_count(sd) == 5 * 149 + 2     # 149 basic convs: weight + 4 BN arrays
    net = _net('inception_v4', dst, 10)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, 75, 75))          # 75 px: the smallest valid input
    _close(net(mx.nd.array(x)).asnumpy(), T.inception_v4_forward(sd, x))
    # --imagenet-input: the network takes ImageNet-normalised input, timm's gets (p - 0.5) / 0.5
    folded = convert(sd, imagenet_input=True)
    path = tmp_path / 'v4i.params'
    mx.nd.save(str(path), {k: mx.nd.array(v) for k, v in folded.params.items()})
    pixels = np.random.default_rng(2).uniform(0, 1, (1, 3, 75, 75))
    got = _net('inception_v4', path, 10)(mx.nd.array((pixels - MEAN) / STD)).asnumpy()
    _close(got, T.inception_v4_forward(sd, (pixels - 0.5) / 0.5))


def test_inception_v4_model_layout():
    net = gt.get_model('inception_v4', classes=5, features=('stem', 'inception_a', 'inception_c'))
    net.initialize()
    logits, maps = net(mx.nd.zeros((1, 3, 75, 75)))
    assert logits.shape == (1, 5)
    assert [m.shape for m in maps] == [(1, 64, 35, 35), (1, 384, 7, 7), (1, 1536, 1, 1)]
    assert [f['stride'] for f in net.feature_info] == [2, 4, 8, 16, 32]
    bns = [b for b in net.features[0]._children.values() if isinstance(b, mx.gluon.nn.BatchNorm)]
    assert bns[0]._kwargs['eps'] == 1e-3
    with pytest.raises(ConfigError, match="unknown feature tap 'mixed9'"):
        gt.get_model('inception_v4', features=('mixed9',))


# ----------------------------------------------------------------- head options and errors
def test_drop_head_writes_the_backbone_only(tmp_path, gen):
    sd = T.resnet_state(gen, 18, classes=3)
    src, dst = tmp_path / 'r18.pth', tmp_path / 'r18.params'
    pth_writer.save_zip(sd, str(src))
    conv = convert_file(str(src), str(dst), drop_head=True)
    assert conv.classes is None and 'fc.weight' not in conv.params
    assert {'fc.weight', 'fc.bias'} <= {k for k, _ in conv.dropped}
    assert not any(k.startswith('fc.') for k in mx.nd.load(str(dst)))
    with pytest.raises(ConfigError, match='not both'):
        convert(sd, classes=4, drop_head=True)


def test_detection_and_mapping_errors(tmp_path, gen, tool, capsys):
    sd = T.resnet_state(gen, 18)
    extra = dict(sd, **{'layer1.0.se.fc1.weight': np.ones((4, 64), np.float32)})
    with pytest.raises(CheckpointError, match="'layer1.0.se.fc1.weight' has no place in resnet18_v1b"):
        convert(extra)
    missing = {k: v for k, v in sd.items() if k != 'layer3.1.bn2.running_var'}
    with pytest.raises(CheckpointError, match="'layer3.1.bn2.running_var' is missing"):
        convert(missing)
    with pytest.raises(CheckpointError, match='cannot tell the architecture.*none of the known layouts'):
        convert({'encoder.w': np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match='is a torchvision ResNet-18.*does not fit resnet34_v1b'):
        convert(sd, arch='resnet34_v1b')
    with pytest.raises(CheckpointError, match='converts to mobilenetv2_1.0, not resnet18_v1b'):
        convert(T.mobilenet_v2_state(gen), arch='resnet18_v1b')
    headless = {k: v for k, v in sd.items() if not k.startswith('fc.')}
    with pytest.raises(CheckpointError, match="no classifier .*'fc.weight'.*--classes N"):
        convert(headless)
    assert convert(headless, classes=5).params['fc.weight'].shape == (5, 512)
    with pytest.raises(ConfigError, match='Inception-v3 only'):
        convert(sd, transform_input=False)
    # a wider network with the same keys (torchvision's wide_resnet50_2): the shape is named
    wide = T.resnet_state(gen, 50)
    wide['layer1.0.conv1.weight'] = np.zeros((128, 64, 1, 1), np.float32)
    src = tmp_path / 'wide.pth'
    pth_writer.save_zip(wide, str(src))
    assert tool.main([str(src), str(tmp_path / 'wide.params')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: wide.pth:') and "'layer1.0.conv1.weight' has shape (128, 64, 1, 1)" in err
    assert not (tmp_path / 'wide.params').exists()


def test_tool_report_and_no_overwrite(tmp_path, gen, tool, capsys):
    sd = T.resnet_state(gen, 18, classes=4)
    src, dst = tmp_path / 'r18.pth', tmp_path / 'r18.params'
    pth_writer.save_zip(sd, str(src))
    assert tool.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == 'detected: torchvision ResNet-18 -> resnet18_v1b (4 classes), %d arrays' % (len(sd) - 20)
    assert 'renamed 40 keys:' in out and 'dropped 20 keys:' in out
    assert '    layer4.1.bn2.bias -> layer4.1.bn2.beta' in out and '    layer4.1.bn2.num_batches_tracked' in out
    before = dst.read_bytes()
    assert tool.main([str(src), str(dst), '-q']) == 2
    assert 'exists; pass --force' in capsys.readouterr().err and dst.read_bytes() == before
    assert tool.main([str(src), str(dst), '-q', '--force']) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert tool.main([str(src), str(src), '--force']) == 2
    assert 'is the input file' in capsys.readouterr().err and src.stat().st_size > 0


@pytest.mark.slow
def test_convert_then_fine_tune(tmp_path, gen):
    """The documented path: a torchvision checkpoint -> .params -> train_transfer.py --source-params."""
    import cv2
    import runpy
    from gluon_transfer.data.pack import pack
    rs = np.random.RandomState(0)
    for split, n in (('train', 4), ('val', 2)):
        for ci, c in enumerate(('ant', 'bee')):
            d = tmp_path / 'img' / split / c
            d.mkdir(parents=True)
            for k in range(n):
                img = rs.randint(0, 256, (40, 40, 3)).astype(np.uint8)
                img[..., ci] = 255
                cv2.imwrite(str(d / ('%d.png' % k)), img)
        pack(str(tmp_path / 'img' / split), str(tmp_path / 'data' / split), workers=1, classes=['ant', 'bee'])
    sd = T.resnet_state(gen, 18)
    pth_writer.save_zip({'model': collections.OrderedDict(('module.' + k, v) for k, v in sd.items())},
                        str(tmp_path / 'r18.pth'))
    tool = runpy.run_path(os.path.join(ROOT, 'tools', 'convert_torch.py'), run_name='convert_test')
    assert tool['main']([str(tmp_path / 'r18.pth'), str(tmp_path / 'r18.params'), '-q']) == 0
    script = runpy.run_path(os.path.join(ROOT, 'train_transfer.py'), run_name='convert_test')
    assert script['main'](['--model', 'resnet18_v1b', '--source-params', str(tmp_path / 'r18.params'),
                           '--data-dir', str(tmp_path / 'data'), '--input-size', '32', '--batch-size', '2',
                           '--max-iter', '1', '--reg', 'l2sp', '--save-dir', str(tmp_path / 'run'), '-j', '1']) == 0
    log = (tmp_path / 'run' / 'train.log').read_text()
    assert 'source resnet18_v1b from %s: loaded 102 arrays (classifier of 1000 classes, replaced)' \
        % (tmp_path / 'r18.params') in log
