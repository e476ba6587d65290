"""DELTA, the feature-map distance and the feature taps: numpy references, the channel-
weight formula and files, tap values and gradients, engine-unit gradients, importances."""
import json

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd

from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.tasks import Transfer, ten_crops
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import ConfigError, DataError
from gluon_transfer.methods.base import build_target
from gluon_transfer.losses import (delta_channel_weights, delta_penalty, feature_map_penalty, bottleneck_taps,
                                   stage_end_taps, DELTA)
from gluon_transfer.losses.delta import load_channel_weights, filter_importance
from gluon_transfer.param_groups import plan
from gluon_transfer.zoo import get_model


def test_channel_weights_formula(rng):
    r = rng.randn(7) * 1e-4
    z = (r - r.mean()) / np.sqrt(((r - r.mean()) ** 2).mean())      # population std
    e = np.exp(z / 5)
    np.testing.assert_allclose(delta_channel_weights(r), e / e.sum(), rtol=1e-6)
    nd = delta_channel_weights(mx.nd.array(r))
    assert isinstance(nd, mx.nd.NDArray)
    np.testing.assert_allclose(nd.asnumpy(), e / e.sum(), rtol=1e-6)
    # hand-derived: r = [0, 1] -> z = [-1, 1] -> softmax([-0.2, 0.2])
    w = delta_channel_weights([0.0, 1.0])
    np.testing.assert_allclose(w, [1 / (1 + np.exp(0.4)), np.exp(0.4) / (1 + np.exp(0.4))], rtol=1e-6)
    np.testing.assert_allclose(delta_channel_weights([3.0, 3.0, 3.0]), [1 / 3.0] * 3, rtol=1e-6)  # std 0
    assert len(delta_channel_weights([[1.0, 2.0], [0.0, 1.0, 5.0]])) == 2


def _maps(rng, shapes):
    return ([rng.randn(*s).astype(np.float32) for s in shapes], [rng.randn(*s).astype(np.float32) for s in shapes])


def test_delta_penalty_matches_numpy(rng):
    shapes = [(2, 3, 4, 4), (2, 5, 2, 3)]
    src, tgt = _maps(rng, shapes)
    weights = [rng.dirichlet(np.ones(s[1])).astype(np.float32) for s in shapes]
    expect = 0.0
    for s, t, w in zip(src, tgt, weights):
        n, c, h, wd = s.shape
        for i in range(n):
            for ch in range(c):
                expect += 0.5 * c * w[ch] * ((t[i, ch] - s[i, ch]).astype(np.float64) ** 2).sum() / (h * wd)
    got = delta_penalty([mx.nd.array(a) for a in src], [mx.nd.array(a) for a in tgt], weights)
    assert got.shape == (1,)
    assert float(got.asscalar()) == pytest.approx(expect, rel=1e-5)
    # uniform weights: C * (1/C) = 1, so Omega = 0.5 * sum ||t - s||^2 / (H W)
    uni = delta_penalty([mx.nd.array(src[0])], [mx.nd.array(tgt[0])], [np.full(3, 1 / 3.0)])
    assert float(uni.asscalar()) == pytest.approx(0.5 * ((tgt[0] - src[0]) ** 2).sum() / 16, rel=1e-5)


def test_feature_map_penalty_matches_numpy(rng):
    src, tgt = _maps(rng, [(2, 3, 4, 4), (2, 2, 1, 1)])
    expect = sum(0.5 * ((t - s).astype(np.float64) ** 2).sum() for s, t in zip(src, tgt))
    got = feature_map_penalty([mx.nd.array(a) for a in src], [mx.nd.array(a) for a in tgt])
    assert float(got.asscalar()) == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ConfigError, match='source map'):
        feature_map_penalty([mx.nd.ones((1, 2, 2, 2))], [mx.nd.ones((1, 3, 2, 2))])


