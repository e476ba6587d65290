"""A minimal writer of the two ``torch.save`` layouts (zip and legacy) for flat dicts of
numpy arrays (optionally nested in checkpoint dicts), so tests can make full-size
files without torch."""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

_NAMES = {np.dtype('float32'): 'FloatStorage', np.dtype('float64'): 'DoubleStorage',
          np.dtype('int64'): 'LongStorage', np.dtype('float16'): 'HalfStorage'}


class Global:
    """Pickled as ``GLOBAL module name`` (without importing the module)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):          # pickle requires reduce functions to be callable
        raise RuntimeError('stand-in only')


class Declared:
    """An array written with a forged storage element count (``numel``, in the pickle and in
    the legacy header) and/or tensor ``size``/``stride``: a malformed file for tests."""

    def __init__(self, arr, numel=None, size=None, stride=None):
        self.arr, self.numel, self.size, self.stride = np.ascontiguousarray(arr), numel, size, stride


class _StorageRef:
    def __init__(self, key, arr, numel=None):
        self.key, self.arr = key, arr
        self.numel = int(arr.size) if numel is None else numel


class _Tensor:
    def __init__(self, storage, arr, size=None, stride=None):
        self.storage, self.arr = storage, arr
        self.size = tuple(arr.shape) if size is None else tuple(size)
        self.stride = tuple(int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim)) if stride is None \
            else tuple(stride)

    def __reduce__(self):
        return (Global('torch._utils', '_rebuild_tensor_v2'),
                (self.storage, 0, self.size, self.stride, False, collections.OrderedDict()))


class _Pickler(pickle._Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            pid = ('storage', Global('torch', _NAMES[obj.arr.dtype]), obj.key, 'cpu', obj.numel)
            return pid + (None,) if self.legacy else pid
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + ('%s\n%s\n' % (obj.module, obj.name)).encode('ascii'))
            return
        super().save(obj, save_persistent_id)


def _prepare(state, storages=None):
    """Arrays become tensors (one storage each); nested dicts are followed; other values
    (ints, strings) are pickled as they are, as ``torch.save`` does for checkpoints."""
    storages = [] if storages is None else storages
    obj = collections.OrderedDict()
    for k, v in state.items():
        if isinstance(v, dict):
            obj[k] = _prepare(v, storages)[0]
        elif isinstance(v, (np.ndarray, Declared)):
            d = v if isinstance(v, Declared) else Declared(v)
            ref = _StorageRef(str(len(storages)), d.arr, d.numel)
            storages.append(ref)
            obj[k] = _Tensor(ref, d.arr, d.size, d.stride)
        else:
            obj[k] = v
    return obj, storages


def save_zip(state, path, root='archive'):
    obj, storages = _prepare(state)
    buf = io.BytesIO()
    _Pickler(buf, legacy=False).dump(obj)
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr(root + '/data.pkl', buf.getvalue())
        zf.writestr(root + '/byteorder', 'little')
        for s in storages:
            zf.writestr(root + '/data/' + s.key, s.arr.astype(s.arr.dtype.newbyteorder('<')).tobytes())
        zf.writestr(root + '/version', '3\n')


def save_legacy(state, path):
    obj, storages = _prepare(state)
    with open(path, 'wb') as f:
        for head in (0x1950a86a20f9469cfc6c, 1001, {'protocol_version': 1001, 'little_endian': True,
                                                   'type_sizes': {'short': 2, 'int': 4, 'long': 4}}):
            pickle.dump(head, f, protocol=2)
        _Pickler(f, legacy=True).dump(obj)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack('<q', s.numel))
            f.write(s.arr.tobytes())
