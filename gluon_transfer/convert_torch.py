"""PyTorch ``.pth`` files without PyTorch, and the PyTorch -> Gluon key maps.

Reading (:func:`read_pth`)
--------------------------
Both ``torch.save`` layouts and safetensors files are read with the standard library and numpy:

* the zip layout (torch >= 1.6): ``<name>/data.pkl`` (the pickled object) and one raw
  little-endian file ``<name>/data/<key>`` per storage;
* the legacy layout (the functional-zoo era): consecutive pickles -- magic number, protocol
  version, system info, the object, the list of storage keys -- followed by each storage
  as an int64 element count and its raw bytes;
* ``.safetensors`` (timm / Hugging Face hub weights): an 8-byte header length, a JSON
  header of names, dtypes, shapes and byte ranges, then the raw data (no pickle at all).

Unpickling is restricted: ``find_class`` resolves only the tensor/storage rebuild globals
(``torch._utils._rebuild_tensor{,_v2,_v3}``, ``_rebuild_parameter``, the typed
``torch.*Storage`` classes, ``torch`` dtypes, ``collections.OrderedDict``) and
``argparse.Namespace`` (the ``args`` of timm training checkpoints, kept as inert data) to
local stand-ins, and ``persistent_load`` maps storages to numpy arrays. Any other global
(``os.system``, ``builtins.eval``...) raises :class:`CheckpointError` before anything is
called: a ``.pth`` file can otherwise run arbitrary code when loaded.

Nothing is allocated from a size the file merely declares: a storage must fit in the bytes
the file really holds (legacy: the bytes left after its header; zip: its member, whose
declared size must agree with the pickle and with the archive's size), and a tensor may
not address more than its storage (or, for a broadcast view, more bytes than the file). A
violation is a one-line :class:`CheckpointError` naming the tensor.

Converting (:func:`convert`)
----------------------------
The source layout is detected from the keys (:func:`detect_source`); ``--arch`` may name
the target but must agree with the file. Every source key is either placed (possibly
renamed) or dropped for a stated reason; a key that fits nowhere, a missing key or a shape
that does not fit the target is an error naming the key. Conv weights are OIHW and FC
weights (out, in) in both frameworks: nothing is transposed. PyTorch BatchNorm
``weight/bias`` become Gluon ``gamma/beta``; ``running_mean/var`` keep their names;
``num_batches_tracked`` (a step counter, unused in inference) is dropped. In inference,
``BN(x) = gamma (x - mean) / sqrt(var + eps) + beta`` in both frameworks, so the target's
``eps`` must be the source's: 1e-5 for torchvision's ResNets and MobileNetV2, 1e-3 for the
Inception basic convs (checked against the built network).

torchvision ResNet-18/34/50/101/152 -> GluonCV ``resnet{18,34,50,101,152}_v1b``, key for key
(torchvision's ResNet is "v1.5": the stride sits on the 3x3 conv of a bottleneck, as in
v1b; GluonCV ``resnet*_v1`` strides the first 1x1 and does not fit)::

    conv1, bn1, layerL.i.{convK, bnK, downsample.0, downsample.1}, fc    (same names)

torchvision MobileNetV2 -> GluonCV ``mobilenetv2_1.0``::

    features.0.{0,1}                 -> features.{0,1}            (stem conv, BN)
    features.1.conv.{0.0,0.1,1,2}    -> features.3.out.{0,1,3,4}   (t = 1: depthwise, BN, project, BN)
    features.j.conv.{0.0,0.1,1.0,1.1,2,3} -> features.(j+2).out.{0,1,3,4,6,7}   (j = 2..17)
    features.18.{0,1}                -> features.{20,21}           (1x1 -> 1280, BN)
    classifier.1.weight (N, 1280)    -> output.0.weight (N, 1280, 1, 1)

GluonCV's classifier is a bias-free 1x1 convolution: ``classifier.1.bias`` has no place
unless it is zero (then it is dropped, exactly); otherwise the conversion needs ``classes``
(a new head) or ``drop_head``.

torchvision Inception-v3 -> GluonCV ``inceptionv3``: the same blocks in the same order;
a basic conv ``M.conv`` / ``M.bn`` becomes ``P.0`` / ``P.1`` where ``P`` is the block's
position in GluonCV's ``features`` (Conv2d_1a/2a/2b -> features.0/1/2, Conv2d_3b/4a ->
features.4/5, Mixed_5b..5d -> 7..9, Mixed_6a -> 10, Mixed_6b..6e -> 11..14, Mixed_7a -> 15,
Mixed_7b/7c -> 16/17) and the branch's position inside it (see ``_V3_BRANCHES``); ``fc``
-> ``output``. ``AuxLogits.*`` (the training-only auxiliary classifier, absent from GluonCV)
is dropped. torchvision's ImageNet Inception-v3 is built with ``transform_input=True``: its
forward first maps an ImageNet-normalised input to ``(x - 0.5) / 0.5`` per channel,
``x'_c = a_c x_c + b_c`` with ``a_c = std_c / 0.5``, ``b_c = (mean_c - 0.5) / 0.5``. The
first conv is unpadded, so this folds exactly into it and its BN::

    W'[o, c] = a_c W[o, c];   running_mean'[o] = running_mean[o] - sum_c b_c sum_ij W[o, c, i, j]

(``transform_input=False`` skips it, for models built without it). GluonCV's head pools
with a fixed 8x8 window: the network needs 299 x 299 inputs (torchvision's pool adapts).

timm ``inception_v4`` -> :mod:`gluon_transfer.models.inception_v4`: the same names
(``features.i...conv``, ``features.i...bn``), BN renamed as above, ``last_linear`` ->
``output``. timm's weights expect ``(x - 0.5) / 0.5`` inputs; ``imagenet_input=True`` folds
that same affine map into ``features.0`` so the network takes ImageNet-normalised input
(what this project's data pipeline feeds).

Functional-zoo files (the attention-transfer ResNets) are flat ``{name: array}`` dicts with
BN folded away (reference notes section 1.6). Every GluonCV BatchNorm gets
``running_mean = 0`` and ``running_var = 1 - eps`` so that in inference mode
``BN(x) = gamma * x + beta`` exactly.

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

The classifier
--------------
By default the source's classifier is converted (its size sets ``classes``). ``classes=N``
replaces it by a new N-way classifier (weights ~ N(0, 0.01^2) from a fixed seed, bias 0)
and ``drop_head=True`` writes no classifier at all; either way the source's classifier keys
are reported as dropped.
"""
import collections
import io
import os
import pickle
import re
import struct
import zipfile
import zlib

