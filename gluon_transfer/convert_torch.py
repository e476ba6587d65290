"""PyTorch ``.pth`` files without PyTorch, and the functional-zoo -> GluonCV key maps.

Reading (:func:`read_pth`)
--------------------------
Both ``torch.save`` layouts are read with the standard library and numpy:

* the zip layout (torch >= 1.6): ``<name>/data.pkl`` (the pickled object) and one raw
  little-endian file ``<name>/data/<key>`` per storage;
* the legacy layout (the functional-zoo era): consecutive pickles -- magic number, protocol
  version, system info, the object, the list of storage keys -- followed by each storage
  as an int64 element count and its raw bytes.

Unpickling is restricted: ``find_class`` resolves only the tensor/storage rebuild globals
(``torch._utils._rebuild_tensor{,_v2,_v3}``, ``_rebuild_parameter``, the typed
``torch.*Storage`` classes, ``torch`` dtypes, ``collections.OrderedDict``) to local
stand-ins, and ``persistent_load`` maps storages to numpy arrays. Any other global
(``os.system``, ``builtins.eval``...) raises :class:`CheckpointError` before anything is
called: a ``.pth`` file can otherwise run arbitrary code when loaded.

Converting (:func:`convert_state_dict`)
---------------------------------------
The functional-zoo files are flat ``{name: array}`` dicts with BN folded away (reference
notes section 1.6). Every GluonCV BatchNorm gets ``running_mean = 0`` and
``running_var = 1 - eps`` so that in inference mode ``BN(x) = gamma * x + beta`` exactly.

``resnet-18-at-export`` (pre-activation, ``affine*.{a,b}``) -> ``resnet18_v2``::

    conv0 -> features.1.weight;  affine0.{a,b} -> features.2.{gamma,beta}
    groupG.blockB.{affine0, conv0, affine1, conv1, conv_dim} ->
        features.(5+G).B.{bn1, conv1.weight, bn2, conv2.weight, downsample.weight}
    affine_last -> features.9;  fc.{weight,bias} -> output.{weight,bias}
    features.0 (data BN) and features.5.0.bn1 (absent in the source): identity
    (exact for features.5.0.bn1: its input is post-ReLU/max-pool, so relu(x) = x).

``resnet-18-export`` / ``resnet-34-export`` (post-activation, BN folded into conv biases)
-> ``resnet18_v1b`` / ``resnet34_v1b``::

    conv0.{weight,bias} -> conv1.weight, bn1 (gamma 1, beta = bias)
    groupG.blockB.conv{0,1}.{weight,bias} -> layer(G+1).B.conv{1,2}.weight, bn{1,2} (gamma 1, beta = bias)
    groupG.block0.conv_dim.{weight[,bias]} -> layer(G+1).0.downsample.0.weight, downsample.1 (beta = bias or 0)
    fc.{weight,bias} -> fc.{weight,bias}

Conv weights are OIHW and FC weights (out, in) in both frameworks: nothing is transposed.
"""
import collections
import io
import os
import pickle
import re
import struct
import zipfile

import numpy as np

from .errors import CheckpointError

__all__ = ['read_pth', 'flatten_state', 'convert_state_dict', 'convert_file', 'detect_arch', 'ARCHS', 'LEGACY_MAGIC']

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

_STORAGE_DTYPES = {
    'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2', 'BFloat16Storage': 'bfloat16',
    'LongStorage': '<i8', 'IntStorage': '<i4', 'ShortStorage': '<i2', 'CharStorage': 'i1',
    'ByteStorage': 'u1', 'BoolStorage': '?',
}
_TORCH_DTYPES = {
    'float32': '<f4', 'float': '<f4', 'float64': '<f8', 'double': '<f8', 'float16': '<f2', 'half': '<f2',
    'bfloat16': 'bfloat16', 'int64': '<i8', 'long': '<i8', 'int32': '<i4', 'int': '<i4', 'int16': '<i2',
    'short': '<i2', 'int8': 'i1', 'uint8': 'u1', 'bool': '?',
}


class _DType:
    """Stand-in for a ``torch.*Storage`` class or a ``torch`` dtype."""

    def __init__(self, name, code):
        self.name, self.code = name, code

    @property
    def itemsize(self):
        return 2 if self.code == 'bfloat16' else np.dtype(self.code).itemsize

    def decode(self, raw):
        if self.code == 'bfloat16':       # the upper half of a float32
            bits = np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16
            return bits.view(np.float32)
        return np.frombuffer(raw, dtype=self.code)


class _Storage:
    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.array = None


