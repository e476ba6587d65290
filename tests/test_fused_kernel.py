"""The fused AFF kernel (gluon_transfer/nn/fused.py, aff_kernel.cc): op forward/backward against
numpy, block gradients equal to the operator composition's, fallback and export behaviour."""
import logging
import warnings

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd

from gluon_transfer.nn import fused
from gluon_transfer.nn.fusion import AFF, iAFF

needs_kernel = pytest.mark.skipif(not fused.load_kernel(), reason='fused AFF kernel unavailable: %s'
                                  % fused._state['error'])


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@needs_kernel
@pytest.mark.parametrize('scale', [2.0, 1.0])
def test_op_forward_backward_match_numpy(scale):
    rng = np.random.RandomState(0)
    shape = (3, 5, 7, 9)
    arrays = [rng.normal(0, 2, size=s).astype(np.float32) for s in (shape, shape, shape, shape[:2] + (1, 1))]
    arrays[2][0, 0, 0, :3] = [-120.0, 95.0, 0.0]  # saturated sigmoid stays finite and exact
    nd = [mx.nd.array(a) for a in arrays]
    for a in nd:
        a.attach_grad()
    dout = rng.normal(size=shape)
    with autograd.record():
        out = getattr(mx.nd, fused.OP_NAME)(*nd, scale=scale)
    out.backward(mx.nd.array(dout))
    x, y, l, g = [a.astype(np.float64) for a in arrays]
    w = np_sigmoid(l + g)
    np.testing.assert_allclose(out.asnumpy(), scale * x * w + scale * y * (1 - w), rtol=1e-5, atol=1e-5)
    dl = scale * dout * (x - y) * w * (1 - w)
    want = [scale * dout * w, scale * dout * (1 - w), dl, dl.sum(axis=(2, 3), keepdims=True)]
    for a, wgrad in zip(nd, want):
        np.testing.assert_allclose(a.grad.asnumpy(), wgrad, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_global_mean_op_matches_numpy():
    rng = np.random.RandomState(2)
    z = rng.normal(size=(3, 4, 7, 5)).astype(np.float32)
    dm = rng.normal(size=(3, 4, 1, 1))
    zn = mx.nd.array(z)
    zn.attach_grad()
    with autograd.record():
        m = getattr(mx.nd, fused.MEAN_OP)(zn)
    m.backward(mx.nd.array(dm))
    np.testing.assert_allclose(m.asnumpy(), z.astype(np.float64).mean(axis=(2, 3), keepdims=True), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(zn.grad.asnumpy(), np.broadcast_to(dm / 35.0, z.shape), rtol=1e-5, atol=1e-7)


@needs_kernel
def test_op_rejects_bad_shapes_and_types():
    x = mx.nd.zeros((2, 3, 4, 4))
    with pytest.raises(mx.base.MXNetError, match='g of shape'):
        getattr(mx.nd, fused.OP_NAME)(x, x, x, mx.nd.zeros((2, 3, 4, 1)), scale=2.0).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match='float32'):
        h = x.astype('float64')
        getattr(mx.nd, fused.OP_NAME)(h, h, h, mx.nd.zeros((2, 3, 1, 1), dtype='float64'), scale=2.0).wait_to_read()


def _grads(block, x, y, kernel, hybrid):
    xs, ys = x.copy(), y.copy()
    xs.attach_grad()
    ys.attach_grad()
    if hybrid:
        block.hybridize(static_alloc=True, static_shape=True)
    ctx = fused.disabled() if not kernel else warnings.catch_warnings()
    with ctx:
        with autograd.record():
            out = block(xs, ys)
        out.backward(mx.nd.array(np.random.RandomState(5).normal(size=out.shape)))
    grads = {k: p.grad().asnumpy() for k, p in block._collect_params_with_prefix().items() if p.grad_req != 'null'}
    return out.asnumpy(), xs.grad.asnumpy(), ys.grad.asnumpy(), grads


@needs_kernel
@pytest.mark.parametrize('hybrid', [False, True])
@pytest.mark.parametrize('cls', [AFF, iAFF])
def test_block_gradients_equal_composition(cls, hybrid):
    """Training through the kernel gives the composition's outputs and every gradient."""
    rng = np.random.RandomState(1)
    x, y = (mx.nd.array(rng.normal(size=(4, 16, 6, 5))) for _ in range(2))
    results = []
    for kernel in (True, False):
        mx.random.seed(3)
        block = cls(16, 4)
        block.initialize(mx.init.Xavier())
        results.append(_grads(block, x, y, kernel, hybrid))
    (o1, gx1, gy1, p1), (o2, gx2, gy2, p2) = results
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gy1, gy2, rtol=1e-4, atol=1e-5)
    assert p1.keys() == p2.keys() and p1
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-3, atol=1e-4, err_msg=k)


@needs_kernel
def test_hybrid_graph_uses_kernel_only_where_allowed():
    block = AFF(16, 4)
    block.initialize()
    x = mx.sym.var('x')
    ops = {n['op'] for n in __import__('json').loads(block(x, x).tojson())['nodes']}
    assert fused.OP_NAME in ops
    with fused.disabled():
        ops = {n['op'] for n in __import__('json').loads(block(x, x).tojson())['nodes']}
    assert fused.OP_NAME not in ops and 'Activation' in ops
    block.cast('float16')  # not float32: composition
    ops = {n['op'] for n in __import__('json').loads(block(x, x).tojson())['nodes']}
    assert fused.OP_NAME not in ops


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_disabled_by_environment_or_failed_build(monkeypatch, tmp_path):
    state = dict(fused._state)
    try:
        monkeypatch.setenv('GLUON_TRANSFER_AFF_KERNEL', '0')
        fused._state.update(tried=False, loaded=False, error=None)
        assert fused.load_kernel() is False and 'GLUON_TRANSFER_AFF_KERNEL' in fused._state['error']
        monkeypatch.delenv('GLUON_TRANSFER_AFF_KERNEL')
        monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path))
        monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
        monkeypatch.setattr(fused, '_build', lambda mx_, path: (_ for _ in ()).throw(RuntimeError('no g++')))
        fused._state.update(tried=False, loaded=False, error=None)
        handler = _Records()  # the CLI may have set propagate=False on this logger: listen on it directly
        logging.getLogger('gluon_transfer').addHandler(handler)
        try:
            assert fused.load_kernel() is False
            assert fused.load_kernel() is False  # tried once, said once
        finally:
            logging.getLogger('gluon_transfer').removeHandler(handler)
        assert handler.messages == ['fused AFF kernel unavailable (no g++); using the slower operator composition']
        block = AFF(8, 4)
        block.initialize()
        x = mx.nd.ones((1, 8, 2, 2))
        assert block(x, x).shape == (1, 8, 2, 2)  # the composition runs
    finally:
        fused._state.update(state)