import numpy as np

from .errors import CheckpointError, ConfigError

__all__ = ['read_pth', 'flatten_state', 'convert', 'convert_state_dict', 'convert_file', 'detect_arch',
           'detect_source', 'Conversion', 'ARCHS', 'LEGACY_MAGIC']

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
# deflate cannot expand data by more than about 1032:1
_MAX_DEFLATE_RATIO = 1032


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


class _Inert:
    """Stand-in for ``argparse.Namespace``: keeps the pickled state as data, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.state = kwargs

    def __setstate__(self, state):
        self.state = state


class _Storage:
    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.array = None


class _TensorRef:
    """A tensor whose storage bytes may arrive later (legacy files store them after the pickle)."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)
        self.dtype = dtype

    def materialise(self, path, key, file_size):
        base = self.storage.array
        where = '%s: tensor %r' % (path, key)
        if base is None:
            raise CheckpointError('%s: storage %s has no data' % (where, self.storage.key))
        if self.dtype is not None and self.dtype.code != self.storage.dtype.code:
            raise CheckpointError('%s: a tensor of dtype %s over a %s storage is not supported'
                                  % (where, self.dtype.name, self.storage.dtype.name))
        if len(self.size) != len(self.stride):
            raise CheckpointError('%s: size %s and stride %s disagree' % (where, self.size, self.stride))
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise CheckpointError('%s: negative tensor size/stride/offset' % where)
        numel = int(np.prod(self.size, dtype=object)) if self.size else 1
        if numel > base.size and numel * base.itemsize > file_size:
            raise CheckpointError('%s declares %d elements (%s) over a storage of %d; the file has only %d bytes'
                                  % (where, numel, 'x'.join(map(str, self.size)), base.size, file_size))
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) if numel else -1
        if last >= base.size:
            raise CheckpointError('%s reaches element %d of a storage of %d elements' % (where, last, base.size))
        if not numel:
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
    if (module, name) == ('argparse', 'Namespace'):
        return _Inert
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
        if not isinstance(pid[4], int) or pid[4] < 0:
            raise CheckpointError('%s: storage %s declares %r elements' % (self._path, pid[2], pid[4]))
        key = str(pid[2])
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(pid[1], key, int(pid[4]))
        return st


def _walk_tensors(obj, trail=''):
    """``(key path, _TensorRef)`` for every tensor in a nested dict/list."""
    if isinstance(obj, _TensorRef):
        yield trail, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_tensors(v, '%s.%s' % (trail, k) if trail else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, '%s.%d' % (trail, i) if trail else str(i))


def _users(obj):
    """``{storage key: first tensor key using it}``, so storage errors can name a tensor."""
    out = {}
    for key, ref in _walk_tensors(obj):
        out.setdefault(ref.storage.key, key)
    return out


def _materialise(obj, path, file_size, trail=''):
    if isinstance(obj, _TensorRef):
        return obj.materialise(path, trail, file_size)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, path, file_size, '%s.%s' % (trail, k) if trail else str(k)))
                         for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, path, file_size, '%s.%d' % (trail, i) if trail else str(i))
                         for i, v in enumerate(obj))
    return obj


def _storage_error(path, st, users, what):
    return CheckpointError('%s: storage %s (tensor %r) %s' % (path, st.key, users.get(st.key, '?'), what))


def _read_zip(path, file_size):
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
        users = _users(obj)
        for key, st in storages.items():
            name = root + 'data/' + key
            if name not in names:
                raise _storage_error(path, st, users, 'has no data file %s' % name)
            info = zf.getinfo(name)
            want = st.numel * st.dtype.itemsize
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
            if info.file_size != want:
                raise _storage_error(path, st, users, 'declares %d elements (%d bytes) but its data file holds %d '
                                     'bytes' % (st.numel, want, info.file_size))
            if info.compress_size > file_size or info.file_size > ratio * max(info.compress_size, 1):
                raise _storage_error(path, st, users, 'declares %d bytes, more than the %d-byte file can hold'
                                     % (info.file_size, file_size))
            raw = zf.read(name)
            if order == '>' and st.dtype.code != 'bfloat16' and st.dtype.itemsize > 1:
                st.array = np.frombuffer(raw, dtype=np.dtype(st.dtype.code).newbyteorder('>')).astype(st.dtype.code)
            else:
                st.array = st.dtype.decode(raw)
    return obj, storages


def _read_legacy(path, file_size):
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
        if not isinstance(keys, (list, tuple)):
            raise CheckpointError('%s: the storage key list is a %s, not a list' % (path, type(keys).__name__))
        users = _users(obj)
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise CheckpointError('%s: storage %s is listed but never used' % (path, key))
            size = f.read(8)
            if len(size) != 8:
                raise _storage_error(path, st, users, 'is missing: the file is truncated')
            numel = struct.unpack('<q', size)[0]
            left = file_size - f.tell()
            if numel < 0 or numel * st.dtype.itemsize > left:
                raise _storage_error(path, st, users, 'declares %d elements (%d bytes) but only %d bytes are left in '
                                     'the file (truncated or corrupt)' % (numel, numel * st.dtype.itemsize, left))
            if numel != st.numel:
                raise _storage_error(path, st, users, 'holds %d elements but its pickle declares %d'
                                     % (numel, st.numel))
            st.array = st.dtype.decode(f.read(numel * st.dtype.itemsize))
    return obj, storages


