"""AFF model zoo: parameter counts (as open-aff publishes them), checkpoint keys (its .params layout),
equality with GluonCV ResNet-D/ResNeXt under plain add, taps, hybridize, loading."""
import os
import warnings

import numpy as np
import pytest
import mxnet as mx

import gluon_transfer as gt
from gluon_transfer.errors import CheckpointError, ConfigError
from gluon_transfer.weights import describe_load, load_params, net_param_shapes, resolve_pretrained

BN = ('gamma', 'beta', 'running_mean', 'running_var')


def counts(net):
    params = net.collect_params().values()
    trainable = sum(int(np.prod(p.shape)) for p in params if p.grad_req != 'null')
    total = sum(int(np.prod(p.shape)) for p in params)
    return trainable, total


def randomize(net, seed=0):
    """Deterministic random arrays everywhere (BN statistics included), without initializers."""
    mx.random.seed(seed)
    net.initialize(force_reinit=True)
    for key, p in sorted(net._collect_params_with_prefix().items()):
        if key.endswith(('running_var', 'gamma')):
            val = mx.nd.random.uniform(0.5, 1.5, shape=p.shape)
        elif key.endswith(('running_mean', 'beta', 'bias')):
            val = mx.nd.random.normal(0, 0.1, shape=p.shape)
        else:
            fan_in = int(np.prod(p.shape[1:])) or 1
            val = mx.nd.random.normal(0, 1.0 / np.sqrt(fan_in), shape=p.shape)
        p.set_data(val.astype(p.dtype))


# ---- parameter counts as open-aff publishes them (trainable, total) -----------------------

COUNTS = {
    'cifar_aff_resnet32': (7897156, 7917456),
    'cifar_iaff_resnet32': (8344036, 8375536),
    'cifar_aff_resnext38_32x4d': (7770148, 7832996),
    'cifar_aff_resnext47_32x4d': (9605828, 9683460),
    'aff_resnet50': (30373192, 30478664),
    'iaff_resnet50': (35170120, 35327816),
    'aff_resnext50_32x4d': (29953704, 30074536),
    'iaff_resnext50_32x4d': (34750632, 34923688),
}


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_parameter_counts_match_reference(name):
    assert counts(gt.get_model(name)) == COUNTS[name]


def test_unpublished_iaff_resnext38_count():
    assert counts(gt.get_model('cifar_aff_resnext', blocks=4, fusion='iaff', classes=100)) == (9192100, 9285412)


def test_gluoncv_baseline_counts():
    # section 7: resnet50_v1d 25,576,264 trainable; our 'add' variant is that network
    assert counts(gt.get_model('aff_resnet', fusion='add'))[0] == 25576264


# ---- structural keys: section 3 ------------------------------------------------------------

def fusion_keys(prefix, c, r, iterative):
    ci = c // r
    keys = {}
    names = [('local_att', 0), ('global_att', 1)]
    if iterative:
        names += [('local_att2', 0), ('global_att2', 1)]
    for name, o in names:
        base = '%s.attention.%s' % (prefix, name)
        keys['%s.%d.weight' % (base, o)] = (ci, c, 1, 1)
        keys['%s.%d.bias' % (base, o)] = (ci,)
        keys['%s.%d.weight' % (base, o + 3)] = (c, ci, 1, 1)
        keys['%s.%d.bias' % (base, o + 3)] = (c,)
        for idx, ch in ((o + 1, ci), (o + 4, c)):
            keys.update({'%s.%d.%s' % (base, idx, s): (ch,) for s in BN})
    return keys


def bn_keys(prefix, c):
    return {'%s.%s' % (prefix, s): (c,) for s in BN}


