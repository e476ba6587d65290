"""AFS gates and the AFS ResNet: WTA count and ties, the gate formula against numpy,
identity with GluonCV, GluonCV params loading, masks in checkpoints, unsupported blocks."""
import fractions
import math

import numpy as np
import pytest
import mxnet as mx
from mxnet.gluon import HybridBlock
from gluoncv.model_zoo.resnetv1b import ResNetV1b, BottleneckV1b, BasicBlockV1b

import gluon_transfer as gt
from gluon_transfer.errors import CheckpointError, ConfigError
from gluon_transfer.models.afs_resnet import (AFSResNetV1b, afs_from_gluoncv, afs_gates, load_gluoncv_params,
                                              set_density, set_gates_enabled)
from gluon_transfer.nn.gates import AFSGate, wta_keep_count, wta_mask


def exact_ceil(d, n):
    """ceil(d * n) with d taken as the decimal it prints as (0.9 is 9/10)."""
    return int(math.ceil(fractions.Fraction(repr(float(d))) * n))


def numpy_wta(h, dyn, d):
    """Keep per row the ceil(d * n_dyn) largest h among dyn columns, ties -> lower index."""
    n, c = h.shape
    k = exact_ceil(d, int(dyn.sum()))
    keep = np.zeros_like(h)
    cols = np.flatnonzero(dyn)
    for i in range(n):
        order = sorted(cols, key=lambda j: (-h[i, j], j))
        keep[i, order[:k]] = 1
    return keep


class _WTA(HybridBlock):
    def __init__(self, d):
        super().__init__()
        self.d = d

    def hybrid_forward(self, F, h, dyn):
        return wta_mask(F, h, dyn, self.d)


@pytest.mark.parametrize('d', [1.0, 0.9, 0.5, 0.3, 0.25, 0.7])
def test_wta_keeps_exactly_ceil_d_c_with_ties(d, rng):
    # Values from a small set so many ties occur; zeros as after a ReLU.
    h = rng.randint(0, 4, size=(6, 20)).astype(np.float32) * 0.5
    dyn = (rng.rand(20) > 0.3).astype(np.float32)
    want = numpy_wta(h, dyn, d)
    for hybrid in (False, True):
        blk = _WTA(d)
        if hybrid:
            blk.hybridize()
        got = blk(mx.nd.array(h), mx.nd.array(dyn)).asnumpy()
        np.testing.assert_array_equal(got, want)
        assert (got.sum(axis=1) == exact_ceil(d, int(dyn.sum()))).all()
        assert (got * (1 - dyn)).sum() == 0          # never a non-dynamic channel


def test_wta_all_masks_one_counts_and_large_c(rng):
    for c in (10, 64, 2048):
        h = np.maximum(rng.randn(3, c), 0).astype(np.float32)
        for d in (0.9, 0.5):
            got = wta_mask(mx.nd, mx.nd.array(h), mx.nd.ones(c), d).asnumpy()
            assert (got.sum(axis=1) == exact_ceil(d, c)).all()
            assert wta_keep_count(d, c) == exact_ceil(d, c)
    # all-equal gate values (identity init): the lowest indices win
    got = wta_mask(mx.nd, mx.nd.ones((2, 10)), mx.nd.ones(10), 0.9).asnumpy()
    np.testing.assert_array_equal(got, np.tile([1] * 9 + [0], (2, 1)))


def test_wta_density_as_array_parameter():
    h = mx.nd.array([[3, 1, 2, 5]])
    got = wta_mask(mx.nd, h, mx.nd.ones(4), mx.nd.array([0.5])).asnumpy()
    np.testing.assert_array_equal(got, [[1, 0, 0, 1]])