_SAFETENSORS_DTYPES = {'F32': '<f4', 'F64': '<f8', 'F16': '<f2', 'BF16': 'bfloat16', 'I64': '<i8', 'I32': '<i4',
                       'I16': '<i2', 'I8': 'i1', 'U8': 'u1', 'BOOL': '?'}


def _is_safetensors(path, file_size):
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and 8 + struct.unpack('<Q', head[:8])[0] <= file_size


def _read_safetensors(path, file_size):
    """A ``.safetensors`` file (timm / Hugging Face hub weights): an 8-byte little-endian
    header length, a JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}}``
    and the raw little-endian data; no code can be embedded in it."""
    import json
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        try:
            header = json.loads(f.read(n).decode('utf-8'))
        except ValueError as err:
            raise CheckpointError('%s: unreadable safetensors header: %s' % (path, err)) from None
        base = 8 + n
        out = collections.OrderedDict()
        for key, meta in header.items():
            if key == '__metadata__':
                continue
            if not isinstance(meta, dict) or meta.get('dtype') not in _SAFETENSORS_DTYPES:
                raise CheckpointError('%s: tensor %r has an unsupported entry %r' % (path, key, meta))
            dt = _DType(meta['dtype'], _SAFETENSORS_DTYPES[meta['dtype']])
            shape = tuple(int(s) for s in meta.get('shape', ()))
            begin, end = (int(v) for v in meta.get('data_offsets', (-1, -1)))
            numel = int(np.prod(shape, dtype=object)) if shape else 1
            if any(s < 0 for s in shape) or not 0 <= begin <= end or end - begin != numel * dt.itemsize \
                    or base + end > file_size:
                raise CheckpointError('%s: tensor %r declares shape %s over bytes [%d, %d) of a %d-byte data '
                                      'section' % (path, key, shape, begin, end, file_size - base))
            f.seek(base + begin)
            out[key] = np.array(dt.decode(f.read(end - begin)).reshape(shape))
    return out


def read_pth(path):
    """Load a ``torch.save`` file (zip or legacy layout) into numpy arrays, safely.

    Returns the saved object with every tensor replaced by a contiguous ``np.ndarray``
    (bfloat16 becomes float32). A ``.safetensors`` file is read too (a flat dict). Raises
    :class:`CheckpointError` for missing, truncated or foreign files, for sizes the file
    cannot hold and for pickles that reference anything but tensor/storage globals."""
    if not os.path.isfile(path):
        raise CheckpointError('file not found: %s' % path)
    file_size = os.path.getsize(path)
    try:
        if _is_safetensors(path, file_size):
            return _read_safetensors(path, file_size)
        if zipfile.is_zipfile(path):
            obj, _ = _read_zip(path, file_size)
        else:
            with open(path, 'rb') as f:
                start = f.read(512)
            if len(start) >= 262 and start[257:262] == b'ustar':
                raise CheckpointError('%s uses the tar layout of torch < 0.4; re-save it with a newer torch' % path)
            obj, _ = _read_legacy(path, file_size)
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error, zipfile.BadZipFile, zlib.error,
            IndexError, TypeError, KeyError) as err:
        raise CheckpointError('cannot read %s as a torch.save file: %s: %s'
                              % (path, type(err).__name__, str(err).splitlines()[0] if str(err) else '')) from None
    return _materialise(obj, path, file_size)


_WRAPPERS = ('state_dict', 'params', 'model')


def flatten_state(obj, path='file', trail=None):
    """A ``{name: array}`` dict from a state dict, optionally nested (``{'params': {...}}``,
    ``{'state_dict': ...}``, ``{'model': ...}``); non-array entries are an error. The
    wrapper keys followed are appended to ``trail`` (a list) when given."""
    if isinstance(obj, dict):
        for wrapper in _WRAPPERS:
            if wrapper in obj and isinstance(obj[wrapper], dict):
                if trail is not None:
                    trail.append(wrapper)
                return flatten_state(obj[wrapper], path, trail)
        out = collections.OrderedDict()
        for k, v in obj.items():
            if not isinstance(v, np.ndarray):
                raise CheckpointError('%s: entry %r is a %s, not a tensor' % (path, k, type(v).__name__))
            out[str(k)] = v
        return out
    raise CheckpointError('%s holds a %s, not a dict of tensors' % (path, type(obj).__name__))


# ---------------------------------------------------------------- layouts and targets
_TV_RESNETS = {(2, 2, 2, 2, False): 'resnet18_v1b', (3, 4, 6, 3, False): 'resnet34_v1b',
               (3, 4, 6, 3, True): 'resnet50_v1b', (3, 4, 23, 3, True): 'resnet101_v1b',
               (3, 8, 36, 3, True): 'resnet152_v1b'}
_FZ_BLOCKS = {'resnet18_v1b': (2, 2, 2, 2), 'resnet34_v1b': (3, 4, 6, 3)}
ARCHS = ('resnet18_v2', 'resnet18_v1b', 'resnet34_v1b', 'resnet50_v1b', 'resnet101_v1b', 'resnet152_v1b',
         'mobilenetv2_1.0', 'inceptionv3', 'inception_v4')
# family -> (description, BatchNorm eps of the source, input size for shape inference)
_FAMILIES = {
    'fz-at': ('functional-zoo pre-activation ResNet-18 (attention-transfer export, folded BN)', None, 224),
    'fz': ('functional-zoo ResNet (folded BN)', None, 224),
    'tv-resnet': ('torchvision ResNet', 1e-5, 224),
    'tv-mobilenetv2': ('torchvision MobileNetV2', 1e-5, 224),
    'tv-inception3': ('torchvision Inception-v3', 1e-3, 299),
    'timm-inception4': ('timm Inception-v4', 1e-3, 299),
}
_FEATURE_WIDTH = {'resnet18_v2': 512, 'resnet18_v1b': 512, 'resnet34_v1b': 512, 'resnet50_v1b': 2048,
                  'resnet101_v1b': 2048, 'resnet152_v1b': 2048, 'mobilenetv2_1.0': 1280, 'inceptionv3': 2048,
                  'inception_v4': 1536}