def expected_cifar_resnet(blocks, ct, fusion, classes):
    """Section 3 'CIFARAFFResNet' written out: features.0 input BN, features.1 conv, stages 2-4,
    features.5 final BN, output; resfwd.{0,3} BN, resfwd.{2,5} conv, downsample.1 conv (no BN)."""
    ch = [16 * ct, 16 * ct, 32 * ct, 64 * ct]
    keys = dict(bn_keys('features.0', 3), **{'features.1.weight': (ch[0], 3, 3, 3)})
    cin = ch[0]
    for s in range(3):
        for i in range(blocks):
            p = 'features.%d.%d' % (s + 2, i)
            cout = ch[s + 1]
            keys.update(bn_keys(p + '.resfwd.0', cin))
            keys[p + '.resfwd.2.weight'] = (cout, cin, 3, 3)
            keys.update(bn_keys(p + '.resfwd.3', cout))
            keys[p + '.resfwd.5.weight'] = (cout, cout, 3, 3)
            if cin != cout:
                keys[p + '.downsample.1.weight'] = (cout, cin, 1, 1)
            if fusion != 'add':
                keys.update(fusion_keys(p, cout, 4, fusion == 'iaff'))
            cin = cout
    keys.update(bn_keys('features.5', cin))
    keys.update({'output.weight': (classes, cin), 'output.bias': (classes,)})
    return keys