def test_wta_on_float16_gate_values(rng):
    """A float16 network's gates: float16 h and masks give a float16 0/1 mask keeping the same
    channels (ties included) as the numpy rule, and a wide layer keeps ceil(0.9 * 2048) = 1844
    channels -- float16 arithmetic (0.9 -> 0.89990, 1843 exactly) would keep 1843."""
    h = rng.randint(0, 4, size=(6, 20)).astype(np.float16) * np.float16(0.5)
    dyn = (rng.rand(20) > 0.3).astype(np.float16)
    for d in (0.9, 0.5, 0.3):
        got = wta_mask(mx.nd, mx.nd.array(h, dtype='float16'), mx.nd.array(dyn, dtype='float16'), mx.nd.array([d]))
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got.asnumpy(), numpy_wta(h.astype(np.float32), dyn, d))
    gate = AFSGate(4, 2048, density=0.9)
    gate.initialize()
    gate.cast('float16')
    assert gate.mask_m.data().dtype == np.float16 and gate.wta_density.data().dtype == np.float32
    hw = mx.nd.array(rng.rand(2, 2048), dtype='float16')
    got = wta_mask(mx.nd, hw, gate.mask_m.data() * gate.mask_s.data(), gate.wta_density.data())
    assert got.dtype == np.float16
    assert (got.asnumpy().sum(axis=1) == exact_ceil(0.9, 2048)).all() and exact_ceil(0.9, 2048) == 1844


def exact_round(d, n):
    """Python's round(d * n) with d taken as the decimal it prints as: halves to even."""
    x = fractions.Fraction(repr(float(d))) * n
    return int(round(x))          # Fraction.__round__: exact, halves to even


class _WTARound(HybridBlock):
    def __init__(self, d):
        super().__init__()
        self.d = d

    def hybrid_forward(self, F, h, dyn, d):
        return wta_mask(F, h, dyn, d, 'round')


def test_wta_round_keeps_round_d_c_channels(rng):
    """The reproduction's count k = round(d n) (halves to even: 0.9 * 5 = 4.5 -> 4, 0.7 * 5 = 3.5
    -> 4), on NDArrays and in a hybridized graph with d as a (1,) parameter, against the exact
    rational count; ceil gives more where d n is not an integer."""
    cases = [(0.9, n) for n in (1, 5, 10, 16, 20, 32, 64, 2048)] + [(0.7, 5), (0.5, 5), (0.5, 7), (0.25, 6),
                                                                   (0.3, 20), (0.1, 4)]
    assert exact_round(0.9, 5) == 4 and exact_round(0.7, 5) == 4 and exact_round(0.9, 16) == 14
    for d, n in cases:
        want = exact_round(d, n)
        assert wta_keep_count(d, n, 'round') == want == round(d * n), (d, n)
        h = np.maximum(rng.randn(4, n), 0).astype(np.float32)
        h[:, ::3] = 0.5                                                   # ties too
        for hybrid in (False, True):
            blk = _WTARound(d)
            if hybrid:
                blk.hybridize()
            got = blk(mx.nd.array(h), mx.nd.ones(n), mx.nd.array([d])).asnumpy()
            assert (got.sum(axis=1) == want).all(), (d, n, got.sum(axis=1), want)
            order = [sorted(range(n), key=lambda j: (-h[i, j], j))[:want] for i in range(4)]
            np.testing.assert_array_equal(got, [[1 if j in o else 0 for j in range(n)] for o in order])
    assert wta_keep_count(0.9, 16) == 15 and wta_keep_count(0.9, 16, 'round') == 14
    with pytest.raises(ConfigError, match='rounding must be one of ceil, round'):
        wta_keep_count(0.9, 16, 'floor')
    gate = AFSGate(3, 16, density=0.9, wta_round='round', init='random')
    gate.initialize()
    x = mx.nd.array(rng.uniform(0, 1, (5, 3, 2, 2)))
    kept = (gate(x, mx.nd.ones((5, 16, 2, 2))).asnumpy()[:, :, 0, 0] > 0).sum(axis=1)
    assert (kept <= 14).all() and 'wta_round=round' in repr(gate)


def _relu(x):
    return np.maximum(x, 0)


def test_gate_output_matches_numpy_formula(rng):
    cin, cout, d = 6, 10, 0.5
    gate = AFSGate(cin, cout, density=d, init='random')
    gate.initialize()
    m = (rng.rand(cout) > 0.3).astype(np.float32)
    s = (rng.rand(cout) > 0.4).astype(np.float32)
    gamma = rng.rand(cout).astype(np.float32)
    gate.mask_m.set_data(mx.nd.array(m))
    gate.mask_s.set_data(mx.nd.array(s))
    gate.gamma.set_data(mx.nd.array(gamma))
    x = rng.randn(3, cin, 5, 5).astype(np.float32)
    y = rng.randn(3, cout, 4, 4).astype(np.float32)
    W, b = gate.fc.weight.data().asnumpy(), gate.fc.bias.data().asnumpy()
    h = _relu(x.mean(axis=(2, 3)) @ W.T + b)
    pi = h * numpy_wta(h, m * s, d)
    mult = m * (s * pi + (1 - s) * gamma)
    want = y * mult[:, :, None, None]
    for hybrid in (False, True):
        if hybrid:
            gate.hybridize()
        got = gate(mx.nd.array(x), mx.nd.array(y)).asnumpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert gate.mask_m.grad_req == 'null' and gate.mask_s.grad_req == 'null'
    assert gate.wta_density.grad_req == 'null'