_FAMILY_ARCHS = {'fz-at': ('resnet18_v2',), 'fz': tuple(_FZ_BLOCKS), 'tv-resnet': tuple(_TV_RESNETS.values()),
                 'tv-mobilenetv2': ('mobilenetv2_1.0',), 'tv-inception3': ('inceptionv3',),
                 'timm-inception4': ('inception_v4',)}


def _counts(sd, pattern):
    counts = collections.Counter()
    for k in sd:
        m = re.match(pattern, k)
        if m:
            g, b = int(m.group(1)), int(m.group(2))
            counts[g] = max(counts[g], b + 1)
    return counts


def _blocks_per_group(sd):
    counts = _counts(sd, r'group(\d+)\.block(\d+)\.')
    return tuple(counts[g] for g in sorted(counts))


def _tv_blocks(sd):
    counts = _counts(sd, r'layer(\d+)\.(\d+)\.')
    return tuple(counts[g] for g in range(1, 5)), 'layer1.0.conv3.weight' in sd


def _family(sd):
    if 'affine0.a' in sd:
        return 'fz-at'
    if any(re.match(r'group\d+\.block\d+\.', k) for k in sd):
        return 'fz'
    if 'layer1.0.conv1.weight' in sd or ('conv1.weight' in sd and 'bn1.running_mean' in sd):
        return 'tv-resnet'
    if 'features.1.conv.0.0.weight' in sd or 'features.18.0.weight' in sd:
        return 'tv-mobilenetv2'
    if any(k.startswith(('Conv2d_1a_3x3.', 'Mixed_5b.')) for k in sd):
        return 'tv-inception3'
    if 'features.3.conv.conv.weight' in sd or 'last_linear.weight' in sd:
        return 'timm-inception4'
    first = ', '.join(list(sd)[:4])
    raise CheckpointError('cannot tell the architecture: the keys (%s, ...) match none of the known layouts '
                          '(functional-zoo ResNet, torchvision ResNet / MobileNetV2 / Inception-v3, timm '
                          'Inception-v4)' % first)


def detect_source(sd):
    """``(family, arch, description)`` of a state dict (after :func:`flatten_state` and
    ``module.`` stripping): the layout from its keys, the target from its block counts."""
    fam = _family(sd)
    desc = _FAMILIES[fam][0]
    if fam == 'fz-at':
        return fam, 'resnet18_v2', desc
    if fam == 'fz':
        blocks = _blocks_per_group(sd)
        for arch, want in _FZ_BLOCKS.items():
            if blocks == want:
                return fam, arch, desc
        raise CheckpointError('cannot tell the architecture: blocks per group %s are neither ResNet-18 (2,2,2,2) nor '
                              'ResNet-34 (3,4,6,3), and there are no affine* keys of the AT ResNet-18 export'
                              % (blocks,))
    if fam == 'tv-resnet':
        blocks, bottleneck = _tv_blocks(sd)
        arch = _TV_RESNETS.get(blocks + (bottleneck,))
        if arch is None:
            raise CheckpointError('cannot tell the architecture: a torchvision ResNet layout with %s blocks %s per '
                                  'stage is none of ResNet-18/34 (basic 2,2,2,2 / 3,4,6,3) or ResNet-50/101/152 '
                                  '(bottleneck 3,4,6,3 / 3,4,23,3 / 3,8,36,3)'
                                  % ('bottleneck' if bottleneck else 'basic', blocks))
        return fam, arch, '%s-%s' % (desc, arch[6:-4])
    return fam, _FAMILY_ARCHS[fam][0], desc


def detect_arch(sd):
    """The target network name for a state dict (see :func:`detect_source`)."""
    return detect_source(sd)[1]


# ---------------------------------------------------------------- the mapper
class Conversion:
    """The result of a conversion: ``arch``, ``source`` (the detected layout), ``classes``
    (``None`` without a classifier), ``params`` (``{gluon key: float32 array}``),
    ``renamed`` (``[(source key, gluon key, reason)]``), ``dropped`` (``[(source key,
    reason)]``), ``created`` (``[(gluon key, reason)]``) and ``notes``."""

    def __init__(self, arch, source):
        self.arch, self.source = arch, source
        self.classes = None
        self.family, self.head_keys = None, ()
        self.params = collections.OrderedDict()
        self.renamed, self.dropped, self.created, self.notes = [], [], [], []

    def report(self):
        """Lines naming the detected layout and every renamed, dropped or created key."""
        head = 'no classifier' if self.classes is None else '%d classes' % self.classes
        lines = ['detected: %s -> %s (%s), %d arrays' % (self.source, self.arch, head, len(self.params))]
        lines += ['note: %s' % n for n in self.notes]
        for title, items in (('renamed', [('%s -> %s' % (s, d), r) for s, d, r in self.renamed]),
                             ('dropped', self.dropped), ('created', self.created)):
            if not items:
                continue
            by = collections.OrderedDict()
            for what, reason in items:
                by.setdefault(reason, []).append(what)
            lines.append('%s %d keys:' % (title, len(items)))
            for reason, whats in by.items():
                lines.append('  %s (%d):' % (reason, len(whats)))
                lines += ['    %s' % w for w in whats]
        return lines


_BN_RENAME = 'BatchNorm weight/bias -> gamma/beta'
_STEP = 'BatchNorm step counter (unused in inference)'


