"""Run folders, atomic checkpoints and exact resume.

**Run folders.** Every training run writes into one folder of its own, and no run ever
deletes, overwrites or appends to what another run wrote. The scripts pick the folder
(``gluon_transfer.cli``): ``--save-dir DIR`` when given (refused when ``DIR`` already holds a
run: ``checkpoint.json``, ``*.params`` or ``metrics.jsonl``; continue such a run with
``--resume DIR``), else a new folder ``runs/<script>/<model>-<YYYYmmdd-HHMMSS>`` made by
:func:`make_run_dir` (``os.mkdir`` is atomic, so two runs started in the same second get
``...-2``, ``...-3``), with the symlink ``runs/<script>/latest`` re-pointed at it by
:func:`point_latest` (a new link under a temporary name, then ``os.replace``).

**Files of a run folder.** A checkpoint of epoch ``e`` (``e`` epochs completed) is:

* ``<prefix>-<e:04d>.params``  network parameters (``save_parameters`` layout, loadable by
  ``get_model(..., params=FILE)`` and ``tools/evaluate.py``);
* ``<prefix>-<e:04d>.states``  ``gluon.Trainer`` states (momentum buffers, update counts);
* ``<prefix>-<e:04d>.extra.params``  trainable loss modules, when the task has any;
* ``<prefix>-<e:04d>.json``    metadata: epoch, global step, best metric and epoch, seed,
  config, files;

and ``checkpoint.json``, a pointer to the newest metadata file, replaced last. The best
network so far (highest val top-1) is ``best.params``, with ``best.json``
(``{"epoch", "val_top1", "prefix", "params"}``) beside it: one stable name per run folder
(``runs/demo/latest/best.params``), replacing GluonCV's ``<score>-<prefix>-<e>-best.params``,
whose name changed with every new best. The prefix is ``<dataset>-<model>``.

**Atomicity.** Every file is written to a temporary name, flushed, fsync'ed and renamed
(``os.replace`` is atomic on POSIX), with the usual permissions (``0666`` minus the umask,
not ``mkstemp``'s ``0600``). A kill at any moment leaves the previous pointer and the
files it names intact. The engine writes in this order at the end of an epoch, after
checking that the validation loss and every parameter are finite: ``best.params`` (a new
best replaces the old one in one rename, so a best file always exists once there was a
best), ``best.json``, the metrics line, the checkpoint files, the pointer. Older epochs are
pruned only after the pointer moved; epochs that are multiples of ``save_frequency`` are
kept. On resume, :func:`repair_best` restores a missing ``best.params`` when the
checkpoint (or a GluonCV-named best file of the same epoch) holds it, and
:func:`trim_metrics` drops ``metrics.jsonl`` lines past the checkpoint's epoch (left by a
kill between the metrics line and the pointer).

Resume is exact because all randomness of an epoch (data order, augmentation, mixup,
dropout) is reseeded from ``(seed, epoch)`` at the start of that epoch (see
``engine.trainer.seed_epoch``); the checkpoint only has to carry parameters, optimizer
state and counters.
"""
import glob
import json
import os
import re
import shutil
import tempfile

from ..errors import CheckpointError, ConfigError

POINTER = 'checkpoint.json'
BEST_PARAMS = 'best.params'
BEST_JSON = 'best.json'
METRICS = 'metrics.jsonl'
LATEST = 'latest'


def _umask():
    """The process umask, read without changing it where /proc allows."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path, write_fn):
    """Call ``write_fn(tmp_path)`` and move the result to ``path`` atomically. The file gets
    the permissions of a plain ``open(path, 'w')`` (``0666`` minus the umask)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=d)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
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

    def save_best(self, epoch, net, score, **info):
        """``best.params`` (atomic: the new best replaces the old one in one rename, so there is
        never a moment without a best file) and then ``best.json``. Call it before
        :meth:`save` so that no checkpoint ever records a best that is not on disk."""
        path = os.path.join(self.save_dir, BEST_PARAMS)
        atomic_write(path, net.save_parameters)
        write_best_json(self.save_dir, epoch, score, self.prefix, **info)
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


def write_best_json(save_dir, epoch, score, prefix, **info):
    atomic_write_json(os.path.join(save_dir, BEST_JSON),
                      dict(info, epoch=int(epoch), val_top1=float(score), prefix=prefix, params=BEST_PARAMS))