@pytest.mark.parametrize('shape', [(3, 6, 5, 5), (2, 16, 32, 32)])
def test_gate_gradients_match_numpy(rng, shape):
    """Training-mode gradients (the recorded imperative path uses its own GAP and
    channel-scaling backward) against the hand-derived chain rule, all channels dynamic,
    d = 1 (WTA keeps every channel):
    h = relu(a), a = GAP(x) W^T + b, out = y * h; L = sum(out * G):
    dL/dy = G * h, dL/dh = sum_hw G * y, dL/da = dL/dh * [a > 0], dL/dW = dL/da^T GAP(x),
    dL/db = sum_n dL/da, dL/dx = (dL/da W) / (H W) at every position."""
    n, cin, hh, ww = shape
    cout = 8
    gate = AFSGate(cin, cout, density=1.0, init='random')
    gate.initialize()
    x = rng.randn(n, cin, hh, ww).astype(np.float32)
    y = rng.randn(n, cout, 6, 7).astype(np.float32)
    G = rng.randn(n, cout, 6, 7).astype(np.float32)
    W, b = gate.fc.weight.data().asnumpy(), gate.fc.bias.data().asnumpy()
    g = x.astype(np.float64).mean(axis=(2, 3))
    a = g @ W.T + b
    h = _relu(a)
    want_out = y * h[:, :, None, None]
    dh = (G * y).sum(axis=(2, 3))
    da = dh * (a > 0)
    want = dict(y=G * h[:, :, None, None], W=da.T @ g, b=da.sum(axis=0),
                x=np.broadcast_to(((da @ W) / (hh * ww))[:, :, None, None], x.shape))
    for hybrid in (False, True):
        if hybrid:
            gate.hybridize()
        xs, ys = mx.nd.array(x), mx.nd.array(y)
        xs.attach_grad()
        ys.attach_grad()
        with mx.autograd.record():
            out = gate(xs, ys)
        out.backward(mx.nd.array(G))
        np.testing.assert_allclose(out.asnumpy(), want_out, rtol=1e-5, atol=1e-5)
        got = dict(y=ys.grad.asnumpy(), x=xs.grad.asnumpy(), W=gate.fc.weight.grad().asnumpy(),
                   b=gate.fc.bias.grad().asnumpy())
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg='%s (hybrid=%s)' % (k, hybrid))


def _random_v1b(block=BottleneckV1b, classes=10, seed=0):
    mx.random.seed(seed)
    net = ResNetV1b(block, [1, 1, 1, 1], classes=classes, name_prefix='resnetv1b_')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    return _bn_stats(net, np.random.RandomState(seed))


@pytest.mark.parametrize('kw', [dict(gates=False, density=0.9), dict(density=1.0, gate_init='identity')])
def test_identity_equals_gluoncv(kw, rng):
    ref = _random_v1b()
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    want = ref(x).asnumpy()
    assert np.abs(want).max() > 1e-3
    afs = afs_from_gluoncv(ref, **kw)
    np.testing.assert_array_equal(afs(x).asnumpy(), want)
    afs.hybridize(static_alloc=True)
    np.testing.assert_allclose(afs(x).asnumpy(), want, rtol=1e-6, atol=1e-6)


def test_gates_change_output_and_switch_off(rng):
    ref = _random_v1b()
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    afs = afs_from_gluoncv(ref, density=0.5, gate_init='random')
    afs.hybridize()
    on = afs(x).asnumpy()
    assert np.abs(on - ref(x).asnumpy()).max() > 1e-4
    set_gates_enabled(afs, False)
    np.testing.assert_allclose(afs(x).asnumpy(), ref(x).asnumpy(), rtol=1e-5, atol=1e-6)
    set_gates_enabled(afs, True)
    np.testing.assert_allclose(afs(x).asnumpy(), on, rtol=1e-5, atol=1e-6)
    # density is a parameter: changing it needs no graph rebuild
    set_density(afs, 1.0)
    assert np.abs(afs(x).asnumpy() - on).max() > 1e-5


