"""The fused CPU kernel of the AFF/iAFF fusion tail (``aff_kernel.cc``), built and loaded on demand.

``gt_aff_fuse(x, y, l, g, scale)`` computes ``scale * (y + sigmoid(l + g) * (x - y))`` (``g``
of shape (N, C, 1, 1) broadcast over H x W) and its backward in one pass each, where the
operator composition needs about seven forward and eight backward passes over the full map
(docs/benchmarks.md, AFF section); ``gt_global_mean(z)`` is the global branch's H x W average
(MXNet's Pooling backward on oneDNN-layout input took ~200 ms per block). It is an MXNet external operator library
(``mx.library.load``), compiled once per machine with ``g++ -O3 -fopenmp -march=native`` against the headers
shipped in the mxnet wheel (about 20 s) and cached in ``$GLUON_TRANSFER_CACHE`` (default
``~/.cache/gluon_transfer``). The cache key covers everything the binary depends on: the
source, the flags, the mxnet version, the CPU's instruction-set flags and model (what
``-march=native`` compiles for) and the compiler's path and version, so a cache shared between
hosts (a network home directory) never hands one host's build to another, where it could die
of SIGILL. Concurrent builders of one entry wait on a lock file; a build goes to a temporary
file that is moved into place (and removed on failure); and a cached library is checked
before it is loaded -- not empty, a complete ELF file (a truncated one would kill the process
with SIGBUS), the checksum recorded at build time -- and rebuilt when it fails.

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
import struct
import subprocess
import sys
import tempfile
import threading

import numpy as np

from ..cache import cache_dir

__all__ = ['load_kernel', 'kernel_active', 'disabled', 'OP_NAME', 'MEAN_OP']

OP_NAME = 'gt_aff_fuse'
MEAN_OP = 'gt_global_mean'
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'aff_kernel.cc')
_FLAGS = ['-O3', '-fopenmp', '-march=native', '-std=c++17', '-shared', '-fPIC']
_CPUINFO = '/proc/cpuinfo'
# The lines of /proc/cpuinfo that decide what -march=native emits: the instruction-set
# flags (x86 'flags', ARM 'Features') and the model (-mtune); the first CPU's are used.
_CPU_FIELDS = ('model name', 'flags', 'Features', 'CPU implementer', 'CPU architecture', 'CPU part')
_state = {'tried': False, 'loaded': False, 'error': None, 'path': None}
_lock = threading.Lock()
_local = threading.local()


def _cpu_tag(cpuinfo=None):
    """The ``_CPU_FIELDS`` lines of the first processor in ``cpuinfo`` (default
    ``/proc/cpuinfo``), or the platform's machine/processor names where there is no such file."""
    found = {}
    try:
        with open(cpuinfo or _CPUINFO) as f:
            for line in f:
                name, sep, value = line.partition(':')
                name = name.strip()
                if not sep:
                    if found:
                        break           # blank line: end of the first processor
                    continue
                if name in _CPU_FIELDS and name not in found:
                    found[name] = ' '.join(value.split())
    except OSError:
        pass
    if not found:
        import platform
        return 'machine=%s processor=%s' % (platform.machine(), platform.processor())
    return '\n'.join('%s: %s' % (k, found[k]) for k in _CPU_FIELDS if k in found)


