"""Fusion blocks against an independent numpy computation (open-aff model/fusion.py math)."""
import contextlib

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd

from gluon_transfer.errors import ConfigError
from gluon_transfer.nn import fused
from gluon_transfer.nn.fusion import AFF, MSCAM, DirectAdd, create_fusion, iAFF, neutral_gate_init
from gluon_transfer.registry import FUSIONS

EPS = 1e-5
N, C, R, H, W = 4, 16, 4, 5, 6


# ---- numpy reference -------------------------------------------------------------------

def np_conv1x1(z, w, b):
    return np.einsum('nchw,oc->nohw', z, w[:, :, 0, 0]) + b[None, :, None, None]


def np_bn(z, p, train):
    if train:  # batch statistics, biased variance
        mean, var = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3))
    else:
        mean, var = p['running_mean'], p['running_var']
    shape = (1, -1, 1, 1)
    return (p['gamma'].reshape(shape) * (z - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS)
            + p['beta'].reshape(shape))


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_mscam(z, P, local, glob, train):
    """sigmoid(L(z) + G(z)); P maps structural keys to float64 arrays."""
    def bn(key):
        return {k: P['%s.%s' % (key, k)] for k in ('gamma', 'beta', 'running_mean', 'running_var')}
    l_ = np_conv1x1(z, P[local + '.0.weight'], P[local + '.0.bias'])
    l_ = np.maximum(np_bn(l_, bn(local + '.1'), train), 0)
    l_ = np_bn(np_conv1x1(l_, P[local + '.3.weight'], P[local + '.3.bias']), bn(local + '.4'), train)
    g = z.mean(axis=(2, 3), keepdims=True)
    g = np_conv1x1(g, P[glob + '.1.weight'], P[glob + '.1.bias'])
    g = np.maximum(np_bn(g, bn(glob + '.2'), train), 0)
    g = np_bn(np_conv1x1(g, P[glob + '.4.weight'], P[glob + '.4.bias']), bn(glob + '.5'), train)
    return np_sigmoid(l_ + g)


def np_aff(x, y, P, train):
    w = np_mscam(x + y, P, 'local_att', 'global_att', train)
    return 2 * x * w + 2 * y * (1 - w)


def np_iaff(x, y, P, train):
    w1 = np_mscam(x + y, P, 'local_att', 'global_att', train)
    xi = x * w1 + y * (1 - w1)
    w2 = np_mscam(xi, P, 'local_att2', 'global_att2', train)
    return x * w2 + y * (1 - w2)


# ---- helpers --------------------------------------------------------------------------

def randomize(block, seed=0):
    """Random values for every array (positive running_var); returns float64 copies by key."""
    rng = np.random.RandomState(seed)
    block.initialize()
    P = {}
    for key, param in block._collect_params_with_prefix().items():
        if key.endswith('running_var'):
            val = rng.uniform(0.5, 2.0, size=param.shape)
        elif key.endswith('gamma'):
            val = rng.uniform(0.5, 1.5, size=param.shape)
        else:
            val = rng.normal(0, 0.5, size=param.shape)
        param.set_data(mx.nd.array(val))
        P[key] = param.data().asnumpy().astype(np.float64)
    return P


def inputs(seed=1):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(N, C, H, W)).astype(np.float32), rng.normal(size=(N, C, H, W)).astype(np.float32)


def run(block, args, train):
    nd = [mx.nd.array(a) for a in args]
    if train:
        with autograd.record(train_mode=True):
            out = block(*nd)
    else:
        out = block(*nd)
    return out.asnumpy()


# ---- tests ----------------------------------------------------------------------------

@pytest.mark.parametrize('kernel', [True, False], ids=['fused-kernel', 'composition'])
@pytest.mark.parametrize('hybrid', [False, True])
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('kind', ['aff', 'iaff', 'mscam'])
def test_block_matches_numpy(kind, train, hybrid, kernel):
    """Both formulations (nn/fused.py kernel where it loads, operator composition) = numpy."""
    if kernel and not fused.load_kernel():
        pytest.skip('fused AFF kernel unavailable: %s' % fused._state['error'])
    block = {'aff': AFF, 'iaff': iAFF, 'mscam': MSCAM}[kind](C, R)
    P = randomize(block)
    if hybrid:
        block.hybridize(static_alloc=True, static_shape=True)
    x, y = inputs()
    with contextlib.nullcontext() if kernel else fused.disabled():
        _check_block(block, kind, P, x, y, train)


