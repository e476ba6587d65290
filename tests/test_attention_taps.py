"""AttentionTaps (the fused student/teacher graphs of Distill): attention maps and their
input gradients against numpy, and the Distill training path against the imperative loss."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from gluon_transfer.engine.tasks import AttentionTaps

from test_losses_at_kd import np_at, np_at_grad


def relu_net(channels=5, classes=3):
    """Tap '0' is relu(x) itself, so the input gradient has a closed form."""
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Activation('relu'), gluon.nn.Conv2D(channels, 3, padding=1), gluon.nn.Activation('relu'),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(classes))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 6, 6)))
    return net


@pytest.mark.parametrize('p', [2, 1, 3])
def test_attention_taps_value_and_input_gradient(p):
    rng = np.random.RandomState(p)
    net = relu_net()
    x_np = rng.randn(4, 3, 6, 6).astype(np.float32)
    w_np = rng.randn(4, 36).astype(np.float32)
    view = AttentionTaps(net, ('0', '2'), p=p)
    view.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.array(x_np)
    x.attach_grad()
    with autograd.record():
        logits, maps = view(x)
        loss = (maps[0] * mx.nd.array(w_np)).sum()
    loss.backward()
    tap0 = np.maximum(x_np, 0)
    np.testing.assert_allclose(maps[0].asnumpy(), np_at(tap0, p), rtol=1e-5, atol=1e-7)
    # the second tap (after the conv) against the network's own layers run imperatively
    h = net[2](net[1](net[0](mx.nd.array(x_np)))).asnumpy()
    np.testing.assert_allclose(maps[1].asnumpy(), np_at(h, p), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logits.asnumpy(), net(mx.nd.array(x_np)).asnumpy(), rtol=1e-5, atol=1e-6)
    # d loss / dx = d at / d tap (numpy chain rule) * relu'(x)
    g = np_at_grad(tap0.astype(np.float64), w_np.astype(np.float64), p) * (x_np > 0)
    np.testing.assert_allclose(x.grad.asnumpy(), g, rtol=1e-4, atol=1e-6)


def test_attention_taps_share_parameters():
    net = relu_net()
    view = AttentionTaps(net, ('2',))
    assert set(view.collect_params().keys()) == set(net.collect_params().keys())
    for k, p in view.collect_params().items():
        assert p is net.collect_params()[k]
