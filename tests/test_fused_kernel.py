"""The fused AFF kernel (gluon_transfer/nn/fused.py, aff_kernel.cc): op forward/backward against
numpy, block gradients equal to the operator composition's, fallback and export behaviour."""
import json
import logging
import os
import shutil
import subprocess
import sys
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


def _load_messages():
    """Run load_kernel twice from scratch; the WARNING messages it logged."""
    fused._state.update(tried=False, loaded=False, error=None)
    handler = _Records()  # the CLI may have set propagate=False on this logger: listen on it directly
    logging.getLogger('gluon_transfer').addHandler(handler)
    try:
        assert fused.load_kernel() is False
        assert fused.load_kernel() is False  # tried once, said once
    finally:
        logging.getLogger('gluon_transfer').removeHandler(handler)
    return handler.messages


def test_disabled_by_environment_or_failed_build(monkeypatch, tmp_path):
    state = dict(fused._state)
    try:
        monkeypatch.setenv('GLUON_TRANSFER_AFF_KERNEL', '0')
        fused._state.update(tried=False, loaded=False, error=None)
        assert fused.load_kernel() is False and 'GLUON_TRANSFER_AFF_KERNEL' in fused._state['error']
        monkeypatch.delenv('GLUON_TRANSFER_AFF_KERNEL')
        monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path))
        monkeypatch.setattr(fused, '_build', lambda mx_, path: (_ for _ in ()).throw(RuntimeError('no g++')))
        if fused.shutil.which('g++') or fused.shutil.which('c++'):
            monkeypatch.delenv('CXX', raising=False)
            assert _load_messages() == ['fused AFF kernel unavailable (no g++); using the slower operator '
                                        'composition']
        monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
        assert _load_messages() == ['fused AFF kernel unavailable (C++ compiler %s not found); using the slower '
                                    'operator composition' % (tmp_path / 'no-such-compiler')]
        # nothing built, no temporary file left behind (the lock file stays: it is reused)
        assert [n for n in os.listdir(str(tmp_path)) if not n.endswith('.lock')] == []
        block = AFF(8, 4)
        block.initialize()
        x = mx.nd.ones((1, 8, 2, 2))
        assert block(x, x).shape == (1, 8, 2, 2)  # the composition runs
    finally:
        fused._state.update(state)