class _Mapper:
    """Reads source keys, remembering which were used, so leftovers can be reported."""

    def __init__(self, sd, name, conv):
        self.sd, self.name, self.conv, self.used = sd, name, conv, set()
        self.cast = collections.Counter()

    def __call__(self, key, optional=False):
        if key not in self.sd:
            if optional:
                return None
            raise CheckpointError('%s: key %r is missing (not a %s file?)' % (self.name, key, self.conv.source))
        self.used.add(key)
        arr = np.asarray(self.sd[key])
        if arr.dtype != np.float32:
            self.cast['%s->float32' % arr.dtype.name] += 1
        return arr.astype(np.float32)

    def put(self, dst, src, reason='structural rename', arr=None):
        self.conv.params[dst] = self(src) if arr is None else arr
        if dst != src:
            self.conv.renamed.append((src, dst, reason))

    def drop(self, key, reason):
        if key in self.sd:
            self.used.add(key)
            self.conv.dropped.append((key, reason))

    def conv_w(self, src, dst, reason='structural rename'):
        self.put(dst + '.weight', src + '.weight', reason)

    def bn(self, src, dst):
        for s, d in (('weight', 'gamma'), ('bias', 'beta'), ('running_mean', 'running_mean'),
                     ('running_var', 'running_var')):
            self.put('%s.%s' % (dst, d), '%s.%s' % (src, s), _BN_RENAME if s != d else 'structural rename')
        self.drop(src + '.num_batches_tracked', _STEP)

    def leftovers(self):
        return [k for k in self.sd if k not in self.used]


def _bn(out, prefix, channels, eps, gamma=None, beta=None):
    out[prefix + '.gamma'] = np.ones(channels, np.float32) if gamma is None else gamma
    out[prefix + '.beta'] = np.zeros(channels, np.float32) if beta is None else beta
    out[prefix + '.running_mean'] = np.zeros(channels, np.float32)
    out[prefix + '.running_var'] = np.full(channels, 1.0 - eps, np.float32)


_FOLDED = 'folded BatchNorm (gamma 1, beta = conv bias)'


def _convert_at_v2(m, eps):
    out = m.conv.params
    _bn(out, 'features.0', 3, eps)
    m.conv.created.append(('features.0', 'identity data BatchNorm (absent in the source)'))
    m.put('features.1.weight', 'conv0')
    w = out['features.1.weight']
    _bn(out, 'features.2', w.shape[0], eps, m('affine0.a'), m('affine0.b'))
    m.conv.renamed += [('affine0.a', 'features.2.gamma', 'affine -> BatchNorm'),
                       ('affine0.b', 'features.2.beta', 'affine -> BatchNorm')]
    for g, n in enumerate((2, 2, 2, 2)):
        for b in range(n):
            src, dst = 'group%d.block%d.' % (g, b), 'features.%d.%d.' % (5 + g, b)
            conv0 = m(src + 'conv0')
            if g == 0 and b == 0:
                _bn(out, dst + 'bn1', conv0.shape[1], eps)          # no affine0 in the source
                m.conv.created.append((dst + 'bn1', 'identity BatchNorm (its input is post-ReLU)'))
            else:
                _bn(out, dst + 'bn1', conv0.shape[1], eps, m(src + 'affine0.a'), m(src + 'affine0.b'))
                m.conv.renamed += [(src + 'affine0.a', dst + 'bn1.gamma', 'affine -> BatchNorm'),
                                   (src + 'affine0.b', dst + 'bn1.beta', 'affine -> BatchNorm')]
            m.put(dst + 'conv1.weight', src + 'conv0')
            _bn(out, dst + 'bn2', conv0.shape[0], eps, m(src + 'affine1.a'), m(src + 'affine1.b'))
            m.conv.renamed += [(src + 'affine1.a', dst + 'bn2.gamma', 'affine -> BatchNorm'),
                               (src + 'affine1.b', dst + 'bn2.beta', 'affine -> BatchNorm')]
            m.put(dst + 'conv2.weight', src + 'conv1')
            if src + 'conv_dim' in m.sd or not (b > 0 or g == 0):
                m.put(dst + 'downsample.weight', src + 'conv_dim')
    last = m('affine_last.a')
    _bn(out, 'features.9', last.shape[0], eps, last, m('affine_last.b'))
    m.conv.renamed += [('affine_last.a', 'features.9.gamma', 'affine -> BatchNorm'),
                       ('affine_last.b', 'features.9.beta', 'affine -> BatchNorm')]
    return ('fc.weight', 'fc.bias'), ('output.weight', 'output.bias')


def _convert_fz_v1b(m, blocks, eps):
    out = m.conv.params

    def conv_bn(src, dst_conv, dst_bn, optional_bias=False):
        m.put(dst_conv + '.weight', src + '.weight')
        w = out[dst_conv + '.weight']
        bias = m(src + '.bias', optional=optional_bias)
        _bn(out, dst_bn, w.shape[0], eps, beta=bias)
        if bias is not None:
            m.conv.renamed.append((src + '.bias', dst_bn + '.beta', _FOLDED))
        else:
            m.conv.created.append((dst_bn, 'identity BatchNorm (the source conv has no bias)'))

    conv_bn('conv0', 'conv1', 'bn1')
    for g, n in enumerate(blocks):
        for b in range(n):
            src, dst = 'group%d.block%d.' % (g, b), 'layer%d.%d.' % (g + 1, b)
            for i in (0, 1):
                conv_bn(src + 'conv%d' % i, dst + 'conv%d' % (i + 1), dst + 'bn%d' % (i + 1))
            if src + 'conv_dim.weight' in m.sd:
                conv_bn(src + 'conv_dim', dst + 'downsample.0', dst + 'downsample.1', optional_bias=True)
    return ('fc.weight', 'fc.bias'), ('fc.weight', 'fc.bias')


