"""L2-SP: the penalty against numpy, which tensors each variant regularises, the w0
snapshot (taken from the source, never moving) and the engine-units gradient."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd

from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.tasks import Transfer
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import ConfigError
from gluon_transfer.methods.base import build_target
from gluon_transfer.losses import l2sp_penalty, L2SP
from gluon_transfer.param_groups import plan
from gluon_transfer.registry import REGULARIZERS
from gluon_transfer.zoo import get_model


def test_l2sp_penalty_matches_numpy(rng):
    shared = [rng.randn(3, 4).astype(np.float32), rng.randn(5).astype(np.float32)]
    ref = [rng.randn(3, 4).astype(np.float32), rng.randn(5).astype(np.float32)]
    new = [rng.randn(2, 6).astype(np.float32), rng.randn(2).astype(np.float32)]
    alpha, beta = 0.1, 0.01
    expect = alpha * sum(0.5 * ((w - w0).astype(np.float64) ** 2).sum() for w, w0 in zip(shared, ref)) \
        + beta * sum(0.5 * (w.astype(np.float64) ** 2).sum() for w in new)
    got = l2sp_penalty([mx.nd.array(a) for a in shared], [mx.nd.array(a) for a in ref],
                       [mx.nd.array(a) for a in new], alpha=alpha, beta=beta)
    assert got.shape == (1,)
    assert float(got.asscalar()) == pytest.approx(expect, rel=1e-5)
    # hand-derived: one shared scalar 3 vs 1, one new scalar 2 -> 0.1*0.5*4 + 0.01*0.5*4
    tiny = l2sp_penalty([mx.nd.array([3.0])], [mx.nd.array([1.0])], [mx.nd.array([2.0])])
    assert float(tiny.asscalar()) == pytest.approx(0.2 + 0.02)


def test_l2sp_penalty_rejects_mismatched_lists():
    with pytest.raises(ConfigError, match='2 shared arrays but 1 reference'):
        l2sp_penalty([mx.nd.ones(2), mx.nd.ones(2)], [mx.nd.ones(2)], [])
    with pytest.raises(ConfigError, match='shape'):
        l2sp_penalty([mx.nd.ones(2)], [mx.nd.ones(3)], [])


def _rows(variant='official', num_low=None, new_layers=1, **kw):
    net = get_model('resnet18_v1b', classes=3)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    reg = L2SP(variant=variant, **kw)
    return reg, plan(net, num_low=num_low, new_layers=new_layers, rates=reg.param_rates)


def test_official_variant_regularises_kernels_only():
    reg, rows = _rows('official')
    by = {r.key: r for r in rows}
    assert (by['layer1.0.conv1.weight'].rate, by['layer1.0.conv1.weight'].anchor) == (0.1, 'w0')
    assert (by['conv1.weight'].rate, by['conv1.weight'].anchor) == (0.1, 'w0')
    assert (by['fc.weight'].rate, by['fc.weight'].anchor) == (0.01, '0')     # new head: beta term only
    for key in ('fc.bias', 'bn1.gamma', 'bn1.beta', 'bn1.running_mean', 'layer1.0.bn1.gamma'):
        assert by[key].rate == 0 and by[key].anchor is None, key


def test_all_variant_includes_bn_and_head_bias_not_running_stats():
    reg, rows = _rows('all')
    by = {r.key: r for r in rows}
    assert reg.alpha == 0.01 and reg.beta == 0.01
    assert (by['bn1.gamma'].rate, by['bn1.gamma'].anchor) == (0.01, 'w0')
    assert (by['fc.bias'].rate, by['fc.bias'].anchor) == (0.01, '0')
    assert by['bn1.running_var'].rate == 0
    # the head gets only the beta term: nothing of the head is anchored at w0
    assert all(r.anchor == '0' for r in rows if r.section == 'head')


def test_nonbinary_and_groups_variants_follow_the_layer_groups():
    reg, rows = _rows('nonbinary', num_low=2, new_layers=2)
    by = {r.key: r for r in rows}
    assert (by['conv1.weight'].rate, by['conv1.weight'].anchor) == (0.004, 'w0')            # group 0 < k
    assert (by['layer1.0.conv1.weight'].rate, by['layer1.0.conv1.weight'].anchor) == (0.004, 'w0')  # group 1 < k
    assert (by['layer1.1.conv1.weight'].rate, by['layer1.1.conv1.weight'].anchor) == (0.0005, '0')  # upper
    assert by['layer1.0.bn1.gamma'].rate == 0                                               # BN skipped
    assert by['layer4.1.conv2.weight'].new and by['layer4.1.conv2.weight'].anchor == '0'
    reg, rows = _rows('groups', num_low=2, new_layers=2, rates=(0.5, 0.2, 0.1))
    by = {r.key: r for r in rows}
    assert (by['conv1.weight'].rate, by['conv1.weight'].anchor) == (0.1, 'w0')
    assert (by['layer2.0.conv1.weight'].rate, by['layer2.0.conv1.weight'].anchor) == (0.2, 'w0')
    assert (by['layer4.1.conv1.weight'].rate, by['layer4.1.conv1.weight'].anchor) == (0.5, '0')  # re-initialised
    assert (by['fc.weight'].rate, by['fc.weight'].anchor) == (0.5, '0')
    with pytest.raises(ConfigError, match='l2sp-rates'):
        L2SP(variant='groups')
    with pytest.raises(ConfigError, match='unknown --l2sp-variant'):
        L2SP(variant='nope')


def test_registered_by_name():
    assert {'l2', 'l2sp', 'delta', 'fea_map'} <= set(REGULARIZERS.names())
    assert REGULARIZERS.get('l2sp') is L2SP


def _source_and_target(classes=3, seed=0):
    mx.random.seed(seed)
    src = get_model('resnet18_v1b', classes=7)
    src.initialize(mx.init.Xavier())
    src(mx.nd.zeros((1, 3, 16, 16)))
    net = build_target('resnet18_v1b', classes, [mx.cpu()], src, mx.init.Xavier(), seed=seed)
    # Let every queued initialisation finish before a test reads the source with asnumpy(): under
    # load, MXNet 1.9's threaded engine was seen to return a large source array's value from
    # before its deferred initialisation completed (3 of 30 fresh processes), while the target's
    # copy and the L2-SP snapshot both held the final value (0 of 30 with NaiveEngine).
    mx.nd.waitall()
    return src, net


def _data(n=8, bs=4):
    rng = np.random.RandomState(2)
    return ArrayIter(rng.randint(0, 256, (n, 3, 16, 16)).astype(np.uint8), rng.randint(0, 3, n), bs,
                     mean=(120,) * 3, std=(60,) * 3, last_batch='rollover')


def test_snapshot_is_the_source_and_never_moves():
    src, net = _source_and_target()
    src_vals = {k: p.data().asnumpy().copy() for k, p in src._collect_params_with_prefix().items()}
    reg = L2SP(variant='all')
    reg.bind(plan(net, rates=reg.param_rates))
    task = Transfer([reg], source_weights={k: p.data() for k, p in src._collect_params_with_prefix().items()})
    cfg = FitConfig(num_epochs=2, lr=0.5, momentum=0.9, wd=0.0, optimizer='sgd', lr_mode='constant', mode='hybrid')
    eng = Engine(net, task, [mx.cpu()], cfg, _data(), num_classes=3)
    eng.fit()
    # even if the source arrays change afterwards, the snapshot does not (it is a private copy)
    for p in src.collect_params().values():
        p.set_data(p.data() * 0 + 7)
    snap = reg.snapshot()
    cur = net._collect_params_with_prefix()
    assert set(snap) == {r for r, (_, a) in reg.table.items() if a == 'w0'}
    moved = 0
    for key, w0 in snap.items():
        np.testing.assert_array_equal(w0.asnumpy(), src_vals[key], err_msg=key)
        moved += np.abs(cur[key].data().asnumpy() - src_vals[key]).max() > 1e-6
    assert moved > 10           # training did move the weights away from w0


def test_l2sp_gradient_in_engine_units():
    """One plain SGD step of the engine (batch 4 over one device) equals
    w - lr * (grad mean CE + alpha (w - w0)) for an inherited kernel and
    w - lr * (grad mean CE + beta w) for the classifier weight."""
    src, net = _source_and_target()
    # move the target away from w0 so that the L2-SP gradient is not zero
    rng = np.random.RandomState(5)
    for k, p in net._collect_params_with_prefix().items():
        if p.grad_req != 'null':
            p.set_data(p.data() + mx.nd.array(0.05 * rng.randn(*p.shape)))
    start = {k: p.data().asnumpy().copy() for k, p in net._collect_params_with_prefix().items()}
    # reference gradient of mean CE alone, on an identical copy
    ref = get_model('resnet18_v1b', classes=3)
    ref.initialize()
    ref(mx.nd.zeros((1, 3, 16, 16)))
    for k, p in ref._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(start[k]))
    batch = next(iter(_data(4, 4)))
    with autograd.record():
        z = ref(batch.data)
        ce = -mx.nd.pick(mx.nd.log_softmax(z), batch.label).mean()
    ce.backward()
    g_ce = {k: p.grad().asnumpy() for k, p in ref._collect_params_with_prefix().items() if p.grad_req != 'null'}
    alpha, beta, lr = 0.1, 0.01, 0.1
    reg = L2SP(variant='official', alpha=alpha, beta=beta)
    reg.bind(plan(net, rates=reg.param_rates))
    w0 = {k: p.data().asnumpy() for k, p in src._collect_params_with_prefix().items()}
    task = Transfer([reg], source_weights={k: p.data() for k, p in src._collect_params_with_prefix().items()})
    cfg = FitConfig(num_epochs=1, lr=lr, momentum=0.0, wd=0.0, optimizer='sgd', lr_mode='constant', mode='hybrid')
    Engine(net, task, [mx.cpu()], cfg, _data(4, 4), num_classes=3).fit()
    got = {k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()}
    k = 'layer2.0.conv1.weight'
    np.testing.assert_allclose(got[k], start[k] - lr * (g_ce[k] + alpha * (start[k] - w0[k])), rtol=1e-4, atol=1e-6)
    k = 'fc.weight'
    np.testing.assert_allclose(got[k], start[k] - lr * (g_ce[k] + beta * start[k]), rtol=1e-4, atol=1e-6)
    k = 'layer2.0.bn1.gamma'     # not regularised in the official variant
    np.testing.assert_allclose(got[k], start[k] - lr * g_ce[k], rtol=1e-4, atol=1e-6)