def test_relu_before_add_option(rng):
    ref = _random_v1b()
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    a = afs_from_gluoncv(ref, density=1.0, relu_before_add=True)
    assert np.abs(a(x).asnumpy() - ref(x).asnumpy()).max() > 1e-5    # the reproduction's extra ReLU


def test_load_gluoncv_params_only_gate_keys_missing(tmp_path, rng):
    ref = _random_v1b()
    path = str(tmp_path / 'resnet.params')
    ref.save_parameters(path)
    afs = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, gates=False)
    afs.initialize()
    report = load_gluoncv_params(afs, path)
    assert report['missing'] and all('.gate' in k for k in report['missing'])
    assert not report['unexpected']
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    np.testing.assert_array_equal(afs(x).asnumpy(), ref(x).asnumpy())
    other = AFSResNetV1b(layers=[1, 1, 2, 1], classes=10)
    other.initialize()
    with pytest.raises(CheckpointError, match='layer3.1'):
        load_gluoncv_params(other, path)


def test_masks_travel_with_checkpoints(tmp_path):
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=4)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    name, _, _, gate, _, _ = afs_gates(net)[1]
    m = np.ones(gate.channels, np.float32)
    m[::3] = 0
    gate.mask_m.set_data(mx.nd.array(m))
    path = str(tmp_path / 'afs.params')
    net.save_parameters(path)
    net2 = AFSResNetV1b(layers=[1, 1, 1, 1], classes=4)
    net2.load_parameters(path)
    np.testing.assert_array_equal(afs_gates(net2)[1][3].mask_m.data().asnumpy(), m)
    trainable = [k for k, p in net._collect_params_with_prefix().items() if p.grad_req != 'null']
    assert not any(k.endswith(('mask_m', 'mask_s', 'wta_density')) for k in trainable)


def test_unsupported_networks_raise_config_error():
    from gluoncv.model_zoo.resnet import get_resnet
    v1 = get_resnet(1, 50)
    with pytest.raises(ConfigError, match='ResNetV1'):
        afs_from_gluoncv(v1)
    v2 = gt.get_model('cifar_resnet20_v2', classes=4)
    with pytest.raises(ConfigError, match='CIFARResNetV2'):
        afs_from_gluoncv(v2)
    dilated = ResNetV1b(BasicBlockV1b, [1, 1, 1, 1], classes=4, dilated=True)
    with pytest.raises(ConfigError, match='dilated'):
        afs_from_gluoncv(dilated)
    with pytest.raises(ConfigError, match='density'):
        AFSResNetV1b(layers=[1, 1, 1, 1], density=0)
    with pytest.raises(ConfigError, match="'bottleneck' or 'basic'"):
        AFSResNetV1b(layers=[1, 1, 1, 1], block='bottle')


def test_registered_models_and_taps(rng):
    for name in ('afs_resnet50_v1b', 'afs_resnet101_v1b', 'afs_resnet_v1b'):
        assert name in gt.list_models()
    net = gt.get_model('afs_resnet_v1b', layers=[1, 1, 1, 1], classes=3, features=('stage2', 'stage4'))
    net.initialize()
    logits, feats = net(mx.nd.array(rng.rand(2, 3, 32, 32)))
    assert logits.shape == (2, 3)
    assert [f.shape for f in feats] == [(2, 512, 4, 4), (2, 2048, 1, 1)]
    with pytest.raises(ConfigError, match='stage5'):
        gt.get_model('afs_resnet_v1b', layers=[1, 1, 1, 1], features=('stage5',))