def read_best(save_dir):
    """``best.json`` of a run folder as a dict, or None when there is none (or it is unreadable)."""
    try:
        with open(os.path.join(save_dir, BEST_JSON)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def best_params_path(save_dir):
    """``save_dir/best.params``; a :class:`CheckpointError` naming the folder when it is missing."""
    path = os.path.join(save_dir, BEST_PARAMS)
    if not os.path.isfile(path):
        raise CheckpointError('no %s in %s (no epoch was evaluated on a validation split)' % (BEST_PARAMS, save_dir))
    return path


def _copy_atomic(src, dst):
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def repair_best(src_dir, meta, prefix, dst_dir=None, log=None):
    """Make ``dst_dir/best.params`` (default ``src_dir``) match the record ``meta``
    (``best_top1``, ``best_epoch``) of the checkpoint in ``src_dir`` that a run resumes from.

    When it is missing (deleted; a run into another ``--save-dir``; a run killed by an older
    version between removing the old best and writing the new one) it is copied from, in
    order: ``src_dir/best.params`` (with its ``best.json``) when it holds the checkpoint's best
    epoch, the checkpoint's own parameters when the checkpoint is the best epoch, a
    GluonCV-named ``<score>-<prefix>-<e>-best.params`` of that score in ``src_dir``. Returns ``'ok'`` (nothing missing or no best yet),
    ``'repaired'``, or ``'lost'`` (logged as a warning: no copy of the best network exists)."""
    dst_dir = dst_dir or src_dir
    best_top1 = float(meta.get('best_top1', -1.0))
    path = os.path.join(dst_dir, BEST_PARAMS)
    if best_top1 < 0 or os.path.isfile(path):
        return 'ok'
    epoch = meta.get('best_epoch')
    src_best = read_best(src_dir)
    if (os.path.realpath(src_dir) != os.path.realpath(dst_dir) and src_best is not None
            and os.path.isfile(os.path.join(src_dir, BEST_PARAMS)) and src_best.get('epoch') == epoch):
        # the best of the resumed checkpoint (not a later one of the source run)
        _copy_atomic(os.path.join(src_dir, BEST_PARAMS), path)
        _copy_atomic(os.path.join(src_dir, BEST_JSON), os.path.join(dst_dir, BEST_JSON))
        if log is not None:
            log.info('best.params (epoch %d) of %s copied into %s', epoch, src_dir, dst_dir)
        return 'repaired'
    source = None
    if epoch is not None and int(epoch) == int(meta['epoch']):
        source = os.path.join(src_dir, meta['files']['params'])
    else:
        pat = re.compile(r'^([0-9.]+)-%s-(\d+)-best\.params$' % re.escape(prefix))
        for name in sorted(os.listdir(src_dir)):
            m = pat.match(name)
            if m and (epoch is None or int(m.group(2)) == int(epoch)) and abs(float(m.group(1)) - best_top1) < 1e-4:
                source, epoch = os.path.join(src_dir, name), int(m.group(2))
    if source is not None and epoch is not None:
        _copy_atomic(source, path)
        write_best_json(dst_dir, epoch, best_top1, prefix, repaired_from=source)
        if log is not None:
            log.warning('%s was missing: rebuilt from %s (epoch %d, val top-1 %.4f)', path, source, int(epoch),
                        best_top1)
        return 'repaired'
    if log is not None:
        log.warning('WARNING: the best network (epoch %s, val top-1 %.4f) is missing from %s and cannot be rebuilt '
                    'from the checkpoint of epoch %d; best.params will hold the best of the epochs trained from now on',
                    epoch if epoch is not None else '?', best_top1, dst_dir, int(meta['epoch']))
    return 'lost'


def trim_metrics(path, epoch, source=None):
    """Make ``metrics.jsonl`` hold one line per epoch up to ``epoch`` (a checkpoint's): lines
    past it come from epochs that a resume trains again, torn lines from a kill; of several
    lines for one epoch (left by older versions) the last written is kept. Atomic rewrite,
    only when something changes. ``source``: when ``path`` does not exist yet (a resume into
    another folder), start it with the kept lines of this file. Returns the number of lines
    dropped."""
    read = path if os.path.isfile(path) else source
    if not read or not os.path.isfile(read):
        return 0
    by_epoch, total = {}, 0
    with open(read) as f:
        for line in f:
            total += 1
            try:
                e = int(json.loads(line)['epoch'])
            except (ValueError, KeyError, TypeError):
                continue
            if e <= int(epoch):
                by_epoch[e] = line if line.endswith('\n') else line + '\n'
    keep = [by_epoch[e] for e in sorted(by_epoch)]
    dropped = total - len(keep)
    if dropped or read != path:
        def _w(tmp):
            with open(tmp, 'w') as f:
                f.writelines(keep)
        atomic_write(path, _w)
    return dropped


# ------------------------------------------------------------------ run folders
def holds_run(d):
    """Whether folder ``d`` holds (part of) a training run: a checkpoint pointer, any
    ``.params`` file or a metrics log."""
    if not os.path.isdir(d):
        return False
    names = os.listdir(d)
    return POINTER in names or METRICS in names or any(n.endswith('.params') for n in names)


def make_run_dir(parent, name):
    """Create and return a new folder ``parent/name`` (``name-2``, ``name-3``... when taken).
    ``os.mkdir`` either creates the folder or fails, so concurrent runs never share one."""
    os.makedirs(parent, exist_ok=True)
    for n in range(1, 10000):
        path = os.path.join(parent, name if n == 1 else '%s-%d' % (name, n))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise ConfigError('cannot create a run folder in %s: %s-2 ... %s-9999 all exist' % (parent, name, name))


def point_latest(parent, target, name=LATEST):
    """Re-point the symlink ``parent/latest`` at ``target`` (a folder in ``parent``) atomically:
    a new link under a temporary name, then ``os.replace``. Returns the link path, or None when
    ``parent/latest`` is a real file or folder (left alone) or links are not supported."""
    link = os.path.join(parent, name)
    if os.path.exists(link) and not os.path.islink(link):
        return None
    tmp = os.path.join(parent, '.%s.%d.tmp' % (name, os.getpid()))
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(os.path.basename(os.path.normpath(target)), tmp)
        os.replace(tmp, link)
    except OSError:
        if os.path.lexists(tmp):
            os.remove(tmp)
        return None
    return link


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