# ---------------------------------------------------------------------------- the library cache
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 %s

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 %s
"""


def test_cache_key_follows_cpu_flags_and_compiler(tmp_path, monkeypatch):
    """-march=native compiles for the CPU's instruction sets: two hosts with the same model
    name but different flags (e.g. a VM that hides AVX-512) must not share a build, nor must
    two compilers."""
    monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path))
    monkeypatch.setattr(fused, '_compiler', lambda: ('/usr/bin/g++', '/usr/bin/g++-12 | g++ 12.2.0'), raising=False)
    keys = {}
    avx512 = 'avx512f avx512bw amx_tile'
    for name, extra in (('avx512', avx512), ('avx2', ''), ('avx512_again', avx512)):
        info = tmp_path / ('cpuinfo_' + name)
        info.write_text(CPUINFO % (extra, extra))
        monkeypatch.setattr(fused, '_CPUINFO', str(info), raising=False)
        keys[name] = fused._library_path(mx)
        assert os.path.dirname(keys[name]) == str(tmp_path)
    assert keys['avx512'] != keys['avx2']
    assert keys['avx512'] == keys['avx512_again']          # deterministic
    tag = fused._cpu_tag(str(tmp_path / 'cpuinfo_avx512'))
    assert 'flags: fpu sse sse2 avx avx2 avx512f avx512bw amx_tile' in tag and 'Platinum 8480+' in tag
    other = fused._library_path(mx, cpu=tag, compiler='/usr/bin/clang++ | clang version 16.0.6')
    assert other != keys['avx512']
    assert fused._library_path(mx, cpu=tag, compiler='/usr/bin/g++-12 | g++ 12.2.0') == keys['avx512']


def _copy_library(src, dst):
    shutil.copyfile(src, dst)
    shutil.copyfile(src + '.sha256', dst + '.sha256')


@needs_kernel
def test_cached_library_checks(tmp_path):
    """What makes a cached library unusable: missing, empty, truncated anywhere, not ELF,
    bytes changed after the build, no recorded checksum."""
    good = fused._state['path']
    lib = str(tmp_path / 'lib.so')
    _copy_library(good, lib)
    assert fused._library_problem(lib) is None
    with open(good, 'rb') as f:
        data = f.read()
    for cut in (1, 40, 100, 4096, len(data) // 2, len(data) - 1):
        with open(lib, 'wb') as f:
            f.write(data[:cut])
        problem = fused._library_problem(lib)
        assert problem is not None and ('truncated' in problem or 'not an ELF' in problem), (cut, problem)
    with open(lib, 'wb'):
        pass
    assert fused._library_problem(lib) == 'empty (0 bytes)'
    with open(lib, 'wb') as f:
        f.write(b'#!/bin/sh\n' + b'x' * 100)
    assert fused._library_problem(lib) == 'not an ELF shared library'
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xff
    with open(lib, 'wb') as f:
        f.write(bytes(flipped))
    assert 'checksum differs' in fused._library_problem(lib)
    _copy_library(good, lib)
    os.remove(lib + '.sha256')
    assert fused._library_problem(lib).startswith('no checksum recorded')
    assert fused._library_problem(str(tmp_path / 'nothing.so')) == 'missing'


# Run in a fresh process (a library loads once per process): load the kernel from the cache
# in $GLUON_TRANSFER_CACHE, optionally with the compiler replaced by a copy of a good build,
# and report what it computed for fixed inputs.
_PROBE = r"""
import json, shutil, sys, logging
import numpy as np
sys.path.insert(0, sys.argv[1])
import mxnet as mx
from gluon_transfer.nn import fused
if sys.argv[2] != 'compile':
    def copy_build(mx_, path, good=sys.argv[2]):
        shutil.copyfile(good, path)
        shutil.copyfile(good + '.sha256', path + '.sha256')
    fused._build = copy_build