def test_channel_weight_files(tmp_path):
    ref = tmp_path / 'channel_wei.dogs.json'
    ref.write_text(json.dumps([[0.1, 0.2], [0.3, 0.1, 0.0]]))        # the reference's shipped format
    raw = load_channel_weights(str(ref), [2, 3])
    np.testing.assert_allclose(raw[1], [0.3, 0.1, 0.0])
    ours = tmp_path / 'ours.json'
    ours.write_text(json.dumps({'raw_importance': [[1.0, 2.0]], 'taps': ['layer1.1.conv2']}))
    assert len(load_channel_weights(str(ours), [2])) == 1
    with pytest.raises(DataError, match='2 importances but the tap has 4 channels'):
        load_channel_weights(str(ref), [4, 3])
    with pytest.raises(DataError, match='2 layers of importances but 4 feature taps'):
        load_channel_weights(str(ref), [2, 3, 4, 5])
    with pytest.raises(DataError, match='not found'):
        DELTA(batch_size=4, channel_weights=str(tmp_path / 'missing.json'))
    reg = DELTA(batch_size=4, channel_weights=str(ref))
    reg.set_channels([2, 3])
    np.testing.assert_allclose(reg.weights[0], delta_channel_weights(np.array([0.1, 0.2])), rtol=1e-6)


def test_stage_end_taps_from_structure():
    assert stage_end_taps(get_model('resnet50_v1b')) == ['layer1.2.conv3', 'layer2.3.conv3', 'layer3.5.conv3',
                                                        'layer4.2.conv3']
    assert stage_end_taps(get_model('resnet101_v1b'))[2] == 'layer3.22.conv3'
    assert stage_end_taps(get_model('resnet18_v1b')) == ['layer1.1.conv2', 'layer2.1.conv2', 'layer3.1.conv2',
                                                        'layer4.1.conv2']
    with pytest.raises(ConfigError, match='--taps'):
        stage_end_taps(get_model('mobilenetv2_0.25'))


@pytest.mark.parametrize('model, blocks, last', [('cifar_resnet20_v1', 3, 'body.3'), ('cifar_resnet56_v1', 9, 'body.3'),
                                                  ('cifar_resnet20_v2', 3, 'conv2')])
def test_stage_end_taps_of_cifar_resnets(model, blocks, last):
    """GluonCV CIFAR ResNets: the stages are features.2/3/4 (prefix stage1_..stage3_); the
    tap is the last block's second 3x3 conv, 16/32/64 channels at strides 1/2/4 of 32 px."""
    from gluon_transfer.losses.afa import check_taps
    from gluon_transfer.losses.taps import check_tap_shapes
    net = get_model(model, classes=5)
    net.initialize()
    taps = stage_end_taps(net)
    assert taps == ['features.%d.%d.%s' % (k, blocks - 1, last) for k in (2, 3, 4)]
    assert check_tap_shapes(net, taps, 32, (16, 32, 64), (1, 2, 4)) == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert check_taps(net, taps, 32) == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert bottleneck_taps(net).channels == [16, 32, 64]


def test_cifar_resnet_taps_are_the_pre_bn_conv_outputs(rng):
    """The three taps of cifar_resnet20_v1 against a forward pass written out block by block
    (conv/BN stem without ReLU, as GluonCV builds it; body = conv-BN-ReLU-conv-BN; residual
    add then ReLU): the tap is the second conv's output before its BN and the add."""
    mx.random.seed(0)
    net = get_model('cifar_resnet20_v1', classes=5)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    x = mx.nd.array(rng.randn(2, 3, 32, 32))
    logits, *maps = bottleneck_taps(net)(x)
    f = net.features
    h = f[1](f[0](x))
    expect = []
    for stage in (f[2], f[3], f[4]):
        for k, block in enumerate(stage):
            body = block.body
            pre = body[3](body[2](body[1](body[0](h))))
            res = block.downsample(h) if block.downsample is not None else h
            h = mx.nd.relu(body[4](pre) + res)
        expect.append(pre)
    for got, want in zip(maps, expect):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.asnumpy(), net.output(f[5](h)).asnumpy(), rtol=1e-4, atol=1e-5)