def _convert_tv_resnet(m, arch):
    blocks, bottleneck = _tv_blocks(m.sd)
    m.conv_w('conv1', 'conv1')
    m.bn('bn1', 'bn1')
    for layer, n in enumerate(blocks, 1):
        for i in range(n):
            p = 'layer%d.%d.' % (layer, i)
            for k in ((1, 2, 3) if bottleneck else (1, 2)):
                m.conv_w(p + 'conv%d' % k, p + 'conv%d' % k)
                m.bn(p + 'bn%d' % k, p + 'bn%d' % k)
            if p + 'downsample.0.weight' in m.sd or (i == 0 and layer > 1) or (i == 0 and bottleneck):
                m.conv_w(p + 'downsample.0', p + 'downsample.0')
                m.bn(p + 'downsample.1', p + 'downsample.1')
    return ('fc.weight', 'fc.bias'), ('fc.weight', 'fc.bias')


def _convert_tv_mobilenetv2(m):
    m.conv_w('features.0.0', 'features.0')
    m.bn('features.0.1', 'features.1')
    m.conv_w('features.1.conv.0.0', 'features.3.out.0')
    m.bn('features.1.conv.0.1', 'features.3.out.1')
    m.conv_w('features.1.conv.1', 'features.3.out.3')
    m.bn('features.1.conv.2', 'features.3.out.4')
    for j in range(2, 18):
        s, d = 'features.%d.conv.' % j, 'features.%d.out.' % (j + 2)
        for src, dst in (('0.0', '0'), ('1.0', '3'), ('2', '6')):
            m.conv_w(s + src, d + dst)
        for src, dst in (('0.1', '1'), ('1.1', '4'), ('3', '7')):
            m.bn(s + src, d + dst)
    m.conv_w('features.18.0', 'features.20')
    m.bn('features.18.1', 'features.21')
    return ('classifier.1.weight', 'classifier.1.bias'), ('output.0.weight', None)


# torchvision Inception-v3 block -> (GluonCV features index, {basic conv: GluonCV path in the block})
_V3_A = {'branch1x1': '0.0', 'branch5x5_1': '1.0', 'branch5x5_2': '1.1', 'branch3x3dbl_1': '2.0',
         'branch3x3dbl_2': '2.1', 'branch3x3dbl_3': '2.2', 'branch_pool': '3.1'}
_V3_B = {'branch3x3': '0.0', 'branch3x3dbl_1': '1.0', 'branch3x3dbl_2': '1.1', 'branch3x3dbl_3': '1.2'}
_V3_C = {'branch1x1': '0.0', 'branch7x7_1': '1.0', 'branch7x7_2': '1.1', 'branch7x7_3': '1.2',
         'branch7x7dbl_1': '2.0', 'branch7x7dbl_2': '2.1', 'branch7x7dbl_3': '2.2', 'branch7x7dbl_4': '2.3',
         'branch7x7dbl_5': '2.4', 'branch_pool': '3.1'}
_V3_D = {'branch3x3_1': '0.0', 'branch3x3_2': '0.1', 'branch7x7x3_1': '1.0', 'branch7x7x3_2': '1.1',
         'branch7x7x3_3': '1.2', 'branch7x7x3_4': '1.3'}
_V3_E = {'branch1x1': '0.0', 'branch3x3_1': '1.0.0', 'branch3x3_2a': '1.1.0.0', 'branch3x3_2b': '1.1.1.0',
         'branch3x3dbl_1': '2.0.0', 'branch3x3dbl_2': '2.0.1', 'branch3x3dbl_3a': '2.1.0.0',
         'branch3x3dbl_3b': '2.1.1.0', 'branch_pool': '3.1'}
_V3_BRANCHES = collections.OrderedDict([
    ('Conv2d_1a_3x3', (0, None)), ('Conv2d_2a_3x3', (1, None)), ('Conv2d_2b_3x3', (2, None)),
    ('Conv2d_3b_1x1', (4, None)), ('Conv2d_4a_3x3', (5, None)),
    ('Mixed_5b', (7, _V3_A)), ('Mixed_5c', (8, _V3_A)), ('Mixed_5d', (9, _V3_A)), ('Mixed_6a', (10, _V3_B)),
    ('Mixed_6b', (11, _V3_C)), ('Mixed_6c', (12, _V3_C)), ('Mixed_6d', (13, _V3_C)), ('Mixed_6e', (14, _V3_C)),
    ('Mixed_7a', (15, _V3_D)), ('Mixed_7b', (16, _V3_E)), ('Mixed_7c', (17, _V3_E))])

# torchvision's transform_input: ImageNet-normalised x -> (x - 0.5) / 0.5 per channel
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _convert_tv_inception3(m):
    for block, (idx, branches) in _V3_BRANCHES.items():
        for name, path in ([(None, None)] if branches is None else branches.items()):
            src = block if name is None else '%s.%s' % (block, name)
            dst = 'features.%d' % idx if path is None else 'features.%d.%s' % (idx, path)
            m.conv_w(src + '.conv', dst + '.0')
            m.bn(src + '.bn', dst + '.1')
    for k in list(m.sd):
        if k.startswith('AuxLogits.'):
            m.drop(k, 'auxiliary classifier (training only; GluonCV inceptionv3 has none)')
    return ('fc.weight', 'fc.bias'), ('output.weight', 'output.bias')


def _v4_basic_convs():
    """Module paths of every basic conv of timm's Inception-v4, in ``features`` order."""
    a = ['branch0', 'branch1.0', 'branch1.1', 'branch2.0', 'branch2.1', 'branch2.2', 'branch3.1']
    b = ['branch0', 'branch1.0', 'branch1.1', 'branch1.2', 'branch2.0', 'branch2.1', 'branch2.2', 'branch2.3',
         'branch2.4', 'branch3.1']
    c = ['branch0', 'branch1_0', 'branch1_1a', 'branch1_1b', 'branch2_0', 'branch2_1', 'branch2_2', 'branch2_3a',
         'branch2_3b', 'branch3.1']
    blocks = ([[''], [''], [''], ['conv'], ['branch0.0', 'branch0.1', 'branch1.0', 'branch1.1', 'branch1.2',
                                           'branch1.3'], ['conv']] + [a] * 4
              + [['branch0', 'branch1.0', 'branch1.1', 'branch1.2']] + [b] * 7
              + [['branch0.0', 'branch0.1', 'branch1.0', 'branch1.1', 'branch1.2', 'branch1.3']] + [c] * 3)
    return ['features.%d%s' % (i, '.' + p if p else '') for i, paths in enumerate(blocks) for p in paths]