class _TensorRef:
    """A tensor whose storage bytes may arrive later (legacy files store them after the pickle)."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)
        self.dtype = dtype

    def materialise(self, path):
        base = self.storage.array
        if base is None:
            raise CheckpointError('%s: storage %s has no data' % (path, self.storage.key))
        if self.dtype is not None and self.dtype.code != self.storage.dtype.code:
            raise CheckpointError('%s: a tensor of dtype %s over a %s storage is not supported'
                                  % (path, self.dtype.name, self.storage.dtype.name))
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise CheckpointError('%s: negative tensor size/stride/offset' % path)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else -1
        if last >= base.size:
            raise CheckpointError('%s: a tensor reaches element %d of a storage of %d elements'
                                  % (path, last, base.size))
        if not all(self.size):
            return np.zeros(self.size, dtype=base.dtype)
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=[s * base.itemsize for s in self.stride])
        return np.array(view, order='C')       # a contiguous, writable copy


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    return data


def _allowed(module, name):
    if (module, name) == ('collections', 'OrderedDict'):
        return collections.OrderedDict
    if module == 'torch._utils':
        return {'_rebuild_tensor': _rebuild_tensor, '_rebuild_tensor_v2': _rebuild_tensor,
                '_rebuild_tensor_v3': _rebuild_tensor_v3, '_rebuild_parameter': _rebuild_parameter,
                '_rebuild_parameter_with_state': _rebuild_parameter}.get(name)
    if module == 'torch' and name in _STORAGE_DTYPES:
        return _DType(name, _STORAGE_DTYPES[name])
    if module == 'torch' and name in _TORCH_DTYPES:
        return _DType(name, _TORCH_DTYPES[name])
    return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, path, storages):
        super().__init__(f)
        self._path, self._storages = path, storages

    def find_class(self, module, name):
        obj = _allowed(module, name)
        if obj is None:
            raise CheckpointError('refusing to load %s: its pickle references %s.%s, which is not a tensor or '
                                  'storage type (a .pth file can run code when unpickled; only tensor data is '
                                  'accepted here)' % (self._path, module, name))
        return obj

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage' and isinstance(pid[1], _DType)):
            raise CheckpointError('%s: unsupported persistent id %r' % (self._path, pid[:2] if isinstance(pid, tuple)
                                                                         else type(pid).__name__))
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError('%s: storage views (pre-0.4 torch files) are not supported' % self._path)
        key = str(pid[2])
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(pid[1], key, int(pid[4]))
        return st


def _materialise(obj, path):
    if isinstance(obj, _TensorRef):
        return obj.materialise(path)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, path) for v in obj)
    return obj


def _read_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
        if not pkl:
            raise CheckpointError('%s is a zip file but not a torch.save archive (no <name>/data.pkl)' % path)
        root = pkl[0][:-len('data.pkl')]
        order = '<'
        if root + 'byteorder' in names and zf.read(root + 'byteorder').strip() == b'big':
            order = '>'
        storages = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), path, storages).load()
        for key, st in storages.items():
            name = root + 'data/' + key
            if name not in names:
                raise CheckpointError('%s: storage file %s is missing' % (path, name))
            raw = zf.read(name)
            if order == '>' and st.dtype.code != 'bfloat16' and st.dtype.itemsize > 1:
                st.array = np.frombuffer(raw, dtype=np.dtype(st.dtype.code).newbyteorder('>')).astype(st.dtype.code)
            else:
                st.array = st.dtype.decode(raw)
    return obj, storages


def _read_legacy(path):
    with open(path, 'rb') as f:
        head = [_Unpickler(f, path, {}).load() for _ in range(3)]
        if head[0] != LEGACY_MAGIC:
            raise CheckpointError('%s is not a torch.save file (wrong magic number)' % path)
        if head[1] != 1001:
            raise CheckpointError('%s: unsupported legacy torch protocol %r' % (path, head[1]))
        if isinstance(head[2], dict) and not head[2].get('little_endian', True):
            raise CheckpointError('%s: big-endian legacy files are not supported' % path)
        storages = {}
        obj = _Unpickler(f, path, storages).load()
        keys = _Unpickler(f, path, {}).load()
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise CheckpointError('%s: storage %s is listed but never used' % (path, key))
            size = f.read(8)
            if len(size) != 8:
                raise CheckpointError('%s is truncated (storage %s)' % (path, key))
            numel = struct.unpack('<q', size)[0]
            raw = f.read(numel * st.dtype.itemsize)
            if len(raw) != numel * st.dtype.itemsize:
                raise CheckpointError('%s is truncated (storage %s)' % (path, key))
            st.array = st.dtype.decode(raw)
    return obj, storages


def read_pth(path):
    """Load a ``torch.save`` file (zip or legacy layout) into numpy arrays, safely.

    Returns the saved object with every tensor replaced by a contiguous ``np.ndarray``
    (bfloat16 becomes float32). Raises :class:`CheckpointError` for missing, truncated or
    foreign files and for pickles that reference anything but tensor/storage globals."""
    if not os.path.isfile(path):
        raise CheckpointError('file not found: %s' % path)
    if zipfile.is_zipfile(path):
        obj, _ = _read_zip(path)
    else:
        with open(path, 'rb') as f:
            start = f.read(512)
        if len(start) >= 262 and start[257:262] == b'ustar':
            raise CheckpointError('%s uses the tar layout of torch < 0.4; re-save it with a newer torch' % path)
        try:
            obj, _ = _read_legacy(path)
        except (pickle.UnpicklingError, EOFError, ValueError, struct.error) as err:
            raise CheckpointError('cannot read %s as a torch.save file: %s' % (path, err)) from None
    return _materialise(obj, path)


def flatten_state(obj, path='file'):
    """A ``{name: array}`` dict from a state dict, optionally nested (``{'params': {...}}``,
    ``{'state_dict': ...}``, ``{'model': ...}``); non-array entries are an error."""
    if isinstance(obj, dict):
        for wrapper in ('state_dict', 'params', 'model'):
            if wrapper in obj and isinstance(obj[wrapper], dict) and not isinstance(obj[wrapper], np.ndarray):
                return flatten_state(obj[wrapper], path)
        out = {}
        for k, v in obj.items():
            if not isinstance(v, np.ndarray):
                raise CheckpointError('%s: entry %r is a %s, not a tensor' % (path, k, type(v).__name__))
            out[str(k)] = v
        return out
    raise CheckpointError('%s holds a %s, not a dict of tensors' % (path, type(obj).__name__))


# ---------------------------------------------------------------- key maps
ARCHS = ('resnet18_v2', 'resnet18_v1b', 'resnet34_v1b')
_V1B_BLOCKS = {(2, 2, 2, 2): 'resnet18_v1b', (3, 4, 6, 3): 'resnet34_v1b'}


def _blocks_per_group(sd):
    counts = collections.Counter()
    for k in sd:
        m = re.match(r'group(\d+)\.block(\d+)\.', k)
        if m:
            g, b = int(m.group(1)), int(m.group(2))
            counts[g] = max(counts[g], b + 1)
    return tuple(counts[g] for g in sorted(counts))


def detect_arch(sd):
    """``'resnet18_v2'`` for the AT pre-activation export (``affine*`` keys); a v1b ResNet
    from the block counts otherwise."""
    if 'affine0.a' in sd:
        return 'resnet18_v2'
    blocks = _blocks_per_group(sd)
    if blocks in _V1B_BLOCKS:
        return _V1B_BLOCKS[blocks]
    raise CheckpointError('cannot tell the architecture: blocks per group %s are neither ResNet-18 (2,2,2,2) nor '
                          'ResNet-34 (3,4,6,3), and there are no affine* keys of the AT ResNet-18 export' % (blocks,))


class _Taker:
    """Reads source keys, remembering which were used, so leftovers can be reported."""

    def __init__(self, sd, name):
        self.sd, self.name, self.used = sd, name, set()

    def __call__(self, key, optional=False):
        if key not in self.sd:
            if optional:
                return None
            raise CheckpointError('%s: key %r is missing (not a %s file?)' % (self.name, key, self.arch))
        self.used.add(key)
        return np.asarray(self.sd[key], dtype=np.float32)

    def leftovers(self):
        return sorted(set(self.sd) - self.used)


def _bn(out, prefix, channels, eps, gamma=None, beta=None):
    out[prefix + '.gamma'] = np.ones(channels, np.float32) if gamma is None else gamma
    out[prefix + '.beta'] = np.zeros(channels, np.float32) if beta is None else beta
    out[prefix + '.running_mean'] = np.zeros(channels, np.float32)
    out[prefix + '.running_var'] = np.full(channels, 1.0 - eps, np.float32)


def _convert_at_v2(take, eps):
    out = {}
    _bn(out, 'features.0', 3, eps)
    w = take('conv0')
    out['features.1.weight'] = w
    _bn(out, 'features.2', w.shape[0], eps, take('affine0.a'), take('affine0.b'))
    for g, n in enumerate((2, 2, 2, 2)):
        for b in range(n):
            src, dst = 'group%d.block%d.' % (g, b), 'features.%d.%d.' % (5 + g, b)
            conv0 = take(src + 'conv0')
            if g == 0 and b == 0:
                _bn(out, dst + 'bn1', conv0.shape[1], eps)          # no affine0 in the source
            else:
                _bn(out, dst + 'bn1', conv0.shape[1], eps, take(src + 'affine0.a'), take(src + 'affine0.b'))
            out[dst + 'conv1.weight'] = conv0
            _bn(out, dst + 'bn2', conv0.shape[0], eps, take(src + 'affine1.a'), take(src + 'affine1.b'))
            out[dst + 'conv2.weight'] = take(src + 'conv1')
            dim = take(src + 'conv_dim', optional=(b > 0 or g == 0))
            if dim is not None:
                out[dst + 'downsample.weight'] = dim
    last = take('affine_last.a')
    _bn(out, 'features.9', last.shape[0], eps, last, take('affine_last.b'))
    out['output.weight'] = take('fc.weight')
    out['output.bias'] = take('fc.bias')
    return out


def _convert_fb_v1b(take, blocks, eps):
    out = {}
    w = take('conv0.weight')
    out['conv1.weight'] = w
    _bn(out, 'bn1', w.shape[0], eps, beta=take('conv0.bias'))
    for g, n in enumerate(blocks):
        for b in range(n):
            src, dst = 'group%d.block%d.' % (g, b), 'layer%d.%d.' % (g + 1, b)
            for i in (0, 1):
                w = take(src + 'conv%d.weight' % i)
                out[dst + 'conv%d.weight' % (i + 1)] = w
                _bn(out, dst + 'bn%d' % (i + 1), w.shape[0], eps, beta=take(src + 'conv%d.bias' % i))
            dim = take(src + 'conv_dim.weight', optional=True)
            if dim is not None:
                out[dst + 'downsample.0.weight'] = dim
                _bn(out, dst + 'downsample.1', dim.shape[0], eps, beta=take(src + 'conv_dim.bias', optional=True))
    out['fc.weight'] = take('fc.weight')
    out['fc.bias'] = take('fc.bias')
    return out


def convert_state_dict(sd, arch=None, eps=1e-5, name='state dict'):
    """Map a functional-zoo state dict onto GluonCV structural keys.

    Returns ``(arch, {gluon key: float32 array})`` for ``arch`` in :data:`ARCHS` (detected
    when None). ``eps`` is the GluonCV BatchNorm epsilon (1e-5). Every source key must be
    used: a leftover or missing key raises :class:`CheckpointError` naming it."""
    arch = arch or detect_arch(sd)
    take = _Taker(sd, name)
    take.arch = arch
    if arch == 'resnet18_v2':
        if 'affine0.a' not in sd:
            raise CheckpointError('%s is not the AT ResNet-18 export (no affine0.a) and cannot map onto resnet18_v2'
                                  % name)
        out = _convert_at_v2(take, eps)
    elif arch in ('resnet18_v1b', 'resnet34_v1b'):
        want = {'resnet18_v1b': (2, 2, 2, 2), 'resnet34_v1b': (3, 4, 6, 3)}[arch]
        if _blocks_per_group(sd) != want:
            raise CheckpointError('%s has %s blocks per group; %s needs %s'
                                  % (name, _blocks_per_group(sd), arch, want))
        out = _convert_fb_v1b(take, want, eps)
    else:
        raise CheckpointError('unknown target %r; valid: %s' % (arch, ', '.join(ARCHS)))
    left = take.leftovers()
    if left:
        raise CheckpointError('%s: key %r has no place in %s (%d unused keys)' % (name, left[0], arch, len(left)))
    return arch, out


def convert_file(src, dst, arch=None):
    """``.pth`` -> GluonCV ``.params``; the result is loaded into a fresh GluonCV network with
    strict key/shape checks before it is written. Returns ``(arch, number of arrays)``."""
    import mxnet as mx
    from .weights import load_params
    from .zoo import get_model
    sd = flatten_state(read_pth(src), src)
    arch = arch or detect_arch(sd)
    net = get_model(arch, classes=int(np.asarray(sd['fc.weight']).shape[0]))
    eps = {blk._kwargs.get('eps') for blk in _all_blocks(net) if type(blk).__name__ == 'BatchNorm'}
    if eps != {1e-5}:
        raise CheckpointError('%s: unexpected BatchNorm epsilons %s' % (arch, sorted(eps)))
    arch, params = convert_state_dict(sd, arch, 1e-5, os.path.basename(src))
    tmp = dst + '.tmp'
    mx.nd.save(tmp, {k: mx.nd.array(v) for k, v in params.items()})
    try:
        load_params(net, tmp)            # initialises every parameter from the file
        net.save_parameters(dst)
    finally:
        os.remove(tmp)
    return arch, len(params)


def _all_blocks(block):
    yield block
    for child in block._children.values():
        yield from _all_blocks(child)