def _compiler():
    """``(path, identity)`` of the C++ compiler (``$CXX``, else ``g++``/``c++`` on PATH); the
    identity is its resolved path and the first line of ``--version``."""
    cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not cxx:
        raise RuntimeError('no C++ compiler (g++) found')
    path = shutil.which(cxx)
    if not path:
        raise RuntimeError('C++ compiler %s not found' % cxx)
    try:
        proc = subprocess.run([path, '--version'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError('C++ compiler %s does not run (%s)' % (path, err)) from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError('C++ compiler %s --version failed' % path)
    return path, '%s | %s' % (os.path.realpath(path), lines[0].strip())


def _library_path(mx, cpu=None, compiler=None):
    """Cache path of the library for this source, mxnet, compiler and CPU.

    The key hashes the kernel source, the compile flags, the mxnet version, the platform,
    the CPU's instruction-set flags and model (``-march=native`` compiles for exactly those,
    so a cache shared between hosts never hands one host's build to another) and the
    compiler's path and version."""
    key = hashlib.sha1()
    with open(_SOURCE, 'rb') as f:
        key.update(f.read())
    cpu = _cpu_tag() if cpu is None else cpu
    compiler = _compiler()[1] if compiler is None else compiler
    key.update('\0'.join(_FLAGS + [mx.__version__, sys.platform, cpu, compiler]).encode())
    return cache_dir('libgt_aff_%s.so' % key.hexdigest()[:16])


def _digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return '%s %d' % (h.hexdigest(), os.path.getsize(path))


def _elf_problem(path, size):
    """Why the shared object at ``path`` cannot be mapped whole, or None. Checks the ELF
    header and that the program and section header tables and every segment's file range
    lie inside the file: ``dlopen`` maps segments by offset, and touching a page past the
    end of a truncated file kills the process with SIGBUS."""
    with open(path, 'rb') as f:
        head = f.read(64)
        if len(head) < 16 or head[:4] != b'\x7fELF':
            return 'not an ELF shared library'
        cls, order = head[4], {1: '<', 2: '>'}.get(head[5])
        if cls not in (1, 2) or order is None:
            return 'unknown ELF class/byte order'
        fmt, ph = (order + '16xHHIQQQIHHHHHH', order + 'IIQQQQQQ') if cls == 2 else \
                  (order + '16xHHIIIIIHHHHHH', order + 'IIIIIIII')
        if len(head) < struct.calcsize(fmt):
            return 'truncated ELF header'
        (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         _) = struct.unpack_from(fmt, head)
        if e_type != 3:
            return 'not a shared object (ELF type %d)' % e_type
        if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
            return 'truncated (%d bytes; its ELF header tables end past the file)' % size
        if phentsize < struct.calcsize(ph):
            return 'bad ELF program header size %d' % phentsize
        f.seek(phoff)
        table = f.read(phnum * phentsize)
        for i in range(phnum):
            fields = struct.unpack_from(ph, table, i * phentsize)
            offset, filesz = (fields[2], fields[5]) if cls == 2 else (fields[1], fields[4])
            if fields[0] == 1 and offset + filesz > size:       # PT_LOAD
                return 'truncated (%d bytes; segment %d needs bytes up to %d)' % (size, i, offset + filesz)
    return None


def _library_problem(path):
    """Why the cached library at ``path`` must not be loaded, or None when it is whole: it
    exists, is not empty, is a complete ELF shared object (:func:`_elf_problem`) and matches
    the SHA-256 and size recorded beside it (``path + '.sha256'``) when it was built."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 'missing'
    if size == 0:
        return 'empty (0 bytes)'
    try:
        problem = _elf_problem(path, size)
        if problem:
            return problem
        with open(path + '.sha256') as f:
            recorded = f.read().strip()
        if _digest(path) != recorded:
            return 'its checksum differs from the one recorded at build time'
    except FileNotFoundError:
        return 'no checksum recorded (%s.sha256)' % os.path.basename(path)
    except OSError as err:
        return 'unreadable (%s)' % (err.strerror or err)
    return None


@contextlib.contextmanager
def _file_lock(path):
    """Exclusive ``flock`` on ``path`` (created if needed): one build per cache entry at a time,
    across processes. Released when the holder exits, even when it is killed."""
    try:
        import fcntl
    except ImportError:         # not POSIX: builds are still atomic (os.replace), only not serialised
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(mx, path):
    """Compile into a temporary file beside ``path`` and move it into place (``os.replace``),
    then record its checksum; the temporary file is removed on any failure."""
    root = os.path.dirname(os.path.abspath(mx.__file__))
    lib_api = os.path.join(root, 'src', 'lib_api.cc')
    include = os.path.join(root, 'include')
    if not os.path.isfile(lib_api):
        raise RuntimeError('this mxnet wheel has no src/lib_api.cc')
    cxx = _compiler()[0]
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + '.tmp', dir=os.path.dirname(path))
    os.close(fd)
    try:
        proc = subprocess.run([cxx] + _FLAGS + ['-I', include, lib_api, _SOURCE, '-o', tmp],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            raise RuntimeError('%s failed: %s' % (os.path.basename(cxx), proc.stdout.strip().splitlines()[-1:]))
        digest = _digest(tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
        with open(tmp, 'w') as f:
            f.write(digest + '\n')
        os.replace(tmp, path + '.sha256')
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_library(mx):
    """Path of a whole, loadable library for this machine: the cached one when
    :func:`_library_problem` finds nothing wrong with it, else built (again) under the cache
    entry's lock. A damaged cache entry (empty, truncated, another checksum) is logged and
    rebuilt; temporary files left by a builder that was killed are removed."""
    path = _library_path(mx)
    if _library_problem(path) is None:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _file_lock(path + '.lock'):
        problem = _library_problem(path)        # another process may have built it meanwhile
        if problem is None:
            return path
        if problem != 'missing':
            logging.getLogger('gluon_transfer').warning('cached fused AFF kernel %s is unusable (%s); rebuilding it',
                                                        path, problem)
        prefix = os.path.basename(path) + '.tmp'
        for name in os.listdir(os.path.dirname(path)):
            if name.startswith(prefix):         # we hold the lock: no live builder owns these
                os.remove(os.path.join(os.path.dirname(path), name))
        _build(mx, path)
        problem = _library_problem(path)
        if problem is not None:
            raise RuntimeError('the library just built, %s, is unusable (%s)' % (path, problem))
    return path


def _one_line(err):
    """A one-line summary of an exception: MXNet's messages start with a C++ traceback
    header and ``File`` lines, which say nothing about the cause."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(('Traceback (most recent call last)', 'File "'))]
    if not lines:
        return type(err).__name__
    text = ': '.join(lines[:2])
    for prefix in ('MXNetError: ', 'mxnet.base.MXNetError: '):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


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
            path = ensure_library(mx)
            _state['path'] = path
            mx.library.load(path, verbose=False)
            _state['loaded'] = hasattr(mx.nd, OP_NAME) and hasattr(mx.nd, MEAN_OP)
            if not _state['loaded']:
                raise RuntimeError('%s did not register %s and %s' % (path, OP_NAME, MEAN_OP))
        except Exception as err:  # any build/load problem: fall back, say why once
            _state['error'] = _one_line(err)
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