def test_l2_gate_input_against_numpy_and_scale_invariant():
    rng = np.random.RandomState(3)
    gate = AFSGate(6, 5, density=1.0, init='random', input_norm='l2')
    gate.initialize()
    x = rng.uniform(0, 3, (4, 6, 3, 3)).astype(np.float32)
    y = rng.normal(size=(4, 5, 2, 2)).astype(np.float32)
    W = gate.fc.weight.data().asnumpy().astype(np.float64)
    b = gate.fc.bias.data().asnumpy().astype(np.float64)
    g = x.astype(np.float64).mean(axis=(2, 3))
    g = g / (np.sqrt((g ** 2).sum(axis=1, keepdims=True)) + 1e-6)
    h = np.maximum(g @ W.T + b, 0)
    out = gate(mx.nd.array(x), mx.nd.array(y)).asnumpy()
    np.testing.assert_allclose(out, h[:, :, None, None] * y, rtol=1e-5, atol=1e-6)
    # the gate value does not grow with the input scale (the 'none' gate does)
    big = gate(mx.nd.array(1000 * x), mx.nd.array(y)).asnumpy()
    np.testing.assert_allclose(big, out, rtol=1e-4, atol=1e-5)
    raw = AFSGate(6, 5, density=1.0, init='random')
    raw.initialize()
    raw.fc.weight.set_data(gate.fc.weight.data())
    raw.fc.bias.set_data(gate.fc.bias.data())
    assert np.abs(raw(mx.nd.array(1000 * x), mx.nd.array(y)).asnumpy()).max() > 100 * np.abs(out).max()
    with pytest.raises(ConfigError, match="input_norm must be one of none, l2, got 'rms'"):
        AFSGate(6, 5, input_norm='rms')


def test_l2_gate_network_prunes_exactly():
    from gluon_transfer.prune import prune_afs, verify_pruned
    mx.random.seed(1)
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=4, density=0.8, gate_init='random', gate_input_norm='l2')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    rng = np.random.RandomState(0)
    for _, _, _, g, _, _ in afs_gates(net):
        m = (rng.rand(g.channels) < 0.6).astype(np.float32)
        m[0] = 1
        g.mask_m.set_data(mx.nd.array(m))
        g.mask_s.set_data(mx.nd.array((rng.rand(g.channels) < 0.5).astype(np.float32)))
    pruned = prune_afs(net)
    assert pruned._config['gate_input_norm'] == 'l2'
    assert verify_pruned(net, pruned, (2, 3, 32, 32)) < 1e-3


# ---------------------------------------------------------------------- basic blocks
def _bn_stats(net, rng):
    for name, p in net.collect_params().items():      # non-trivial BN statistics
        if name.endswith('running_var'):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith(('running_mean', 'beta')):
            p.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, p.shape)))
    return net


def _random_basic(kind, classes=5, seed=0):
    """A tiny GluonCV basic-block network: CIFAR ResNet-v1 (one block per stage) or ResNet-v1b."""
    from gluoncv.model_zoo.cifarresnet import CIFARResNetV1, CIFARBasicBlockV1
    mx.random.seed(seed)
    if kind == 'cifar':
        net = CIFARResNetV1(CIFARBasicBlockV1, [1, 1, 1], [16, 16, 32, 64], classes=classes)
    else:
        net = ResNetV1b(BasicBlockV1b, [1, 1, 1, 1], classes=classes, name_prefix='resnetv1b_')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    return _bn_stats(net, np.random.RandomState(seed))


@pytest.mark.parametrize('kind', ['cifar', 'v1b'])
def test_basic_block_identity_equals_gluoncv_and_loads_its_params(kind, rng, tmp_path):
    from gluon_transfer.models.afs_resnet import AFSCIFARResNetV1, removable_gates
    ref = _random_basic(kind)
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    want = ref(x).asnumpy()
    afs = afs_from_gluoncv(ref, density=1.0)
    assert isinstance(afs, AFSCIFARResNetV1 if kind == 'cifar' else AFSResNetV1b)
    np.testing.assert_array_equal(afs(x).asnumpy(), want)
    afs.hybridize(static_alloc=True)
    np.testing.assert_allclose(afs(x).asnumpy(), want, rtol=1e-6, atol=1e-6)
    # two gates per block; only the first one's channels are removable (the second feeds the add)
    gates = afs_gates(afs)
    assert len(gates) == 2 * (3 if kind == 'cifar' else 4)
    assert removable_gates(afs) == {name for name, _, k, _, _, _ in gates if k == 1}
    # the plain network's params file loads with only gate keys missing
    path = str(tmp_path / 'plain.params')
    ref.save_parameters(path)
    other = type(afs)(**dict(afs._config))
    other.initialize()
    report = load_gluoncv_params(other, path)
    assert report['missing'] and all('.gate' in k for k in report['missing']) and not report['unexpected']
    set_density(other, 1.0)
    np.testing.assert_array_equal(other(x).asnumpy(), want)