def expected_cifar_resnext(blocks, fusion, classes, card=32, bw=4):
    """Section 3 'CIFARAFFResNeXt': features.0 conv, features.1 BN, stages 3-5 with body.{0,3,6}
    convs, body.{1,4,7} BNs, every first block downsample.{1 conv, 2 BN}, output."""
    keys = {'features.0.weight': (64, 3, 3, 3)}
    keys.update(bn_keys('features.1', 64))
    cin, c = 64, 64
    for s in range(3):
        g = card * (c * bw // 64)
        for i in range(blocks):
            p = 'features.%d.%d' % (s + 3, i)
            keys[p + '.body.0.weight'] = (g, cin, 1, 1)
            keys.update(bn_keys(p + '.body.1', g))
            keys[p + '.body.3.weight'] = (g, g // card, 3, 3)
            keys.update(bn_keys(p + '.body.4', g))
            keys[p + '.body.6.weight'] = (4 * c, g, 1, 1)
            keys.update(bn_keys(p + '.body.7', 4 * c))
            if i == 0:
                keys[p + '.downsample.1.weight'] = (4 * c, cin, 1, 1)
                keys.update(bn_keys(p + '.downsample.2', 4 * c))
            if fusion != 'add':
                keys.update(fusion_keys(p, 4 * c, 16, fusion == 'iaff'))
            cin = 4 * c
        c *= 2
    keys.update({'output.weight': (classes, cin), 'output.bias': (classes,)})
    return keys


@pytest.mark.parametrize('fusion', ['add', 'aff', 'iaff'])
def test_cifar_resnet_keys(fusion):
    net = gt.get_model('cifar_aff_resnet', blocks=2, channel_times=2, fusion=fusion, classes=100)
    assert net_param_shapes(net) == expected_cifar_resnet(2, 2, fusion, 100)


def test_cifar_resnet32_preset_keys():
    assert net_param_shapes(gt.get_model('cifar_aff_resnet32')) == expected_cifar_resnet(5, 4, 'aff', 100)
    assert net_param_shapes(gt.get_model('cifar_iaff_resnet32')) == expected_cifar_resnet(5, 4, 'iaff', 100)


@pytest.mark.parametrize('name,blocks', [('cifar_aff_resnext38_32x4d', 4), ('cifar_aff_resnext47_32x4d', 5)])
def test_cifar_resnext_keys(name, blocks):
    assert net_param_shapes(gt.get_model(name)) == expected_cifar_resnext(blocks, 'aff', 100)


def test_cifar_start_layer_keeps_early_stages_plain():
    net = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1, fusion='aff', start_layer=3)
    keys = net_param_shapes(net)
    assert not any(k.startswith(('features.2.', 'features.3.')) and '.attention.' in k for k in keys)
    assert any(k.startswith('features.4.0.attention.') for k in keys)


def gluoncv_nets():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        from gluoncv.model_zoo import get_model
        from gluoncv.model_zoo.resnext import ResNext
    return {'resnet': lambda: get_model('resnet50_v1d'),
            'resnext': lambda: ResNext([3, 4, 6, 3], 32, 4, deep_stem=True, avg_down=True, stem_width=64)}


def imagenet_attention_keys(name, iterative, start_layer=3):
    """Fusion keys of stages >= start_layer: layerN.i (ResNet) / features.(9+N).i (ResNeXt), r=16."""
    keys = {}
    for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        if stage < start_layer:
            continue
        c = 256 * 2 ** (stage - 1)
        for i in range(blocks):
            p = ('layer%d.%d' % (stage, i)) if name == 'resnet' else ('features.%d.%d' % (9 + stage, i))
            keys.update(fusion_keys(p, c, 16, iterative))
    return keys


@pytest.mark.parametrize('family', ['resnet', 'resnext'])
def test_imagenet_keys_are_gluoncv_plus_attention(family):
    ref = gluoncv_nets()[family]()
    ref.initialize()
    ref(mx.nd.zeros((1, 3, 32, 32)))  # settle GluonCV's deferred shapes
    base = net_param_shapes(ref)
    ours = {'add': gt.get_model('aff_%s' % family, fusion='add')}
    preset = {'resnet': '%s_resnet50', 'resnext': '%s_resnext50_32x4d'}[family]
    for fusion in ('aff', 'iaff'):
        ours[fusion] = gt.get_model(preset % fusion)
    assert net_param_shapes(ours['add']) == base
    extra_aff = {k: v for k, v in net_param_shapes(ours['aff']).items() if k not in base}
    extra_iaff = {k: v for k, v in net_param_shapes(ours['iaff']).items() if k not in base}
    assert set(base) <= set(net_param_shapes(ours['aff']))
    assert extra_aff == imagenet_attention_keys(family, False)
    assert extra_iaff == imagenet_attention_keys(family, True)
    assert (len(extra_aff), len(extra_iaff)) == (216, 432)


@pytest.mark.parametrize('family', ['resnet', 'resnext'])
def test_add_variant_equals_gluoncv(tmp_path, family):
    ref = gluoncv_nets()[family]()
    ref.initialize()
    x = mx.nd.array(np.random.RandomState(3).uniform(-1, 1, size=(1, 3, 64, 64)))
    ref(x)  # settle deferred shapes
    randomize(ref)
    path = str(tmp_path / 'ref.params')
    ref.save_parameters(path)
    ours = gt.get_model('aff_%s' % family, fusion='add')
    result = load_params(ours, path)
    assert result['missing'] == [] and result['unexpected'] == []
    np.testing.assert_array_equal(ours(x).asnumpy(), ref(x).asnumpy())
    # a v1d/ResNeXt checkpoint loads into the AFF variant with allow_missing (attention keys only)
    aff = gt.get_model('aff_%s' % family)
    result = load_params(aff, path, strict=False, allow_missing=True)
    assert len(result['missing']) == 216 and all('.attention.' in k for k in result['missing'])


# ---- behaviour ---------------------------------------------------------------------------

def _imagenet(cls):
    from gluon_transfer.models import imagenet_aff
    return getattr(imagenet_aff, cls)


SMALL = [
    ('cifar_aff_resnet', dict(blocks=1, channel_times=1, fusion='aff'), 32),
    ('cifar_aff_resnet', dict(blocks=1, channel_times=1, fusion='iaff', start_layer=2), 32),
    ('cifar_aff_resnext', dict(blocks=1, fusion='iaff'), 16),
    ('AFFResNet', dict(layers=[1, 1, 2, 1], fusion='aff', classes=10), 32),  # ResNet-D with 1-2 blocks/stage
    ('AFFResNeXt', dict(layers=[1, 1, 2, 1], fusion='iaff', classes=10, stem_width=16), 32),
]


@pytest.mark.parametrize('name,kw,size', SMALL)
def test_taps_and_hybridize_match_imperative(name, kw, size):
    build = (lambda **k: gt.get_model(name, **k)) if name.islower() else _imagenet(name)
    net = build(features=None, **kw)
    names = [f['name'] for f in net.feature_info]
    tapped = build(features=tuple(reversed(names)), **kw)
    randomize(net)
    randomize(tapped)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=(2, 3, size, size)))
    logits = net(x).asnumpy()
    out, maps = tapped(x)
    np.testing.assert_array_equal(out.asnumpy(), logits)
    for info, fmap in zip(reversed(net.feature_info), maps):  # requested order
        assert fmap.shape == (2, info['channels'], size // info['stride'], size // info['stride'])
    imperative = [m.asnumpy() for m in maps]
    tapped.hybridize(static_alloc=True, static_shape=True)
    out_h, maps_h = tapped(x)
    np.testing.assert_allclose(out_h.asnumpy(), logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(maps_h, imperative):
        np.testing.assert_allclose(a.asnumpy(), b, rtol=1e-5, atol=1e-6)


def test_unknown_tap_lists_valid_names():
    with pytest.raises(ConfigError, match='stage1, stage2, stage3'):
        gt.get_model('cifar_aff_resnet32', features=('stage4',))


def test_input_bn_is_frozen_and_saved():
    net = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1)
    bn = net.features[0]
    assert bn.gamma.grad_req == 'null' and bn.beta.grad_req == 'null'
    assert {'features.0.gamma', 'features.0.beta'} <= set(net_param_shapes(net))


def test_cifar_block_shortcut_uses_raw_input_and_no_relu():
    """AFFResBlockV2 with 'add': out = resfwd(x) + Conv1x1(AvgPool2(x)), where the pool is
    ceil_mode with count_include_pad=False (odd 5x5 input -> 3x3, edge windows averaged over
    the valid pixels only). Checked against primitive ops + numpy pooling."""
    from gluon_transfer.models.cifar_aff import AFFResBlockV2
    blk = AFFResBlockV2(6, 4, stride=2, fusion='add')
    randomize(blk)
    rng = np.random.RandomState(1)
    x = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
    P = {k: p.data() for k, p in blk._collect_params_with_prefix().items()}

    def bn(z, pre):
        return mx.nd.BatchNorm(z, P[pre + '.gamma'], P[pre + '.beta'], P[pre + '.running_mean'],
                               P[pre + '.running_var'], fix_gamma=False, use_global_stats=True, eps=1e-5)
    z = mx.nd.relu(bn(mx.nd.array(x), 'resfwd.0'))
    z = mx.nd.Convolution(z, P['resfwd.2.weight'], kernel=(3, 3), stride=(2, 2), pad=(1, 1), num_filter=6, no_bias=True)
    z = mx.nd.relu(bn(z, 'resfwd.3'))
    z = mx.nd.Convolution(z, P['resfwd.5.weight'], kernel=(3, 3), pad=(1, 1), num_filter=6, no_bias=True).asnumpy()
    pooled = np.zeros((2, 4, 3, 3))
    for i in range(3):
        for j in range(3):
            pooled[:, :, i, j] = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(2, 3))
    short = np.einsum('nchw,oc->nohw', pooled, P['downsample.1.weight'].asnumpy()[:, :, 0, 0])
    np.testing.assert_allclose(blk(mx.nd.array(x)).asnumpy(), z + short, rtol=1e-4, atol=1e-5)