def _net(classes=3, seed=0):
    mx.random.seed(seed)
    net = get_model('resnet18_v1b', classes=classes)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 16, 16)))
    return net


def test_taps_are_the_pre_bn_conv_outputs_and_share_parameters(rng):
    net = _net()
    taps = bottleneck_taps(net, ['layer1.1.conv2', 'layer4.1.conv2'])
    assert taps.channels == [64, 512]
    for k, p in net.collect_params().items():
        assert taps.collect_params()[k] is p                     # the very same Parameter objects
    x = mx.nd.array(rng.randn(2, 3, 16, 16))
    logits, t1, t4 = taps(x)
    # independent forward through the blocks
    h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    h = net.layer1[0](h)
    b = net.layer1[1]
    expect1 = b.conv2(b.relu1(b.bn1(b.conv1(h))))
    np.testing.assert_allclose(t1.asnumpy(), expect1.asnumpy(), rtol=1e-5, atol=1e-5)
    h = net.layer3(net.layer2(b(h)))
    h = net.layer4[0](h)
    b = net.layer4[1]
    np.testing.assert_allclose(t4.asnumpy(), b.conv2(b.relu1(b.bn1(b.conv1(h)))).asnumpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    # gradients of a tap reach the network's own parameters
    with autograd.record():
        _, t1, _ = taps(x)
        loss = (t1 ** 2).sum()
    loss.backward()
    assert float(net.layer1[1].conv2.weight.grad().abs().sum().asscalar()) > 0
    assert float(net.layer1[0].conv1.weight.grad().abs().sum().asscalar()) > 0
    with pytest.raises(ConfigError, match="unknown feature tap 'layer1.1.conv3'.*layer1.1.conv2"):
        bottleneck_taps(net, ['layer1.1.conv3'])


def _data(n=4, bs=4, seed=2):
    rng = np.random.RandomState(seed)
    return ArrayIter(rng.randint(0, 256, (n, 3, 16, 16)).astype(np.uint8), rng.randint(0, 3, n), bs,
                     mean=(120,) * 3, std=(60,) * 3, last_batch='rollover')


def test_delta_gradient_in_engine_units():
    """One engine SGD step (batch 4, sum-over-slice total, trainer.step(4)) equals the step
    on the reference objective mean CE + alpha * Omega(batch) + beta * 0.5 ||fc||^2."""
    src = _net(classes=7, seed=1)
    net = build_target('resnet18_v1b', 3, [mx.cpu()], src, mx.init.Xavier(), seed=0)
    rng = np.random.RandomState(4)
    for p in net.collect_params().values():
        if p.grad_req != 'null':
            p.set_data(p.data() + mx.nd.array(0.05 * rng.randn(*p.shape)))
    start = {k: p.data().asnumpy().copy() for k, p in net._collect_params_with_prefix().items()}
    raw = [rng.randn(c) for c in (64, 128, 256, 512)]
    alpha, beta, lr = 0.3, 0.01, 0.05
    names = stage_end_taps(net)
    # reference step on an identical copy
    ref = _net(classes=3, seed=9)
    for k, p in ref._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(start[k]))
    rtaps = bottleneck_taps(ref, names)
    staps = bottleneck_taps(src, names, with_logits=False)
    batch = next(iter(_data()))
    fs = staps(batch.data)       # outside record(): inference mode, running statistics
    with autograd.record():
        out = rtaps(batch.data)
        ce = -mx.nd.pick(mx.nd.log_softmax(out[0]), batch.label).mean()
        omega = delta_penalty(fs, out[1:], [delta_channel_weights(r) for r in raw])
        loss = ce + alpha * omega + beta * 0.5 * ((ref.fc.weight.data() ** 2).sum() + (ref.fc.bias.data() ** 2).sum())
    loss.backward()
    expect = {k: start[k] - lr * p.grad().asnumpy() for k, p in ref._collect_params_with_prefix().items()
              if p.grad_req != 'null'}
    src_before = {k: p.data().asnumpy().copy() for k, p in src._collect_params_with_prefix().items()}
    reg = DELTA(alpha=alpha, beta=beta, batch_size=4, channel_weights=raw)
    reg.bind(plan(net, rates=reg.param_rates))
    task = Transfer([reg], source=src)
    cfg = FitConfig(num_epochs=1, lr=lr, momentum=0.0, wd=0.0, optimizer='sgd', lr_mode='constant', mode='hybrid')
    eng = Engine(net, task, [mx.cpu()], cfg, _data(), num_classes=3)
    eng.fit()
    got = net._collect_params_with_prefix()
    for k in ('layer1.0.conv1.weight', 'layer3.1.conv2.weight', 'layer4.1.bn1.gamma', 'fc.weight', 'fc.bias'):
        np.testing.assert_allclose(got[k].data().asnumpy(), expect[k], rtol=1e-3, atol=1e-6, err_msg=k)
    assert 'delta' in eng.history[0]['terms'] and 'delta_new' in eng.history[0]['terms']
    # the source is frozen: not in the trainer, values (incl. BN running stats) unchanged
    trained = {id(p) for p in eng.trainer._params}
    assert not any(id(p) in trained for p in src.collect_params().values())
    for k, p in src._collect_params_with_prefix().items():
        np.testing.assert_array_equal(p.data().asnumpy(), src_before[k], err_msg=k)