def _np_conv3x3(x, w, stride):
    """(N, C, H, W) * (O, C, 3, 3), padding 1: float64 loops over the 9 kernel offsets."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum('nchw,oc->nohw', patch, w[:, :, i, j])
    return out


def _np_bn(z, bn):
    g, b, mu, var = (bn.params.get(k).data().asnumpy().astype(np.float64)
                     for k in ('gamma', 'beta', 'running_mean', 'running_var'))
    r = lambda v: v[None, :, None, None]                                         # noqa: E731
    return r(g) * (z - r(mu)) / np.sqrt(r(var) + 1e-5) + r(b)


def _np_gate(x_in, y, gate):
    """gate(x, y) of gluon_transfer.nn.gates as numpy (raw GAP input, WTA count ceil(d n - 1e-3))."""
    W = gate.fc.weight.data().asnumpy().astype(np.float64)
    b = gate.fc.bias.data().asnumpy().astype(np.float64)
    m, s = gate.mask_m.data().asnumpy(), gate.mask_s.data().asnumpy()
    gamma = gate.gamma.data().asnumpy().astype(np.float64)
    h = np.maximum(x_in.mean(axis=(2, 3)) @ W.T + b, 0)
    pi = h * numpy_wta(h, m * s, gate.density)
    mult = m * (s * pi + (1 - s) * gamma)
    return mult[:, :, None, None] * y


def test_cifar_basic_block_forward_against_numpy(rng):
    """out = relu(shortcut(x) + gate2(o1, BN2(conv2(o1)))), o1 = relu(gate1(x, BN1(conv1(x)))),
    the shortcut a strided 1x1 conv + BN; every piece computed in numpy."""
    from gluon_transfer.models.afs_resnet import AFSCIFARBasicBlockV1
    mx.random.seed(4)
    block = AFSCIFARBasicBlockV1(6, 2, downsample=True, in_channels=4, density=0.6, gate_init='random')
    block.initialize(mx.init.Xavier())
    x = rng.uniform(-1, 1, (3, 4, 6, 6))
    block(mx.nd.array(x))
    _bn_stats(block, rng)
    for k in (1, 2):
        g = block.gate(k)
        g.mask_m.set_data(mx.nd.array([1, 1, 0, 1, 1, 1]))
        g.mask_s.set_data(mx.nd.array([1, 0, 1, 1, 1, 0]))
    got = block(mx.nd.array(x)).asnumpy()
    w = lambda blk: blk.weight.data().asnumpy().astype(np.float64)               # noqa: E731
    y1 = _np_bn(_np_conv3x3(x, w(block.body[0]), 2), block.body[1])
    o1 = np.maximum(_np_gate(x, y1, block.gate1), 0)
    y2 = _np_bn(_np_conv3x3(o1, w(block.body[3]), 1), block.body[4])
    o2 = _np_gate(o1, y2, block.gate2)
    short = _np_bn(np.einsum('nchw,oc->nohw', x[:, :, ::2, ::2], w(block.downsample[0])[:, :, 0, 0]),
                   block.downsample[1])
    want = np.maximum(short + o2, 0)
    assert np.abs(o2).max() > 1e-2 and np.abs(o2[:, 2]).max() == 0              # m = 0: channel 2 off
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_registered_basic_block_models_and_taps(rng):
    for name in ('afs_resnet18_v1b', 'afs_resnet34_v1b', 'afs_cifar_resnet_v1', 'afs_cifar_resnet20_v1',
                 'afs_cifar_resnet56_v1', 'afs_cifar_resnet110_v1'):
        assert name in gt.list_models()
    net = gt.get_model('afs_cifar_resnet20_v1', classes=5, features=('stage1', 'stage3'))
    net.initialize()
    logits, feats = net(mx.nd.array(rng.rand(2, 3, 32, 32)))
    assert logits.shape == (2, 5) and [f.shape for f in feats] == [(2, 16, 32, 32), (2, 64, 8, 8)]
    assert len(afs_gates(net)) == 18
    net = gt.get_model('afs_resnet18_v1b', classes=3)
    assert net.block == 'basic' and len(afs_gates(net)) == 16
    with pytest.raises(ConfigError, match='stage4'):
        gt.get_model('afs_cifar_resnet20_v1', features=('stage4',))