def test_last_gamma_init():
    def last_gammas(net, keys):
        net.initialize()
        params = net._collect_params_with_prefix()
        return [float(params[k].data().asnumpy().max()) for k in keys]
    import inspect
    from gluon_transfer.models import cifar_aff, imagenet_aff
    small = dict(layers=[1, 1, 1, 1], stem_width=8)
    # ResNeXt: default reproduces the reference's effective zero init; False keeps ones
    assert inspect.signature(imagenet_aff.aff_resnext).parameters['last_gamma'].default is True
    keys = ['features.10.0.body.7.gamma', 'features.13.0.body.7.gamma']
    assert last_gammas(imagenet_aff.AFFResNeXt(**small), keys) == [0.0, 0.0]
    assert last_gammas(imagenet_aff.AFFResNeXt(last_gamma=False, **small), keys) == [1.0, 1.0]
    assert last_gammas(cifar_aff.cifar_aff_resnext(blocks=1), ['features.3.0.body.7.gamma']) == [0.0]
    # ResNet: ordinary meaning, default off
    assert inspect.signature(imagenet_aff.aff_resnet).parameters['last_gamma'].default is False
    assert last_gammas(imagenet_aff.AFFResNet(**small), ['layer1.0.bn3.gamma']) == [1.0]
    assert last_gammas(imagenet_aff.AFFResNet(last_gamma=True, **small), ['layer4.0.bn3.gamma']) == [0.0]


