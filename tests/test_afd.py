"""AFD regularizer: value and target-map gradient against numpy (both norms), the three
predictor modes (joint collapses, entropy does not, frozen gets no gradient), registration."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from gluon_transfer.errors import ConfigError
from gluon_transfer.losses.afd import AFD, conv_output_shapes
from gluon_transfer.registry import REGULARIZERS

SHAPES = [(4, 3, 3), (6, 2, 2)]


def _maps(rng, n=3, scale=1.0):
    src = [rng.randn(n, *s).astype(np.float32) for s in SHAPES]
    tgt = [s + scale * rng.randn(*s.shape).astype(np.float32) for s in src]
    return src, tgt


def _numpy_rho(reg, s):
    """Independent forward of one predictor: softmax_c(fc2(relu(fc1(s[n,c].flatten()))) + bias)."""
    out = []
    for p, x in zip(reg.predictors.layers, s):
        w1, b1 = p.fc1.weight.data().asnumpy(), p.fc1.bias.data().asnumpy()
        w2, b2 = p.fc2.weight.data().asnumpy(), p.fc2.bias.data().asnumpy()
        z = x.reshape(x.shape[0], x.shape[1], -1)
        e = (np.maximum(z @ w1.T + b1, 0) @ w2.T + b2)[..., 0]
        if p.channel_bias:
            e = e + p.cbias.data().asnumpy()
        e = e - e.max(axis=1, keepdims=True)
        out.append(np.exp(e) / np.exp(e).sum(axis=1, keepdims=True))
    return out


def _run(reg, src, tgt):
    ts = [mx.nd.array(t) for t in tgt]
    for t in ts:
        t.attach_grad()
    with autograd.record():
        (name, contrib), = reg.terms(mx.cpu(), src[0].shape[0], ts, [mx.nd.array(s) for s in src])
    contrib.backward()
    return name, float(contrib.asscalar()), [t.grad.asnumpy() for t in ts]


@pytest.mark.parametrize('norm', ['l2sq', 'l2'])
@pytest.mark.parametrize('mode', ['joint', 'entropy', 'frozen'])
def test_value_and_gradient_against_numpy(norm, mode, rng):
    lam = 0.03
    reg = AFD(lambda_afd=lam, afd_norm=norm, afd_predictor=mode, shapes=SHAPES)
    reg.setup(None, [mx.cpu()])
    src, tgt = _maps(rng)
    name, value, grads = _run(reg, src, tgt)
    rhos = _numpy_rho(reg, src)
    want = 0.0
    for s, t, rho, g in zip(src, tgt, rhos, grads):
        d = (t - s).astype(np.float64)
        sq = (d ** 2).sum(axis=(2, 3))
        if norm == 'l2sq':
            want += (rho * sq).sum()
            want_grad = lam * rho[:, :, None, None] * 2 * d
        else:
            nrm = np.sqrt(sq)
            want += (rho * nrm).sum()
            want_grad = lam * rho[:, :, None, None] * d / nrm[:, :, None, None]
        np.testing.assert_allclose(g, want_grad, rtol=1e-4, atol=1e-7)
    assert name == 'afd'
    # contribution = lambda * sum over the slice of r_n  (= n * lambda * R, R the batch mean)
    np.testing.assert_allclose(value, lam * want, rtol=1e-5)


def test_l2_is_finite_at_zero_distance(rng):
    reg = AFD(afd_norm='l2', afd_predictor='joint', shapes=SHAPES)
    reg.setup(None, [mx.cpu()])
    src, _ = _maps(rng)
    _, value, grads = _run(reg, src, [s.copy() for s in src])
    assert abs(value) < 1e-4
    assert all(np.isfinite(g).all() and np.abs(g).max() == 0 for g in grads)


def test_frozen_predictor_gets_no_gradient_and_trainer_skips_it(rng):
    reg = AFD(afd_predictor='frozen', shapes=SHAPES)
    reg.setup(None, [mx.cpu()])
    params = reg.blocks()['afd_predictor'].collect_params()
    assert all(p.grad_req == 'null' for p in params.values())
    before = {k: p.data().asnumpy().copy() for k, p in params.items()}
    trainer = gluon.Trainer(params, 'sgd', {'learning_rate': 1.0})
    src, tgt = _maps(rng)
    _run(reg, src, tgt)
    trainer.step(1)
    for k, p in params.items():
        np.testing.assert_array_equal(p.data().asnumpy(), before[k])


@pytest.mark.parametrize('mode', ['joint', 'entropy'])
def test_trained_predictor_receives_gradient(mode, rng):
    reg = AFD(afd_predictor=mode, shapes=SHAPES)
    reg.setup(None, [mx.cpu()])
    src, tgt = _maps(rng)
    _run(reg, src, tgt)
    grads = [p.grad().asnumpy() for p in reg.blocks()['afd_predictor'].collect_params().values()]
    assert max(np.abs(g).max() for g in grads) > 0


def _optimise_predictor(mode, steps=120, tau=1.0):
    """Train only the predictor (per-channel bias on) on a fixed (source, target) pair."""
    rng = np.random.RandomState(1)
    shape = [(5, 2, 2)]
    reg = AFD(afd_predictor=mode, tau=tau, channel_bias=True, shapes=shape, lambda_afd=1.0)
    reg.setup(None, [mx.cpu()])
    s = rng.randn(1, 5, 2, 2).astype(np.float32)
    t = s + rng.randn(1, 5, 2, 2).astype(np.float32) * np.array([0.3, 0.6, 0.9, 1.2, 1.5], np.float32)[None, :, None,
                                                                                                         None]
    trainer = gluon.Trainer(reg.blocks()['afd_predictor'].collect_params(), 'sgd', {'learning_rate': 1.0})
    for _ in range(steps):
        with autograd.record():
            (_, c), = reg.terms(mx.cpu(), 1, [mx.nd.array(t)], [mx.nd.array(s)])
        c.backward()
        trainer.step(1)
    rho = reg.transferability([mx.nd.array(s)])[0][0]
    d = ((t - s) ** 2).sum(axis=(2, 3))[0].astype(np.float64)
    return rho, d


def test_joint_predictor_collapses_entropy_does_not():
    rho, d = _optimise_predictor('joint')
    assert rho.max() > 0.95 and np.argmax(rho) == np.argmin(d)      # the reproduction's collapse
    tau = 1.0
    rho, d = _optimise_predictor('entropy', steps=250, tau=tau)
    d_hat = d / d.mean()
    want = np.exp(-d_hat / tau) / np.exp(-d_hat / tau).sum()          # the entropy-floor optimum
    np.testing.assert_allclose(rho, want, atol=0.02)
    assert rho.max() < 0.5                                             # no collapse


def test_registration_and_errors():
    assert REGULARIZERS.get('afd') is AFD
    with pytest.raises(ConfigError, match='afd_norm'):
        AFD(afd_norm='l1')
    with pytest.raises(ConfigError, match='afd_predictor'):
        AFD(afd_predictor='adversarial')
    reg = AFD(shapes=SHAPES)
    with pytest.raises(ConfigError, match='do not match'):
        reg.set_channels([4, 7])
    with pytest.raises(ConfigError, match='shapes'):
        AFD().setup(None, [mx.cpu()])


def test_shapes_from_network_taps():
    from gluon_transfer.models.afs_resnet import AFSResNetV1b
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=4)
    taps = ['layer1.0.conv3', 'layer2.0.conv3', 'layer3.0.conv3', 'layer4.0.conv3']
    assert conv_output_shapes(net, taps, (1, 3, 64, 64)) == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    reg = AFD(input_size=64, taps=taps)
    net.initialize()
    reg.setup(net, [mx.cpu()])
    assert [p.hidden for p in reg.predictors.layers] == [16, 8, 4, 2]      # hidden = H, the reproduction's
    with pytest.raises(ConfigError, match='layer9'):
        conv_output_shapes(net, ['layer9.0.conv3'], (1, 3, 64, 64))