def _convert_timm_inception4(m):
    for p in _v4_basic_convs():
        m.conv_w(p + '.conv', p + '.conv')
        m.bn(p + '.bn', p + '.bn')
    return ('last_linear.weight', 'last_linear.bias'), ('output.weight', 'output.bias')


def _fold_input_affine(conv, weight_key, mean_key, reason):
    """Fold ``x' = a_c x_c + b_c`` (torchvision's transform_input; see the module
    docstring) into an unpadded first conv and the BN after it."""
    a = (_IMAGENET_STD / 0.5).astype(np.float64)
    b = ((_IMAGENET_MEAN - 0.5) / 0.5).astype(np.float64)
    w = conv.params[weight_key].astype(np.float64)
    shift = np.einsum('ocij,c->o', w, b)
    conv.params[weight_key] = (w * a.reshape(1, -1, 1, 1)).astype(np.float32)
    conv.params[mean_key] = (conv.params[mean_key].astype(np.float64) - shift).astype(np.float32)
    conv.notes.append(reason)


def _strip_module_prefix(sd, conv):
    for prefix in ('module.',):
        if sd and all(k.startswith(prefix) for k in sd):
            conv.notes.append("stripped the %r prefix of all %d keys (a DataParallel checkpoint); the keys below "
                              "are named without it" % (prefix, len(sd)))
            return collections.OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def convert(sd, arch=None, classes=None, drop_head=False, transform_input=True, imagenet_input=False,
            eps=1e-5, name='state dict'):
    """Map a PyTorch state dict onto a Gluon network's structural keys (module docstring).

    ``arch``: the target (detected when None; must agree with the file); ``classes``: a new
    N-way classifier instead of the source's; ``drop_head``: no classifier;
    ``transform_input``: torchvision Inception-v3 only, fold its input transform (True for
    its ImageNet weights); ``imagenet_input``: timm Inception-v4 only, fold the (x - 0.5) / 0.5
    input normalisation so the network takes ImageNet-normalised input; ``eps``: the BN
    epsilon of the identity BNs created for functional-zoo files.
    Returns a :class:`Conversion`; raises :class:`CheckpointError` naming the first key
    that is missing, fits nowhere or has no place in the target."""
    if classes is not None and drop_head:
        raise ConfigError('give either classes (a new classifier) or drop_head, not both')
    if classes is not None and (int(classes) != classes or classes < 1):
        raise ConfigError('classes must be a positive integer, got %r' % (classes,))
    probe = Conversion(None, None)
    sd = _strip_module_prefix(collections.OrderedDict(sd), probe)
    fam, detected, desc = detect_source(sd)
    if arch is not None:
        if arch not in ARCHS:
            raise ConfigError('unknown target %r; valid: %s' % (arch, ', '.join(ARCHS)))
        if fam == 'fz' and arch == 'resnet18_v2':
            raise CheckpointError('%s is not the AT ResNet-18 export (no affine0.a) and cannot map onto resnet18_v2'
                                  % name)
        if arch not in _FAMILY_ARCHS[fam]:
            raise CheckpointError('%s has the %s layout, which converts to %s, not %s'
                                  % (name, desc, ' / '.join(_FAMILY_ARCHS[fam]), arch))
        if arch != detected:
            if fam == 'fz':
                raise CheckpointError('%s has %s blocks per group; %s needs %s'
                                      % (name, _blocks_per_group(sd), arch, _FZ_BLOCKS[arch]))
            raise CheckpointError('%s is a %s (detected from its blocks per stage); it does not fit %s'
                                  % (name, desc, arch))
    arch = detected
    if fam != 'tv-inception3' and not transform_input:
        raise ConfigError('transform_input=False applies to torchvision Inception-v3 only (this file is a %s)' % desc)
    if fam != 'timm-inception4' and imagenet_input:
        raise ConfigError('imagenet_input applies to timm Inception-v4 only (this file is a %s)' % desc)
    conv = Conversion(arch, desc)
    conv.family, conv.notes = fam, probe.notes
    m = _Mapper(sd, name, conv)
    if fam == 'fz-at':
        head_src, head_dst = _convert_at_v2(m, eps)
    elif fam == 'fz':
        head_src, head_dst = _convert_fz_v1b(m, _FZ_BLOCKS[arch], eps)
    elif fam == 'tv-resnet':
        head_src, head_dst = _convert_tv_resnet(m, arch)
    elif fam == 'tv-mobilenetv2':
        head_src, head_dst = _convert_tv_mobilenetv2(m)
    elif fam == 'tv-inception3':
        head_src, head_dst = _convert_tv_inception3(m)
    else:
        head_src, head_dst = _convert_timm_inception4(m)
    if fam == 'tv-inception3' and transform_input:
        _fold_input_affine(conv, 'features.0.0.weight', 'features.0.1.running_mean',
                           "folded torchvision's transform_input (ImageNet-normalised x -> (x - 0.5) / 0.5) into "
                           "Conv2d_1a_3x3 and its BatchNorm: the network takes ImageNet-normalised input")
    if fam == 'timm-inception4' and imagenet_input:
        _fold_input_affine(conv, 'features.0.conv.weight', 'features.0.bn.running_mean',
                           "folded timm's (x - 0.5) / 0.5 input normalisation into features.0: the network takes "
                           "ImageNet-normalised input")
    conv.head_keys = tuple(k for k in head_dst if k)
    _convert_head(m, head_src, head_dst, classes, drop_head)
    if m.cast:
        conv.notes.append('cast %s' % ', '.join('%d arrays %s' % (n, t) for t, n in sorted(m.cast.items())))
    left = m.leftovers()
    if left:
        raise CheckpointError('%s: key %r has no place in %s (%d unused keys)' % (name, left[0], arch, len(left)))
    return conv


