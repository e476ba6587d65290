"""Atomic checkpoints and exact resume.

A checkpoint of epoch ``e`` (``e`` epochs completed) is a set of files in ``save_dir``:

* ``<prefix>-<e:04d>.params``  network parameters (``save_parameters`` layout, loadable by
  ``get_model(..., params=FILE)`` and ``tools/evaluate.py``);
* ``<prefix>-<e:04d>.states``  ``gluon.Trainer`` states (momentum buffers, update counts);
* ``<prefix>-<e:04d>.extra.params``  trainable loss modules, when the task has any;
* ``<prefix>-<e:04d>.json``    metadata: epoch, global step, best metric, seed, args, files;

and ``checkpoint.json``, a pointer to the newest metadata file, replaced last. Every file
is written to a temporary name, flushed, fsync'ed and renamed (``os.replace`` is atomic on
POSIX), so a kill at any moment leaves the previous pointer and the files it names
intact. Older epochs are pruned only after the pointer moved; epochs that are multiples
of ``save_frequency`` are kept, as is the best model
(``<score:.4f>-<prefix>-<e>-best.params``, GluonCV's naming, score = val top-1).

Resume is exact because all randomness of an epoch (data order, augmentation, mixup,
dropout) is reseeded from ``(seed, epoch)`` at the start of that epoch (see
``engine.trainer.seed_epoch``); the checkpoint only has to carry parameters, optimizer
state and counters.
"""
import glob
import json
import os
import re
import tempfile

from ..errors import CheckpointError

POINTER = 'checkpoint.json'


def atomic_write(path, write_fn):
    """Call ``write_fn(tmp_path)`` and move the result to ``path`` atomically."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=d)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def jsonable(obj):
    """``obj`` as plain JSON types: numpy arrays and scalars through ``tolist()``, tuples
    and sets as lists, anything else unknown as its ``str``."""
    def default(o):
        if hasattr(o, 'tolist'):
            return o.tolist()
        if isinstance(o, (tuple, set)):
            return list(o)
        return str(o)
    return json.loads(json.dumps(obj, default=default))


def atomic_write_json(path, obj):
    def _w(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write('\n')
    atomic_write(path, _w)


class CheckpointManager:
    def __init__(self, save_dir, prefix, save_frequency=0, logger=None):
        self.save_dir = save_dir
        self.prefix = prefix
        self.save_frequency = int(save_frequency or 0)
        self.logger = logger

    def _path(self, epoch, ext):
        return os.path.join(self.save_dir, '%s-%04d%s' % (self.prefix, epoch, ext))

    def save(self, epoch, net, trainer, meta, extra_blocks=None):
        """Write the checkpoint of ``epoch`` completed epochs and move the pointer to it."""
        os.makedirs(self.save_dir, exist_ok=True)
        files = {'params': self._path(epoch, '.params'), 'states': self._path(epoch, '.states')}
        atomic_write(files['params'], net.save_parameters)
        atomic_write(files['states'], trainer.save_states)
        if extra_blocks:
            files['extra'] = self._path(epoch, '.extra.params')
            atomic_write(files['extra'], lambda p: _save_blocks(extra_blocks, p))
        meta = dict(meta, epoch=epoch, files={k: os.path.basename(v) for k, v in files.items()})
        meta_path = self._path(epoch, '.json')
        atomic_write_json(meta_path, meta)
        atomic_write_json(os.path.join(self.save_dir, POINTER), {'latest': os.path.basename(meta_path)})
        self._prune(keep=epoch)
        return meta_path

    def save_best(self, epoch, net, score):
        for old in glob.glob(os.path.join(self.save_dir, '*-%s-*-best.params' % glob.escape(self.prefix))):
            os.remove(old)
        path = os.path.join(self.save_dir, '%.4f-%s-%d-best.params' % (score, self.prefix, epoch))
        atomic_write(path, net.save_parameters)
        return path

    def _prune(self, keep):
        pat = re.compile(r'^%s-(\d{4})\.json$' % re.escape(self.prefix))
        for name in os.listdir(self.save_dir):
            m = pat.match(name)
            if not m:
                continue
            e = int(m.group(1))
            if e == keep or (self.save_frequency and e % self.save_frequency == 0):
                continue
            for ext in ('.json', '.params', '.states', '.extra.params'):
                p = self._path(e, ext)
                if os.path.exists(p):
                    os.remove(p)

    def export_final(self, net, name):
        """Copy of the final parameters under a stable name (``<prefix>-final.params``)."""
        path = os.path.join(self.save_dir, '%s-%s.params' % (self.prefix, name))
        atomic_write(path, net.save_parameters)
        return path


def _save_blocks(blocks, path):
    import mxnet as mx
    arrays = {}
    for bname, block in sorted(blocks.items()):
        for k, p in block._collect_params_with_prefix().items():
            arrays['%s.%s' % (bname, k)] = p._reduce()
    mx.nd.save(path, arrays)


def load_blocks(blocks, path):
    """Load loss-module parameters saved with the checkpoint."""
    from ..weights import read_params
    arrays = read_params(path)
    for bname, block in blocks.items():
        params = block._collect_params_with_prefix()
        for k, p in params.items():
            key = '%s.%s' % (bname, k)
            if key not in arrays:
                raise CheckpointError('%s lacks %r (loss module %s)' % (path, key, bname))
            p._load_init(arrays[key], p.list_ctx(), cast_dtype=True)


def resolve_resume(path):
    """``path`` is a save dir (uses its ``checkpoint.json``) or a checkpoint ``.json``.
    Returns ``(meta dict, directory)``; errors name what is missing."""
    if os.path.isdir(path):
        pointer = os.path.join(path, POINTER)
        if not os.path.isfile(pointer):
            raise CheckpointError('cannot resume from %s: no %s there (was the run ever checkpointed?)' % (path, POINTER))
        with open(pointer) as f:
            meta_path = os.path.join(path, json.load(f)['latest'])
    else:
        meta_path = path
    if not os.path.isfile(meta_path):
        raise CheckpointError('cannot resume: checkpoint metadata %s not found' % meta_path)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError:
        raise CheckpointError('cannot resume: %s is not valid JSON' % meta_path) from None
    d = os.path.dirname(os.path.abspath(meta_path))
    for key, fname in meta.get('files', {}).items():
        if not os.path.isfile(os.path.join(d, fname)):
            raise CheckpointError('cannot resume: %s names %s, which is missing' % (meta_path, fname))
    return meta, d