def test_presets_and_option_errors():
    assert gt.get_model('aff_resnet50', fusion='ASKCFuse').layer3[0].attention.__class__.__name__ == 'AFF'
    with pytest.raises(ConfigError, match="aff_resnet50 fixes fusion='aff'"):
        gt.get_model('aff_resnet50', fusion='add')
    with pytest.raises(ConfigError, match='num_layers must be one of 101, 152, 50|num_layers must be one of 50'):
        gt.get_model('aff_resnet', num_layers=34)
    with pytest.raises(ConfigError, match='unknown options: bogus'):
        gt.get_model('cifar_aff_resnet', bogus=1)
    with pytest.raises(ConfigError, match='start_layer'):
        gt.get_model('aff_resnext', start_layer=0)
    assert gt.get_model('cifar_aff_resnet32').output.weight.shape == (100, 256)
    assert gt.get_model('cifar_aff_resnet32', classes=10).output.weight.shape == (10, 256)
    assert gt.get_model('aff_resnet50').fc.weight.shape == (1000, 2048)


# ---- checkpoints ---------------------------------------------------------------------------

def test_save_load_round_trip_strict(tmp_path):
    net = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1, fusion='iaff', classes=10)
    randomize(net)
    path = str(tmp_path / 'a.params')
    net.save_parameters(path)
    assert set(mx.nd.load(path)) == set(expected_cifar_resnet(1, 1, 'iaff', 10))
    other = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1, fusion='ResGlobLocaforGlobLocaCha', classes=10)
    other.initialize()
    result = load_params(other, path)
    assert result == {'loaded': len(expected_cifar_resnet(1, 1, 'iaff', 10)), 'missing': [], 'unexpected': [],
                      'cast': {}}
    x = mx.nd.array(np.random.RandomState(0).uniform(size=(2, 3, 32, 32)))
    np.testing.assert_array_equal(other(x).asnumpy(), net(x).asnumpy())


def test_wrong_model_checkpoint_names_first_bad_key(tmp_path):
    aff = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1, fusion='aff')
    aff.initialize()
    path = str(tmp_path / 'aff.params')
    aff.save_parameters(path)
    iaff = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1, fusion='iaff')
    iaff.initialize()
    with pytest.raises(CheckpointError, match=r"missing key 'features\.2\.0\.attention\.local_att2\.0\.weight'"):
        load_params(iaff, path)
    resnext = gt.get_model('cifar_aff_resnext', blocks=1)
    resnext.initialize()
    with pytest.raises(CheckpointError, match="aff.params does not fit CIFARAFFResNeXt: missing key 'features.0.weight'"):
        load_params(resnext, path)
    wide = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=2, fusion='aff')
    wide.initialize()
    with pytest.raises(CheckpointError, match="'features.1.weight' has shape \\(32, 3, 3, 3\\) in the model"):
        load_params(wide, path)