def test_filter_importance_equals_zeroing_the_output_channel():
    """Zeroing filter j of layer4.1.conv2 (no bias) == zeroing channel j of its output;
    the rest of the network is then bn2 -> + identity -> relu -> pool -> fc."""
    net = _net(classes=3, seed=3)
    net.hybridize()
    batches = [(b.data, b.label) for b in _data(4, 4, seed=6)]
    raw = filter_importance(net, ['layer4.1.conv2'], batches)[0]
    assert raw.shape == (512,)
    blk = net.layer4[1]
    taps = bottleneck_taps(net, ['layer4.1.conv2'], with_logits=False)
    w_fc, b_fc = net.fc.weight.data().asnumpy(), net.fc.bias.data().asnumpy()

    def ce_from(x, t, y):
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        h = net.layer3(net.layer2(net.layer1(h)))
        identity = net.layer4[0](h).asnumpy()
        o = blk.bn2(mx.nd.array(t)).asnumpy() + identity
        feat = np.maximum(o, 0).mean(axis=(2, 3))
        z = feat @ w_fc.T + b_fc
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -logp[np.arange(len(y)), y.astype(int)].mean()

    for j in (0, 17, 511):
        diffs = []
        for x, y in batches:
            out = taps(x)
            t = (out[0] if isinstance(out, (list, tuple)) else out).asnumpy()
            full = ce_from(x, t, y.asnumpy())
            t0 = t.copy()
            t0[:, j] = 0
            diffs.append(ce_from(x, t0, y.asnumpy()) - full)
        assert raw[j] == pytest.approx(np.mean(diffs), rel=1e-3, abs=1e-6)


def test_ten_crops_are_torchvision_tencrop(rng):
    x = rng.randn(2, 3, 6, 7).astype(np.float32)
    crops = [c.asnumpy() for c in ten_crops(mx.nd.array(x), 4)]
    f = x[:, :, :, ::-1]
    expect = [x[:, :, 0:4, 0:4], x[:, :, 0:4, 3:7], x[:, :, 2:6, 0:4], x[:, :, 2:6, 3:7], x[:, :, 1:5, 1:5],
              f[:, :, 0:4, 0:4], f[:, :, 0:4, 3:7], f[:, :, 2:6, 0:4], f[:, :, 2:6, 3:7], f[:, :, 1:5, 1:5]]
    for c, e in zip(crops, expect):
        np.testing.assert_array_equal(c, e)
