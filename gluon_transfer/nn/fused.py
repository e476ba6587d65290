"""The fused CPU kernel of the AFF/iAFF fusion tail (``aff_kernel.cc``), built and loaded on demand.

``gt_aff_fuse(x, y, l, g, scale)`` computes ``scale * (y + sigmoid(l + g) * (x - y))`` (``g``
of shape (N, C, 1, 1) broadcast over H x W) and its backward in one pass each, where the
operator composition needs about seven forward and eight backward passes over the full map
(bench/README.md, AFF section); ``gt_global_mean(z)`` is the global branch's H x W average
(MXNet's Pooling backward on oneDNN-layout input took ~200 ms per block). It is an MXNet external operator library
(``mx.library.load``), compiled once per machine with ``g++ -O3 -fopenmp -march=native`` against the headers
shipped in the mxnet wheel (about 20 s) and cached in ``$GLUON_TRANSFER_CACHE`` (default
``~/.cache/gluon_transfer``).

The fusion blocks use it only where it applies: float32 on CPU, no AMP, and not while exporting
(exported graphs must load without the library; :func:`disabled`). Everywhere else -- no
compiler, a failed build (one log line says why), ``GLUON_TRANSFER_AFF_KERNEL=0`` -- they use the
operator composition, which computes the same function (tests/test_fusion.py checks both
against numpy).
"""
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

__all__ = ['load_kernel', 'kernel_active', 'disabled', 'OP_NAME', 'MEAN_OP']

OP_NAME = 'gt_aff_fuse'
MEAN_OP = 'gt_global_mean'
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'aff_kernel.cc')
_FLAGS = ['-O3', '-fopenmp', '-march=native', '-std=c++17', '-shared', '-fPIC']
_state = {'tried': False, 'loaded': False, 'error': None}
_lock = threading.Lock()
_local = threading.local()


def _cpu_tag():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(('model name', 'flags')):
                    return line
    except OSError:
        pass
    return ''


def _library_path(mx):
    key = hashlib.sha1()
    with open(_SOURCE, 'rb') as f:
        key.update(f.read())
    key.update(' '.join(_FLAGS + [mx.__version__, sys.platform, _cpu_tag()]).encode())
    cache = os.environ.get('GLUON_TRANSFER_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                                   'gluon_transfer')
    return os.path.join(cache, 'libgt_aff_%s.so' % key.hexdigest()[:16])


def _build(mx, path):
    root = os.path.dirname(os.path.abspath(mx.__file__))
    lib_api = os.path.join(root, 'src', 'lib_api.cc')
    include = os.path.join(root, 'include')
    if not os.path.isfile(lib_api):
        raise RuntimeError('this mxnet wheel has no src/lib_api.cc')
    cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not cxx:
        raise RuntimeError('no C++ compiler (g++) found')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    try:
        proc = subprocess.run([cxx] + _FLAGS + ['-I', include, lib_api, _SOURCE, '-o', tmp],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            raise RuntimeError('%s failed: %s' % (os.path.basename(cxx), proc.stdout.strip().splitlines()[-1:]))
        os.replace(tmp, path)  # atomic: concurrent builders never load a half-written file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_kernel():
    """Build (once per machine) and load the kernel library; True if ``gt_aff_fuse`` is usable.

    Never raises: a failure is logged once (logger ``gluon_transfer``, level WARNING) and the
    fusion blocks fall back to the operator composition."""
    if _state['tried']:
        return _state['loaded']
    with _lock:
        if _state['tried']:
            return _state['loaded']
        _state['tried'] = True
        if os.environ.get('GLUON_TRANSFER_AFF_KERNEL', '1').strip().lower() in ('0', 'false', 'no', 'off'):
            _state['error'] = 'disabled by GLUON_TRANSFER_AFF_KERNEL'
            return False
        import mxnet as mx
        try:
            path = _library_path(mx)
            if not os.path.isfile(path):
                _build(mx, path)
            mx.library.load(path, verbose=False)
            _state['loaded'] = hasattr(mx.nd, OP_NAME) and hasattr(mx.nd, MEAN_OP)
            if not _state['loaded']:
                raise RuntimeError('%s did not register %s and %s' % (path, OP_NAME, MEAN_OP))
        except Exception as err:  # any build/load problem: fall back, say why once
            _state['error'] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            logging.getLogger('gluon_transfer').warning(
                'fused AFF kernel unavailable (%s); using the slower operator composition', _state['error'])
        return _state['loaded']


@contextlib.contextmanager
def disabled():
    """Within this block, fusion graphs traced (hybridize / imperative calls) use the operator
    composition, e.g. for export: exported symbols must not need the kernel library."""
    prev = getattr(_local, 'off', False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = prev


def _amp_on():
    amp = sys.modules.get('mxnet.contrib.amp.amp')
    return bool(amp is not None and getattr(amp, '_amp_initialized', False))


def kernel_active(F, x, param):
    """Whether a fusion block should emit ``gt_aff_fuse`` now: kernel loaded, not disabled, no
    AMP, float32 on CPU (``x`` when imperative, else the block's ``param``)."""
    if getattr(_local, 'off', False) or _amp_on():
        return False
    import mxnet as mx
    if F is mx.nd:
        if x.context.device_type != 'cpu' or x.dtype != np.float32:
            return False
    else:
        if np.dtype(param.dtype) != np.float32:
            return False
        try:
            ctxs = param.list_ctx()
        except RuntimeError:  # deferred initialisation: contexts not known yet
            ctxs = []
        if any(c.device_type != 'cpu' for c in ctxs):
            return False
    return load_kernel()