def _check_block(block, kind, P, x, y, train):
    if kind == 'mscam':
        got = run(block, [x], train)
        want = np_mscam(x.astype(np.float64), P, 'local_att', 'global_att', train)
    else:
        got = run(block, [x, y], train)
        ref = np_aff if kind == 'aff' else np_iaff
        want = ref(x.astype(np.float64), y.astype(np.float64), P, train)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_train_mode_updates_running_stats_like_gluon_bn():
    # momentum 0.9: running_mean = 0.9 * running_mean + 0.1 * batch mean (MXNet on CPU applies the
    # update during backward, so a training step is run).
    block = AFF(C, R)
    P = randomize(block)
    x, y = inputs()
    with autograd.record(train_mode=True):
        out = block(mx.nd.array(x), mx.nd.array(y))
    out.backward()
    z = (x + y).astype(np.float64)
    pre = np_conv1x1(z, P['local_att.0.weight'], P['local_att.0.bias'])
    want = 0.9 * P['local_att.1.running_mean'] + 0.1 * pre.mean(axis=(0, 2, 3))
    got = block.local_att[1].running_mean.data().asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_direct_add_and_factor_two():
    x, y = inputs()
    add = DirectAdd()
    np.testing.assert_allclose(run(add, [x, y], False), x + y, rtol=1e-6)
    # AFF with all-zero attention logits (w = 0.5 everywhere) reduces to x + y: the factor 2.
    block = AFF(C, R)
    block.initialize()
    for key, param in block._collect_params_with_prefix().items():
        if key.endswith(('4.gamma', '4.beta', '5.gamma', '5.beta')):
            param.set_data(mx.nd.zeros(param.shape))
    np.testing.assert_allclose(run(block, [x, y], False), x + y, rtol=1e-5, atol=1e-6)
    # iAFF under the same condition gives (x + y) / 2: no factor 2 (as the reference code).
    block = iAFF(C, R)
    block.initialize()
    for key, param in block._collect_params_with_prefix().items():
        if key.endswith(('4.gamma', '4.beta', '5.gamma', '5.beta')):
            param.set_data(mx.nd.zeros(param.shape))
    np.testing.assert_allclose(run(block, [x, y], False), (x + y) / 2, rtol=1e-5, atol=1e-6)


