"""Attention transfer, KD and gradient-based AT against independent numpy computations."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd

from gluon_transfer.errors import ConfigError
from gluon_transfer.losses import attention_map, at_loss, kd_loss, grad_at_param_grads, input_gradient
from gluon_transfer.registry import LOSSES

from numpy_ref import log_softmax


# ----------------------------------------------------------------- numpy references
def np_at(x, p=2):
    q = (np.abs(x) ** p).mean(axis=1).reshape(x.shape[0], -1)
    return q / np.maximum(np.sqrt((q ** 2).sum(axis=1, keepdims=True)), 1e-12)


def np_at_grad(s, g_a, p=2):
    """Chain rule by hand: dL/ds from dL/da for a = q/||q||, q = mean_c |s|^p."""
    n, c = s.shape[:2]
    q = (np.abs(s) ** p).mean(axis=1).reshape(n, -1)
    norm = np.sqrt((q ** 2).sum(axis=1, keepdims=True))
    a = q / norm
    g_q = (g_a - a * (a * g_a).sum(axis=1, keepdims=True)) / norm
    dq_ds = p * np.abs(s) ** (p - 1) * np.sign(s) / c
    return dq_ds * g_q.reshape(n, 1, *s.shape[2:])


def mx_grad(fn, s_np, t_np):
    s = mx.nd.array(s_np)
    s.attach_grad()
    t = mx.nd.array(t_np)
    with autograd.record():
        out = fn(s, t)
    out.backward()
    return float(out.asscalar()), s.grad.asnumpy()


@pytest.fixture
def maps(rng):
    return rng.randn(3, 4, 5, 6), rng.randn(3, 7, 5, 6)   # student 4 channels, teacher 7


def test_attention_map_matches_numpy(maps):
    s, _ = maps
    for p in (1, 2, 3):
        np.testing.assert_allclose(attention_map(mx.nd.array(s), p=p).asnumpy(), np_at(s, p), rtol=1e-5, atol=1e-7)
    out = attention_map(mx.nd.array(s)).asnumpy()
    assert out.shape == (3, 30)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('p', [2, 1])
def test_at_loss_code_value_and_gradient(maps, p):
    s, t = maps
    a, b = np_at(s, p), np_at(t, p)
    want = ((a - b) ** 2).mean()
    g_a = 2 * (a - b) / a.size
    value, grad = mx_grad(lambda x, y: at_loss(x, y, p=p), s, t)
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grad, np_at_grad(s, g_a, p), rtol=1e-4, atol=1e-7)


def test_at_loss_paper_value_and_gradient(maps):
    s, t = maps
    a, b = np_at(s), np_at(t)
    n, hw = a.shape
    d = a - b
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    want = norms.sum() / (2 * n * hw)
    g_a = d / norms / (2 * n * hw)
    value, grad = mx_grad(lambda x, y: at_loss(x, y, mode='paper'), s, t)
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grad, np_at_grad(s, g_a), rtol=1e-4, atol=1e-8)


def test_at_invariant_to_channel_count(maps, rng):
    s, t = maps
    ref = float(at_loss(mx.nd.array(s), mx.nd.array(t)).asscalar())
    # the channel mean does not change when channels are repeated, and the scale cancels
    t2 = np.concatenate([t, t, t], axis=1)
    assert float(at_loss(mx.nd.array(s), mx.nd.array(t2)).asscalar()) == pytest.approx(ref, rel=1e-5)
    assert float(at_loss(mx.nd.array(s), mx.nd.array(3.0 * t)).asscalar()) == pytest.approx(ref, rel=1e-5)
    assert float(at_loss(mx.nd.array(s), mx.nd.array(s)).asscalar()) == pytest.approx(0.0, abs=1e-12)


def test_at_zero_map_has_finite_gradient():
    s = mx.nd.zeros((2, 3, 4, 4))
    s.attach_grad()
    t = mx.nd.ones((2, 5, 4, 4))
    for mode in ('code', 'paper'):
        with autograd.record():
            out = at_loss(s, t, mode=mode)
        out.backward()
        assert np.isfinite(s.grad.asnumpy()).all()
        # at(0) = 0: the loss is the mean of b^2 = 1/HW per sample for a unit-norm b
        if mode == 'code':
            assert float(out.asscalar()) == pytest.approx(1.0 / 16, rel=1e-6)


def test_at_spatial_mismatch_names_group():
    with pytest.raises(ConfigError, match=r'group g2.*\(2, 3, 8, 8\).*\(2, 3, 4, 4\)'):
        at_loss(mx.nd.zeros((2, 3, 8, 8)), mx.nd.zeros((2, 3, 4, 4)), group='g2')
    with pytest.raises(ConfigError, match='mode'):
        at_loss(mx.nd.zeros((2, 3, 4, 4)), mx.nd.zeros((2, 3, 4, 4)), mode='fancy')


def test_losses_registered():
    assert LOSSES.get('at') is at_loss and LOSSES.get('kd') is kd_loss


# ----------------------------------------------------------------- KD
def np_kd(zs, zt, y, T, alpha):
    logp = log_softmax(zs / T)
    logq = log_softmax(zt / T)
    kl = (np.exp(logq) * (logq - logp)).sum() / zs.shape[0]
    ce = -log_softmax(zs)[np.arange(len(y)), y].mean()
    return alpha * T * T * kl + (1 - alpha) * ce


def test_kd_loss_value_and_gradient(rng):
    zs, zt = rng.randn(5, 10) * 3, rng.randn(5, 10) * 3
    y = rng.randint(0, 10, 5)
    T, alpha = 4.0, 0.9
    s = mx.nd.array(zs)
    s.attach_grad()
    with autograd.record():
        out = kd_loss(s, mx.nd.array(zt), mx.nd.array(y), temperature=T, alpha=alpha)
    out.backward()
    assert float(out.asscalar()) == pytest.approx(np_kd(zs, zt, y, T, alpha), rel=1e-4)
    # d/dz [alpha T^2 KL(q || softmax(z/T))] = alpha T (p_T - q_T); d CE/dz = softmax(z) - onehot
    p_t, q_t = np.exp(log_softmax(zs / T)), np.exp(log_softmax(zt / T))
    onehot = np.eye(10)[y]
    want = (alpha * T * (p_t - q_t) + (1 - alpha) * (np.exp(log_softmax(zs)) - onehot)) / 5
    np.testing.assert_allclose(s.grad.asnumpy(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('T', [1.0, 2.0, 4.0, 8.0])
def test_kd_temperature_squared_scaling(rng, T):
    zs, zt = rng.randn(4, 6), rng.randn(4, 6)
    y = np.zeros(4, dtype=int)
    kd_only = float(kd_loss(mx.nd.array(zs), mx.nd.array(zt), mx.nd.array(y), temperature=T, alpha=1.0).asscalar())
    logp, logq = log_softmax(zs / T), log_softmax(zt / T)
    kl_mean_over_batch = (np.exp(logq) * (logq - logp)).sum(axis=1).mean()      # summed over classes
    assert kd_only == pytest.approx(T * T * kl_mean_over_batch, rel=1e-4)   # float32 KL of close distributions
    ce_only = float(kd_loss(mx.nd.array(zs), mx.nd.array(zt), mx.nd.array(y), temperature=T, alpha=0.0).asscalar())
    assert ce_only == pytest.approx(-log_softmax(zs)[:, 0].mean(), rel=1e-5)


def test_kd_soft_targets(rng):
    zs, zt = rng.randn(3, 4), rng.randn(3, 4)
    q = np.exp(log_softmax(rng.randn(3, 4)))
    out = float(kd_loss(mx.nd.array(zs), mx.nd.array(zt), mx.nd.array(q), temperature=2.0, alpha=0.5).asscalar())
    logp, logq = log_softmax(zs / 2), log_softmax(zt / 2)
    want = 0.5 * 4 * (np.exp(logq) * (logq - logp)).sum(axis=1).mean() + 0.5 * -(q * log_softmax(zs)).sum(axis=1).mean()
    assert out == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------- gradient-based AT
# A conv-free network on which MXNet 1.9's double back-propagation is exact: only
# element-wise ops (elemwise_add, tanh) before a final FullyConnected whose output gradient
# is constant. (FullyConnected followed by a non-linearity gives WRONG second-order
# gradients in MXNet 1.9: the term through its output gradient is dropped.)
def _tiny(rng, dtype):
    n, d, k = 3, 5, 4
    params = [mx.nd.array(rng.randn(n, d) * 0.5, dtype=dtype),     # B: element-wise shift
              mx.nd.array(rng.randn(k, d), dtype=dtype),           # W
              mx.nd.array(rng.randn(k), dtype=dtype)]              # b
    for p in params:
        p.attach_grad()
    x = mx.nd.array(rng.randn(n, d), dtype=dtype)
    c = mx.nd.array(rng.randn(n, k), dtype=dtype)                  # loss weights ("labels")
    j_t = mx.nd.array(rng.randn(n, d) * 0.3, dtype=dtype)          # the teacher's input gradient

    def out(xv, ps):
        return mx.nd.FullyConnected(mx.nd.tanh(mx.nd.elemwise_add(xv, ps[0])), ps[1], ps[2], num_hidden=k)

    return params, x, c, j_t, out


def _penalty(out, ps, x, c, j_t, beta):
    j = input_gradient(lambda xv: mx.nd.elemwise_mul(out(xv, ps), c), x)
    return 0.5 * beta * float(mx.nd.square(j - j_t).sum().asscalar())


@pytest.mark.parametrize('dtype,step,rtol', [('float64', 1e-5, 1e-6), ('float32', 2e-3, 1e-3)])
def test_grad_at_finite_difference_matches_exact_second_order(rng, dtype, step, rtol):
    params, x, c, j_t, out = _tiny(rng, dtype)
    beta = 2.5
    # exact: double back-propagation, d/dtheta beta/2 ||J - J_T||^2 = beta (J - J_T) . dJ/dtheta
    xv = x.copy()
    xv.attach_grad()
    with autograd.record():
        y = out(xv, params)
        j = autograd.grad(y, [xv], head_grads=c, create_graph=True)[0]
    j.backward(out_grad=(beta * (j - j_t)).detach())
    exact = [p.grad.asnumpy().copy() for p in params]
    # finite difference of first-order gradients along v = J - J_T
    j_s = input_gradient(lambda z: mx.nd.elemwise_mul(out(z, params), c), x)
    v = j_s - j_t
    grads, h = grad_at_param_grads(lambda z: mx.nd.elemwise_mul(out(z, params), c), x, v, params, step=step)
    assert h > 0
    for e, g in zip(exact, grads):
        np.testing.assert_allclose(beta * g.asnumpy(), e, rtol=rtol, atol=rtol * np.abs(e).max())
    # and numeric differences of the penalty itself (float64 only)
    if dtype == 'float64':
        for k, p in enumerate(params):
            base = p.asnumpy()
            for idx in [(0,) * base.ndim, tuple(s - 1 for s in base.shape)]:
                vals = []
                for sign in (1, -1):
                    q = base.copy()
                    q[idx] += sign * 1e-6
                    ps = list(params)
                    ps[k] = mx.nd.array(q, dtype=dtype)
                    vals.append(_penalty(out, ps, x, c, j_t, beta))
                assert (vals[0] - vals[1]) / 2e-6 == pytest.approx(exact[k][idx], rel=1e-5, abs=1e-8)


def test_grad_at_leaves_param_grad_buffers_alone(rng):
    params, x, c, j_t, out = _tiny(rng, 'float32')
    for p in params:
        p.grad[:] = 7.0
    fn = lambda z: mx.nd.elemwise_mul(out(z, params), c)  # noqa: E731
    grad_at_param_grads(fn, x, input_gradient(fn, x) - j_t, params)
    assert all((p.grad.asnumpy() == 7.0).all() for p in params)
    zero, h = grad_at_param_grads(fn, x, mx.nd.zeros_like(x), params)
    assert h == 0.0 and all((z.asnumpy() == 0).all() for z in zero)