messages = []
class H(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger('gluon_transfer').addHandler(H())
ok = fused.load_kernel()
out = None
if ok:
    rng = np.random.RandomState(0)
    x, y, l = (rng.normal(size=(2, 3, 4, 5)).astype(np.float32) for _ in range(3))
    g = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    out = getattr(mx.nd, fused.OP_NAME)(*[mx.nd.array(a) for a in (x, y, l, g)], scale=2.0).asnumpy().tolist()
print(json.dumps({'loaded': ok, 'error': fused._state['error'], 'messages': messages, 'out': out}))
"""


def _probe(cache, build):
    env = dict(os.environ, GLUON_TRANSFER_CACHE=str(cache), OMP_NUM_THREADS='1')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, '-c', _PROBE, root, build], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, 'probe died with status %d:\n%s' % (proc.returncode, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected():
    rng = np.random.RandomState(0)
    x, y, l = (rng.normal(size=(2, 3, 4, 5)) for _ in range(3))
    g = rng.normal(size=(2, 3, 1, 1))
    w = np_sigmoid(l + g)
    return 2.0 * (y + w * (x - y))


@needs_kernel
@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_damaged_cached_library_is_rebuilt(tmp_path, damage):
    """A truncated cached library (it would kill every run with SIGBUS) and an empty one
    (it was never rebuilt) are detected, rebuilt -- by the real compiler for the truncated
    one; the empty one's rebuild copies a good build, to save a second compile -- and the
    kernel then computes the right numbers. The log says what happened in one clean line."""
    good = fused._library_path(mx)
    cache = tmp_path / 'cache'
    cache.mkdir()
    target = os.path.join(str(cache), os.path.basename(good))   # same key: same source, CPU, compiler
    with open(good, 'rb') as f:
        data = f.read()
    with open(target, 'wb') as f:
        f.write(data[:len(data) // 2] if damage == 'truncated' else b'')
    stale = target + '.tmpk1ll3d'                 # left by a builder that was killed
    with open(stale, 'wb'):
        pass
    res = _probe(cache, 'compile' if damage == 'truncated' else good)
    assert res['loaded'] and res['error'] is None, res
    np.testing.assert_allclose(np.array(res['out']), _expected(), rtol=1e-5, atol=1e-5)
    why = 'empty (0 bytes)' if damage == 'empty' else 'truncated ('
    assert len(res['messages']) == 1 and res['messages'][0].startswith(
        'cached fused AFF kernel %s is unusable (%s' % (target, why)), res['messages']
    assert res['messages'][0].endswith('; rebuilding it')
    assert fused._library_problem(target) is None
    assert sorted(os.listdir(str(cache))) == sorted(os.path.basename(target) + s for s in ('', '.lock', '.sha256'))
    # The next process loads the rebuilt library as it is (no build, no message).
    res = _probe(cache, '/nonexistent/never-used')
    assert res['loaded'] and res['messages'] == [], res


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    """Two threads standing for two processes (flock locks are per open file, so they
    exclude each other like processes): one builds, the other waits and loads its build."""
    import threading
    import time
    monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path))
    monkeypatch.setattr(fused, '_compiler', lambda: ('/usr/bin/g++', 'g++ test'))
    builds = []

    def fake_build(mx_, path):                  # a slow "compile" writing a tiny valid-looking ELF
        builds.append(path)
        time.sleep(0.5)
        shutil.copyfile(sys.executable, path)
        with open(path + '.sha256', 'w') as f:
            f.write(fused._digest(path))
    monkeypatch.setattr(fused, '_build', fake_build)
    monkeypatch.setattr(fused, '_elf_problem', lambda path, size: None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fused.ensure_library(mx))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(builds) == 1 and len(results) == 2 and results[0] == results[1] == builds[0]


@needs_kernel
def test_ops_take_flattened_maps():
    """(N, C, H*W) inputs (what the fusion blocks pass, see fusion._plain_layout) give the same
    numbers as (N, C, H, W): checked against numpy; g stays (N, C, 1, 1)."""
    rng = np.random.RandomState(4)
    x, y, l = (rng.normal(0, 2, size=(2, 3, 20)).astype(np.float32) for _ in range(3))
    g = rng.normal(size=(2, 3, 1, 1)).astype(np.float32)
    nd = [mx.nd.array(a) for a in (x, y, l, g)]
    for a in nd:
        a.attach_grad()
    dout = rng.normal(size=x.shape)
    with autograd.record():
        out = getattr(mx.nd, fused.OP_NAME)(*nd, scale=2.0)
    out.backward(mx.nd.array(dout))
    w = np_sigmoid(l.astype(np.float64) + g[:, :, :, 0])
    assert out.shape == x.shape
    np.testing.assert_allclose(out.asnumpy(), 2 * (y + w * (x - y)), rtol=1e-5, atol=1e-5)
    dl = 2 * dout * (x - y) * w * (1 - w)
    np.testing.assert_allclose(nd[2].grad.asnumpy(), dl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(nd[3].grad.asnumpy(), dl.sum(axis=2)[:, :, None, None], rtol=1e-4, atol=1e-5)
    z = mx.nd.array(x)
    z.attach_grad()
    with autograd.record():
        m = getattr(mx.nd, fused.MEAN_OP)(z)
    m.backward(mx.nd.ones((2, 3, 1, 1)))
    assert m.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(m.asnumpy()[:, :, 0, 0], x.astype(np.float64).mean(axis=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z.grad.asnumpy(), np.full(x.shape, 1 / 20.0), rtol=1e-6)
    with pytest.raises(mx.base.MXNetError, match='g of shape'):
        getattr(mx.nd, fused.OP_NAME)(*nd[:3], mx.nd.zeros((2, 3, 2)), scale=2.0).wait_to_read()
