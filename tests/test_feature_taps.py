"""Feature taps on frozen GluonCV networks via symbol internals (nn/feature.py)."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

import gluon_transfer as gt
from gluon_transfer.errors import ConfigError
from gluon_transfer.nn.feature import FeatureTaps, stage_aliases, tapped


@pytest.fixture(scope='module')
def r18():
    net = gt.get_model('resnet18_v1b', classes=7)
    net.initialize(mx.init.Xavier())
    return net


def manual_v1b(net, x):
    """The stage outputs by calling the children one after another (imperative)."""
    o = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outs = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        o = layer(o)
        outs.append(o)
    return outs


def test_stage_aliases_of_gluoncv_resnets():
    assert stage_aliases(gt.get_model('resnet18_v1b')) == {'stage%d' % k: 'layer%d' % k for k in range(1, 5)}
    assert stage_aliases(gt.get_model('resnet18_v2')) == {'stage%d' % k: 'features.%d' % (k + 4) for k in range(1, 5)}
    assert stage_aliases(gt.get_model('resnet18_v1')) == {'stage%d' % k: 'features.%d' % (k + 3) for k in range(1, 5)}
    assert stage_aliases(gt.get_model('cifar_resnet20_v1')) == {'stage%d' % k: 'features.%d' % (k + 1)
                                                                for k in range(1, 4)}


@pytest.mark.parametrize('hybridize', [False, True])
def test_taps_equal_stage_outputs_and_logits(r18, hybridize):
    x = mx.nd.random.normal(shape=(2, 3, 32, 32))
    view = FeatureTaps(r18, ['stage4', 'stage1', 'layer2', 'layer3.1'])
    if hybridize:
        view.hybridize(static_alloc=True)
    logits, maps = view(x)
    want = manual_v1b(r18, x)
    np.testing.assert_allclose(logits.asnumpy(), r18(x).asnumpy(), rtol=1e-5, atol=1e-5)
    for got, ref in zip(maps, [want[3], want[0], want[1], want[2]]):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-5)
    assert (maps[1].asnumpy() >= 0).all()              # v1b stage outputs are post-ReLU


def test_view_shares_parameters(r18):
    view = FeatureTaps(r18, ['stage2'])
    assert set(view.collect_params().keys()) <= set(r18.collect_params().keys())
    for name, p in view.collect_params().items():
        assert p is r18.collect_params()[name]
    w = r18.layer1[0].conv1.weight
    w.zero_grad()
    with autograd.record():
        _, (m,) = view(mx.nd.random.normal(shape=(2, 3, 32, 32)))
        loss = m.sum()
    loss.backward()
    assert np.abs(w.grad().asnumpy()).sum() > 0          # gradients reach the network's own params
    assert np.abs(r18.layer4[0].conv1.weight.grad().asnumpy()).sum() == 0   # after the tap: untouched


def test_internal_output_name(r18):
    names = r18(mx.sym.var('data')).get_internals().list_outputs()
    inner = [n for n in names if 'layers1' in n and n.endswith('_output')][0]
    logits, (m,) = FeatureTaps(r18, [inner])(mx.nd.zeros((1, 3, 32, 32)))
    assert m.ndim == 4 and logits.shape == (1, 7)


def test_unknown_tap_lists_valid_names(r18):
    with pytest.raises(ConfigError) as e:
        FeatureTaps(r18, ['layer5'])
    msg = str(e.value)
    assert "unknown feature tap 'layer5' for ResNetV1b" in msg and 'stage1, stage2, stage3, stage4' in msg
    assert 'did you mean' in msg and '\n' not in msg
    with pytest.raises(ConfigError, match='at least one'):
        FeatureTaps(r18, [])


def test_tapped_uses_own_feature_api():
    net = gt.get_model('wrn16_1', features=('stage1', 'stage3'))
    assert tapped(net, ('stage1', 'stage3')) is net
    other = tapped(net, ('stage2',))
    assert isinstance(other, FeatureTaps)
    net.initialize()
    x = mx.nd.random.normal(shape=(1, 3, 32, 32))
    (_, own), (_, via) = net(x), other(x)
    assert own[0].shape == (1, 16, 32, 32) and via[0].shape == (1, 32, 16, 16)


def test_multi_context(r18):
    net = gt.get_model('resnet18_v1b', classes=3)
    net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    view = FeatureTaps(net, ['stage3'])
    x = mx.nd.random.normal(shape=(1, 3, 32, 32))
    a = view(x.as_in_context(mx.cpu(0)))[1][0].asnumpy()
    b = view(x.as_in_context(mx.cpu(1)))[1][0].asnumpy()
    np.testing.assert_array_equal(a, b)


def test_generic_hybrid_sequential_paths():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, padding=1), gluon.nn.Activation('relu'), gluon.nn.GlobalAvgPool2D(),
            gluon.nn.Dense(2))
    net.initialize()
    x = mx.nd.random.normal(shape=(2, 3, 6, 6))
    logits, (conv, act) = FeatureTaps(net, ['0', '1'])(x)
    np.testing.assert_allclose(act.asnumpy(), np.maximum(conv.asnumpy(), 0), rtol=1e-6)
    np.testing.assert_allclose(logits.asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