def test_float16_checkpoint_into_float32(tmp_path):
    """The published ImageNet files: float16 convs/FC/fusion convs, float32 BN (net.cast('float16'))."""
    AFFResNet = _imagenet('AFFResNet')
    src = AFFResNet(layers=[1, 1, 1, 1], fusion='aff', start_layer=1, classes=10)
    randomize(src)
    src.cast('float16')
    path = str(tmp_path / 'fp16.params')
    src.save_parameters(path)
    saved = mx.nd.load(path)
    n16 = sum(1 for k, v in saved.items() if v.dtype == np.float16)
    assert all(v.dtype == np.float32 for k, v in saved.items() if k.rsplit('.', 1)[1] in BN)
    assert n16 == sum(1 for k in saved if k.rsplit('.', 1)[1] in ('weight', 'bias'))
    dst = AFFResNet(layers=[1, 1, 1, 1], fusion='aff', start_layer=1, classes=10)
    dst.initialize()
    result = load_params(dst, path)
    assert result['cast'] == {'float16->float32': n16} and not result['missing']
    assert 'cast %d arrays float16->float32' % n16 in describe_load(result)
    got = dst._collect_params_with_prefix()
    for key, arr in saved.items():
        assert got[key].data().dtype == np.float32
        np.testing.assert_array_equal(got[key].data().asnumpy(), arr.asnumpy().astype(np.float32))
    with pytest.raises(CheckpointError, match='float16 in the file but float32'):
        load_params(dst, path, cast_dtype=False)


# ---- published params lookup ------------------------------------------------------------

def test_resolve_pretrained_messages(tmp_path, monkeypatch):
    monkeypatch.setenv('GLUON_TRANSFER_PARAMS', str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        resolve_pretrained('aff_resnet50', {})
    msg = str(err.value)
    assert '0.2028-imagenet-ImageNet-ASKCFuse-resnet--50-s-3-235-best.params' in msg
    assert str(tmp_path / 'imagenet' / 'AFF-ResNet-50') in msg and 'nothing is downloaded' in msg
    with pytest.raises(ConfigError, match="no published params for 'aff_resnet'"):
        resolve_pretrained('aff_resnet', {})
    with pytest.raises(ConfigError, match="only coarse-label params.*labels='coarse'"):
        resolve_pretrained('cifar_aff_resnext38_32x4d', {})
    with pytest.raises(ConfigError, match='need classes=100; got classes=10'):
        resolve_pretrained('cifar_aff_resnet32', {'classes': 10})
    with pytest.raises(ConfigError, match="no published params with labels='fine'"):
        resolve_pretrained('cifar_aff_resnext38_32x4d', {'labels': 'fine'})


def test_pretrained_loads_local_file(tmp_path, monkeypatch):
    """A file saved by the preset itself has exactly the published size and keys."""
    monkeypatch.setenv('GLUON_TRANSFER_PARAMS', str(tmp_path))
    entry = [e for e in gt.weights.published_params() if e['model'] == 'cifar_aff_resnet32' and e['labels'] == 'coarse'][0]
    net = gt.get_model('cifar_aff_resnet32')
    randomize(net, seed=5)
    target = tmp_path / os.path.basename(entry['file'])
    net.save_parameters(str(target))
    assert os.path.getsize(target) == entry['size_bytes']
    kwargs = {'labels': 'coarse'}
    assert resolve_pretrained('cifar_aff_resnet32', kwargs) == str(target)
    assert kwargs == {}  # 'labels' is consumed, it is not a model option
    loaded = gt.get_model('cifar_aff_resnet32', pretrained=True, labels='coarse')
    np.testing.assert_array_equal(loaded.output.weight.data().asnumpy(), net.output.weight.data().asnumpy())
    with open(target, 'r+b') as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError, match='incomplete copy'):
        resolve_pretrained('cifar_aff_resnet32', {'labels': 'coarse'})
