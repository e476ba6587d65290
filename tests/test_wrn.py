"""WRN-depth-width (attention-transfer reference architecture): parameter counts from the
hand formula, feature taps, and a numpy forward of the reference's block structure."""
import warnings

import numpy as np
import pytest
import mxnet as mx

import gluon_transfer as gt
from gluon_transfer.errors import ConfigError

import numpy_ref as R


def wrn_param_count(depth, k, classes=10):
    """Trainable parameters by hand: stem 3x3 conv 3->16; per block BN(in) + conv3x3(in->out)
    + BN(out) + conv3x3(out->out) [+ 1x1 conv(in->out) when in != out]; final BN + FC."""
    n = (depth - 4) // 6
    total = 3 * 16 * 9
    cin = 16
    for w in (16 * k, 32 * k, 64 * k):
        for b in range(n):
            i = cin if b == 0 else w
            total += 2 * i + 9 * i * w + 2 * w + 9 * w * w + (i * w if i != w else 0)
        cin = w
    return total + 2 * cin + cin * classes + classes


def trainable(net):
    return sum(p.data().size for p in net.collect_params().values() if p.grad_req != 'null')


@pytest.mark.parametrize('name,depth,k,approx', [('wrn16_1', 16, 1, 0.2e6), ('wrn16_2', 16, 2, 0.7e6),
                                                  ('wrn40_1', 40, 1, 0.6e6), ('wrn40_2', 40, 2, 2.2e6)])
def test_parameter_counts(name, depth, k, approx):
    net = gt.get_model(name)
    net.initialize()
    n = trainable(net)
    assert n == wrn_param_count(depth, k)
    assert abs(n - approx) / approx < 0.15          # the paper's 0.2M / 0.7M / 0.6M / 2.2M
    assert {'wrn16_1': 175066, 'wrn16_2': 691674, 'wrn40_1': 563930, 'wrn40_2': 2243546}[name] == n


def test_generic_wrn_and_errors():
    net = gt.get_model('wrn', depth=22, width=3, classes=100)
    net.initialize()
    assert trainable(net) == wrn_param_count(22, 3, 100)
    with pytest.raises(ConfigError, match='6n \\+ 4'):
        gt.get_model('wrn', depth=18)
    with pytest.raises(ConfigError, match="unknown feature tap 'stage4'.*stage1, stage2, stage3"):
        gt.get_model('wrn16_1', features=('stage4',))


def test_feature_info_and_taps():
    net = gt.get_model('wrn16_2', features=('stage3', 'stage1'))
    assert net.feature_info == [{'name': 'stage1', 'channels': 32, 'stride': 1},
                                {'name': 'stage2', 'channels': 64, 'stride': 2},
                                {'name': 'stage3', 'channels': 128, 'stride': 4}]
    net.initialize()
    logits, maps = net(mx.nd.zeros((2, 3, 32, 32)))
    assert logits.shape == (2, 10)
    assert [m.shape for m in maps] == [(2, 128, 8, 8), (2, 32, 32, 32)]


def _bn(net_bn):
    p = {k: v.data().asnumpy().astype(np.float64) for k, v in
         [('g', net_bn.gamma), ('b', net_bn.beta), ('m', net_bn.running_mean), ('v', net_bn.running_var)]}
    return lambda x: R.bn_eval(x, p['g'], p['b'], p['m'], p['v'], eps=1e-5)


def _w(conv):
    return conv.weight.data().asnumpy().astype(np.float64)


def numpy_wrn(net, x):
    """Inference forward written from the reference's cifar.py description."""
    o = R.conv2d(x, _w(net.conv0), pad=1)
    groups = []
    for g, stage in enumerate((net.stage1, net.stage2, net.stage3)):
        for b, blk in enumerate(stage):
            stride = 2 if (g > 0 and b == 0) else 1
            o1 = R.relu(_bn(blk.bn0)(o))
            y = R.conv2d(o1, _w(blk.conv0), stride=stride, pad=1)
            z = R.conv2d(R.relu(_bn(blk.bn1)(y)), _w(blk.conv1), pad=1)
            short = R.conv2d(o1, _w(blk.convdim), stride=stride) if blk.convdim is not None else o
            o = z + short
        groups.append(o)
    f = R.global_avg(R.relu(_bn(net.bn)(o)))
    return f @ net.fc.weight.data().asnumpy().T + net.fc.bias.data().asnumpy(), groups


@pytest.mark.parametrize('hybridize', [False, True])
def test_forward_matches_numpy_reference(rng, hybridize):
    net = gt.get_model('wrn', depth=10, width=1.5, features=('stage1', 'stage2', 'stage3'))
    net.initialize()
    for p in net.collect_params('.*running.*').values():          # non-trivial BN statistics
        p.set_data(mx.nd.array(rng.uniform(0.2, 1.5, p.shape) if p.name.endswith('var') else rng.randn(*p.shape)))
    if hybridize:
        net.hybridize()
    x = rng.randn(2, 3, 8, 8)
    logits, maps = net(mx.nd.array(x))
    want, groups = numpy_wrn(net, x)
    np.testing.assert_allclose(logits.asnumpy(), want, rtol=1e-4, atol=1e-4)
    for m, g in zip(maps, groups):
        np.testing.assert_allclose(m.asnumpy(), g, rtol=1e-4, atol=1e-4)
    assert [m.shape[1] for m in maps] == [24, 48, 96]


def test_reference_initialisation(rng):
    mx.random.seed(3)
    net = gt.get_model('wrn40_1')
    net.initialize(mx.init.Xavier())                   # per-parameter initialisers win
    gammas = np.concatenate([p.data().asnumpy() for k, p in net.collect_params('.*gamma').items()])
    assert gammas.min() >= 0 and gammas.max() < 1 and 0.4 < gammas.mean() < 0.6
    w = net.stage3[1].conv0.weight.data().asnumpy()
    assert w.std() == pytest.approx(np.sqrt(2.0 / (64 * 9)), rel=0.05)
    assert (net.fc.bias.data().asnumpy() == 0).all()


def test_export_with_features(tmp_path):
    net = gt.get_model('wrn16_1', features=('stage2',))
    net.initialize()
    net.hybridize()
    x = mx.nd.random.normal(shape=(1, 3, 32, 32))
    logits, maps = net(x)
    net.export(str(tmp_path / 'wrn'))
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Cannot decide type')     # mxnet's own notice on imports
        back = mx.gluon.SymbolBlock.imports(str(tmp_path / 'wrn-symbol.json'), ['data'],
                                            str(tmp_path / 'wrn-0000.params'))
    out = back(x)
    np.testing.assert_allclose(out[0].asnumpy(), logits.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1].asnumpy(), maps[0].asnumpy(), rtol=1e-5, atol=1e-6)