def test_fusion_keys_and_shapes():
    def branch_keys(name, c, ci, glob):
        o = 1 if glob else 0
        keys = {'%s.%d.weight' % (name, o): (ci, c, 1, 1), '%s.%d.bias' % (name, o): (ci,),
                '%s.%d.weight' % (name, o + 3): (c, ci, 1, 1), '%s.%d.bias' % (name, o + 3): (c,)}
        for idx, ch in ((o + 1, ci), (o + 4, c)):
            for s in ('gamma', 'beta', 'running_mean', 'running_var'):
                keys['%s.%d.%s' % (name, idx, s)] = (ch,)
        return keys
    c, r = 64, 16
    aff = dict(branch_keys('local_att', c, c // r, False), **branch_keys('global_att', c, c // r, True))
    iaff = dict(aff, **branch_keys('local_att2', c, c // r, False), **branch_keys('global_att2', c, c // r, True))
    for name, want in (('aff', aff), ('iaff', iaff), ('add', {})):
        got = {k: p.shape for k, p in create_fusion(name, c, r)._collect_params_with_prefix().items()}
        assert got == want, name
    assert len(aff) == 24 and len(iaff) == 48


def test_names_aliases_and_errors():
    assert type(create_fusion('ASKCFuse', 8, 4)) is AFF
    assert type(create_fusion('ResGlobLocaforGlobLocaCha', 8, 4)) is iAFF
    assert type(create_fusion('DirectAdd', 8, 4)) is DirectAdd
    assert {'add', 'aff', 'iaff', 'ASKCFuse', 'DirectAdd', 'ResGlobLocaforGlobLocaCha'} <= set(FUSIONS.names())
    with pytest.raises(ConfigError, match="unknown fusion 'aff2'.*aff"):
        create_fusion('aff2', 8, 4)
    with pytest.raises(ConfigError, match='leaves no channels'):
        create_fusion('aff', 8, 16)
    # int(C // r) inter channels, as the reference (C=24, r=16 -> 1)
    assert create_fusion('aff', 24, 16).local_att[0].weight.shape == (1, 24, 1, 1)


# ---- --aff-init neutral ---------------------------------------------------------------------

@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('kind', ['aff', 'iaff'])
def test_neutral_init_starts_every_weight_at_one_half(kind, train):
    """Zero gamma in the last BN of each branch: w = sigmoid(0) = 0.5, so AFF = x + y and
    iAFF = (x + y) / 2 (numpy), in training and inference mode, kernel or composition."""
    block = (AFF if kind == 'aff' else iAFF)(C, R)
    assert neutral_gate_init(block) == (2 if kind == 'aff' else 4)
    block.initialize(mx.init.Xavier())
    x, y = inputs()
    for w in block.attention_weights(mx.nd.array(x), mx.nd.array(y)):
        np.testing.assert_array_equal(w.asnumpy(), 0.5)
    for ctx in (contextlib.nullcontext(), fused.disabled()):
        with ctx:
            got = run(block, [x, y], train)
        np.testing.assert_allclose(got, (x + y) * (1.0 if kind == 'aff' else 0.5), rtol=1e-6, atol=1e-6)
    gammas = {k: p.data().asnumpy() for k, p in block._collect_params_with_prefix().items() if k.endswith('gamma')}
    zero = {k for k, v in gammas.items() if not v.any()}
    want = {'local_att.4.gamma', 'global_att.5.gamma'}
    if kind == 'iaff':
        want |= {'local_att2.4.gamma', 'global_att2.5.gamma'}
    assert zero == want and all((v == 1).all() for k, v in gammas.items() if k not in want)


def test_neutral_init_aff_network_equals_the_plain_add_network():
    """A whole CIFAR AFF ResNet with --aff-init neutral computes what the same network with
    plain adds computes (shared weights), and its gammas still train."""
    from gluon_transfer import get_model
    aff = get_model('cifar_aff_resnet', fusion='aff', blocks=1, channel_times=1, classes=3)
    neutral_gate_init(aff)
    aff.initialize(mx.init.Xavier())
    add = get_model('cifar_aff_resnet', fusion='add', blocks=1, channel_times=1, classes=3)
    add.initialize()
    src = aff._collect_params_with_prefix()
    for k, p in add._collect_params_with_prefix().items():
        p.set_data(src[k].data())
    x = mx.nd.array(np.random.RandomState(2).normal(size=(4, 3, 8, 8)).astype(np.float32))
    np.testing.assert_allclose(aff(x).asnumpy(), add(x).asnumpy(), rtol=1e-5, atol=1e-5)   # inference
    with autograd.record():
        out = aff(x)
        loss = out.sum()
        ref = add(x)
    loss.backward()
    np.testing.assert_allclose(out.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-5)            # training
    g = aff._collect_params_with_prefix()['features.2.0.attention.local_att.4.gamma'].grad().asnumpy()
    assert np.abs(g).max() > 0


def test_neutral_init_without_fusion_blocks_is_an_error():
    with pytest.raises(ConfigError, match='no AFF or iAFF fusion block'):
        neutral_gate_init(DirectAdd())


def test_aff_init_option_of_the_trainers():
    """train_cifar/train_imagenet --aff-init neutral zeroes the 4 gammas of every iAFF block
    (3 stages x 1 block here); other networks are refused; train_transfer has no such option
    (a fine-tuned network starts from its source's weights)."""
    import logging
    from gluon_transfer import cli
    log = logging.getLogger('test')
    args = cli.build_parser('cifar', 'x').parse_args(['--model', 'cifar_aff_resnet', '--fusion', 'iaff', '--blocks',
                                                      '1', '--channel-times', '1', '--aff-init', 'neutral'])
    net = cli.build_network(args, 10, [mx.cpu()], log)
    zero = [k for k, p in net._collect_params_with_prefix().items() if k.endswith('gamma') and not p.data().asnumpy().any()]
    assert len(zero) == 12 and all('.attention.' in k for k in zero)
    assert cli.build_parser('imagenet', 'x').parse_args(['--aff-init', 'neutral']).aff_init == 'neutral'
    plain = cli.build_parser('cifar', 'x').parse_args(['--model', 'cifar_resnet20_v1', '--aff-init', 'neutral'])
    with pytest.raises(ConfigError, match='--aff-init neutral: the network has no AFF or iAFF fusion block'):
        cli.build_network(plain, 10, [mx.cpu()], log)
    with pytest.raises(SystemExit):
        cli.build_parser('transfer', 'x').parse_args(['--aff-init', 'neutral'])