def _convert_head(m, head_src, head_dst, classes, drop_head):
    (w_src, b_src), (w_dst, b_dst) = head_src, head_dst
    conv = m.conv
    present = [k for k in (w_src, b_src) if k in m.sd]
    if classes is not None or drop_head:
        why = 'source classifier, replaced by a new %d-class one' % classes if classes is not None else \
            'source classifier (--drop-head)'
        for k in present:
            m.drop(k, why)
        if drop_head:
            return
        fan_in = _FEATURE_WIDTH[conv.arch]
        rng = np.random.default_rng(0)
        shape = (classes, fan_in) + ((1, 1) if w_dst.startswith('output.0') else ())
        conv.params[w_dst] = rng.normal(0.0, 0.01, shape).astype(np.float32)
        conv.created.append((w_dst, 'new classifier: N(0, 0.01^2), seed 0'))
        if b_dst is not None:
            conv.params[b_dst] = np.zeros(classes, np.float32)
            conv.created.append((b_dst, 'new classifier: zeros'))
        conv.classes = classes
        return
    if w_src not in m.sd:
        raise CheckpointError('%s has no classifier (key %r); pass --classes N for a new one or --drop-head'
                              % (m.name, w_src))
    w = m(w_src)
    if w_dst.startswith('output.0'):           # GluonCV MobileNetV2: a 1x1 conv classifier
        w = w.reshape(w.shape + (1, 1))
    m.put(w_dst, w_src, 'classifier', arr=w)
    if b_dst is not None:
        m.put(b_dst, b_src, 'classifier')
    elif b_src in m.sd:
        bias = m(b_src)
        if np.any(bias != 0):
            raise CheckpointError('%s: key %r has no place in %s: its classifier is a bias-free 1x1 convolution '
                                  '(the bias is non-zero, so logits would differ); pass --classes N for a new '
                                  'classifier or --drop-head' % (m.name, b_src, conv.arch))
        m.drop(b_src, 'classifier bias, all zeros (the target classifier has no bias)')
    conv.classes = int(w.shape[0])


def convert_state_dict(sd, arch=None, eps=1e-5, name='state dict'):
    """``(arch, {gluon key: float32 array})``: :func:`convert` with the source's classifier."""
    conv = convert(sd, arch, eps=eps, name=name)
    return conv.arch, conv.params


def _all_blocks(block):
    yield block
    for child in block._children.values():
        yield from _all_blocks(child)


def _check_against(net, conv, name, size):
    """Every converted key exists in ``net`` with a fitting shape, and every parameter of
    ``net`` (but a dropped classifier) is converted; the BN epsilons are the source's."""
    import mxnet as mx
    from .weights import _shape_fits
    net.infer_shape(mx.nd.zeros((1, 3, size, size)))
    shapes = {k: p.shape for k, p in net._collect_params_with_prefix().items()}
    src_of = {d: s for s, d, _ in conv.renamed}
    for key, arr in conv.params.items():
        if key not in shapes:
            raise CheckpointError('%s: key %r (from %r) has no place in %s'
                                  % (name, key, src_of.get(key, key), conv.arch))
        if not _shape_fits(shapes[key], arr.shape):
            raise CheckpointError('%s: %r has shape %s but %s needs %s for %r (a different width or variant?)'
                                  % (name, src_of.get(key, key), tuple(arr.shape), conv.arch, tuple(shapes[key]), key))
    head = set(conv.head_keys) if conv.classes is None else set()
    missing = [k for k in shapes if k not in conv.params and k not in head]
    if missing:
        raise CheckpointError('%s: nothing maps onto %r of %s (%d keys missing)' % (name, missing[0], conv.arch,
                                                                                   len(missing)))


def convert_file(src, dst, arch=None, classes=None, drop_head=False, transform_input=True, imagenet_input=False,
                 overwrite=False):
    """``.pth`` -> Gluon ``.params`` (see :func:`convert`). The result is checked against a
    freshly built network (keys, full shapes, BatchNorm epsilons) before it is written,
    atomically; an existing ``dst`` is replaced only with ``overwrite``. Returns the
    :class:`Conversion`."""
    import mxnet as mx
    from .zoo import get_model
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise CheckpointError('the output %s is the input file; choose another name' % dst)
    if os.path.exists(dst) and not overwrite:
        raise CheckpointError('%s exists; pass --force to replace it' % dst)
    trail = []
    sd = flatten_state(read_pth(src), src, trail)
    name = os.path.basename(src)
    conv = convert(sd, arch, classes, drop_head, transform_input, imagenet_input, name=name)
    if trail:
        conv.notes.insert(0, 'state dict taken from %s' % ''.join('[%r]' % t for t in trail))
    _, fam_eps, size = _FAMILIES[conv.family]
    net = get_model(conv.arch, classes=conv.classes or 1000)
    eps = {blk._kwargs.get('eps') for blk in _all_blocks(net) if type(blk).__name__ == 'BatchNorm'}
    want = {fam_eps if fam_eps is not None else 1e-5}
    if eps != want:
        raise CheckpointError('%s: BatchNorm epsilons %s, but the source uses %s; outputs would differ'
                              % (conv.arch, sorted(eps), sorted(want)))
    _check_against(net, conv, name, size)
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise CheckpointError('output folder does not exist: %s' % folder)
    tmp = '%s.tmp-%d' % (dst, os.getpid())
    try:
        mx.nd.save(tmp, {k: mx.nd.array(v, dtype='float32') for k, v in conv.params.items()})
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return conv
