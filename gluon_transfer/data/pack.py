"""Pack a class-per-folder image tree, or a ``.lst`` file, into ``.rec/.idx/.lst``.

Layout written for ``PREFIX`` (standard MXNet RecordIO, readable by ``ImageRecordIter``)::

    PREFIX.rec        records: IRHeader(flag=0, label, id=key, 0) + encoded image
                      (flag = number of labels and a float array when a .lst row has several)
    PREFIX.idx        "key<TAB>offset" per record
    PREFIX.lst        "key<TAB>label<TAB>relpath" for every record written (same order;
                      when the input is PREFIX.lst itself, it is left as it is)
    PREFIX.pack.json  manifest: source, options, counts, skipped files (see Resuming)
    classes.txt       class names, one per line, label = line number (folder input only;
                      next to PREFIX.rec)

Folder input: classes are the sorted names of ``root``'s sub-folders (or the list given
in ``classes``); images are searched recursively inside each class folder; the list is
shuffled with ``seed`` (like im2rec, so that ImageRecordIter's contiguous shards each see
every class) unless ``shuffle=False``; keys are 0..n-1 in record order.
``.lst`` input (``index<TAB>label(s)<TAB>relpath``, paths relative to ``root``, default the
``.lst``'s folder) keeps its order and keys.

Every image is decoded (OpenCV) in a process pool; one that fails to read or decode is
skipped, counted and listed (``PackReport.skipped``, the manifest, the CLI output), or, with
``skip_corrupt=False``, makes the call fail with :class:`CorruptImagesError` listing every
such image (nothing is written then; earlier complete outputs stay as they were). Without
``resize`` the original encoded bytes are stored; with it the shorter side is scaled to
``resize`` (area interpolation when shrinking, bicubic when enlarging) and re-encoded as
JPEG with ``quality``. The parent writes records in list order to temporary ``*.part``
files and renames them at the end, so an interrupted run never leaves a truncated
``PREFIX.rec`` behind.

Resuming: a run whose manifest exists with the same options and file list, whose outputs
are all present (the ``.rec`` size as recorded) and newer than every input file, returns
the recorded report without re-packing (``force=True`` re-packs). Interrupted runs start
over: only complete outputs are reused. The manifest is written (marked incomplete) before
the outputs are renamed into place and marked complete after, so a run killed in between
is recognised as this source's own output.

Nothing unrelated is overwritten: when ``PREFIX.rec/.idx/.lst`` exist but ``PREFIX.pack.json``
does not say they were packed from the same ``source``, or ``classes.txt`` exists with other
class names than this source's (and than this prefix's earlier pack of it), :func:`pack`
raises :class:`~gluon_transfer.errors.DataError` naming the file before doing any work;
``force=True`` overwrites them. Re-packing one source into its own prefix (new options,
newer images) needs no ``force``.
"""
import json
import os
import random
import sys
import time

import numpy as np

from ..errors import DataError

__all__ = ['IMAGE_EXTS', 'PackReport', 'CorruptImagesError', 'list_image_folder', 'read_lst', 'write_lst',
           'pack', 'read_classes', 'check_overwrite']

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.pbm', '.tif', '.tiff', '.webp')
_MANIFEST_VERSION = 1


class PackReport:
    """Result of :func:`pack`: ``prefix``, ``written`` (records), ``skipped`` (list of
    ``(relpath, reason)``), ``classes`` (names or None), ``seconds``, ``reused`` (True when
    complete outputs were found and nothing was packed)."""

    def __init__(self, prefix, written, skipped, classes, seconds, reused=False):
        self.prefix, self.written, self.skipped = prefix, written, skipped
        self.classes, self.seconds, self.reused = classes, seconds, reused

    @property
    def num_skipped(self):
        return len(self.skipped)

    def summary(self):
        s = '%s.rec: %d records written, %d skipped' % (self.prefix, self.written, self.num_skipped)
        if self.reused:
            s += ' (outputs up to date; nothing re-packed)'
        else:
            s += ' in %.1f s' % self.seconds
        return s

    def __repr__(self):
        return 'PackReport(%s)' % self.summary()


class CorruptImagesError(DataError):
    """Images that cannot be read or decoded, with ``skip_corrupt=False``. ``images`` lists
    them as ``(relpath, reason)`` (or ``(relpath, reason, split)`` from
    :func:`~gluon_transfer.data.transfer_sets.prepare_dataset`); the message is one line."""

    def __init__(self, message, images):
        super().__init__(message)
        self.images = list(images)


def read_classes(path):
    """Class names from a ``classes.txt`` (one per line; blank lines ignored)."""
    try:
        with open(path) as f:
            return [ln.strip() for ln in f if ln.strip()]
    except OSError as e:
        raise DataError('%s: cannot read class list (%s)' % (path, e.strerror or e)) from None


def list_image_folder(root, classes=None, exts=IMAGE_EXTS):
    """``([(label, relpath), ...], classes)`` for a class-per-folder tree.

    ``classes``: None (sorted sub-folder names), a list of names, or a path to a
    ``classes.txt`` (to give a validation tree the training set's label numbering).
    Files are listed recursively and sorted; relpaths use '/'."""
    if not os.path.isdir(root):
        raise DataError('%s: image folder not found (expected one sub-folder per class)' % root)
    if isinstance(classes, str):
        classes = read_classes(classes)
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError('%s: folder(s) %s are not in the given class list' % (root, ', '.join(extra[:5])))
    if not classes:
        raise DataError('%s: no class sub-folders found (expected ROOT/<class>/<image>)' % root)
    exts = tuple(e.lower() for e in exts)
    items = []
    for label, name in enumerate(classes):
        cdir = os.path.join(root, name)
        if not os.path.isdir(cdir):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames.sort()
            for fn in filenames:
                if fn.lower().endswith(exts):
                    files.append(os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, '/'))
        items.extend((label, p) for p in sorted(files))
    if not items:
        raise DataError('%s: no images with extensions %s found in the class folders'
                        % (root, '/'.join(exts)))
    return items, list(classes)


def read_lst(path):
    """Rows ``(index, labels tuple, relpath)`` of a ``.lst`` file (tab-separated:
    index, one or more labels, relative path)."""
    rows = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip('\r\n')
                if not line.strip():
                    continue
                parts = line.split('\t')
                try:
                    if len(parts) < 3:
                        raise ValueError
                    rows.append((int(parts[0]), tuple(float(x) for x in parts[1:-1]), parts[-1]))
                except ValueError:
                    raise DataError('%s: line %d is not "index<TAB>label<TAB>relpath"' % (path, n)) from None
    except OSError as e:
        raise DataError('%s: cannot read list file (%s)' % (path, e.strerror or e)) from None
    if not rows:
        raise DataError('%s: list file has no entries' % path)
    return rows


def write_lst(path, rows):
    with open(path, 'w') as f:
        for index, labels, relpath in rows:
            f.write('%d\t%s\t%s\n' % (index, '\t'.join('%f' % v for v in labels), relpath))


def _load(task):
    """Worker: read, verify and (optionally) resize + re-encode one image.
    Returns ``(True, bytes)`` or ``(False, reason)``."""
    import cv2
    path, resize, quality = task
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        return False, 'cannot read (%s)' % (e.strerror or e)
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None or img.size == 0:
        return False, 'does not decode as an image (%d bytes)' % len(raw)
    if not resize:
        return True, raw
    h, w = img.shape[:2]
    s = float(resize) / min(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        return False, 'could not be re-encoded as JPEG'
    return True, buf.tobytes()


def _init_worker():
    import cv2
    cv2.setNumThreads(1)  # the pool provides the parallelism


def _outputs(prefix):
    return [prefix + '.rec', prefix + '.idx', prefix + '.lst']


def _read_manifest(prefix):
    try:
        with open(prefix + '.pack.json') as f:
            man = json.load(f)
    except (OSError, ValueError):
        return None
    return man if isinstance(man, dict) and isinstance(man.get('key'), dict) else None


def _write_manifest(prefix, manifest):
    tmp = '%s.pack.json.part%d' % (prefix, os.getpid())
    with open(tmp, 'w') as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, prefix + '.pack.json')


def check_overwrite(prefix, source, class_names=None):
    """Raise :class:`DataError` naming the first existing output of ``pack(source, prefix)``
    that another source (or something other than :func:`pack`) wrote: ``PREFIX.rec/.idx/.lst``
    without a manifest naming ``source``, or a ``classes.txt`` beside them with other names
    than ``class_names`` (None: not checked). What :func:`pack` checks before writing, unless
    ``force``."""
    source = os.path.abspath(source)
    out_dir = os.path.dirname(os.path.abspath(prefix))
    man = _read_manifest(prefix)
    ours = man is not None and man['key'].get('source') == source
    if not ours:
        for path in _outputs(prefix):
            if os.path.exists(path) and os.path.abspath(path) != source:
                why = ('was packed from %s' % man['key'].get('source')) if man is not None else \
                    'was not written by this packer (no %s)' % os.path.basename(prefix + '.pack.json')
                raise DataError('%s exists and %s; refusing to overwrite it (pass --force / force=True, '
                                'or choose another output prefix)' % (path, why))
    if class_names is None:
        return
    path = os.path.join(out_dir, 'classes.txt')
    if not os.path.exists(path):
        return
    existing = read_classes(path)
    if existing == list(class_names) or (ours and existing == man.get('classes')):
        return
    raise DataError('%s exists with other class names (%d classes, first %r; this source has %d, first %r); '
                    'refusing to overwrite it (pass --classes %s to keep its label order, --force to replace it, '
                    'or choose another output folder)' % (path, len(existing), existing[0] if existing else '',
                                                          len(class_names), class_names[0], path))


def _reuse(prefix, manifest_key, newest_input):
    man = _read_manifest(prefix)
    if man is None or man.get('key') != manifest_key or not man.get('complete', True):
        return None
    outs = _outputs(prefix) + [prefix + '.pack.json']
    if not all(os.path.isfile(p) for p in outs):
        return None
    if os.path.getsize(prefix + '.rec') != man.get('rec_bytes'):
        return None
    if min(os.path.getmtime(p) for p in outs) < newest_input:
        return None
    return PackReport(prefix, man['written'], [tuple(s) for s in man['skipped']],
                      man.get('classes'), 0.0, reused=True)


def pack(source, prefix, resize=0, quality=95, workers=2, root=None, classes=None,
         shuffle=True, seed=0, force=False, progress=None, chunksize=8, skip_corrupt=True):
    """Pack ``source`` (a class-per-folder directory or a ``.lst`` file) into ``prefix.*``.

    Parameters
    ----------
    source : folder ``ROOT/<class>/<image>`` or a ``.lst`` file.
    prefix : output path without extension (its folder is created).
    resize : 0 keeps the original bytes; N > 0 scales the shorter side to N and re-encodes.
    quality : JPEG quality when re-encoding.
    workers : processes decoding/verifying/encoding (records are written in order by the
        calling process); 1 runs everything in-process.
    root : image root for a ``.lst`` (default: the ``.lst``'s folder).
    classes : folder input only: class names (list or ``classes.txt`` path) to fix labels.
    shuffle, seed : folder input only: shuffle the record order reproducibly.
    force : re-pack even when complete outputs are up to date, and overwrite outputs or a
        ``classes.txt`` that another source wrote.
    progress : callable ``(done, total, skipped, seconds)`` called as records are written.
    skip_corrupt : True packs the images that decode and lists the others in the report;
        False raises :class:`CorruptImagesError` listing them and writes nothing.

    Returns a :class:`PackReport`. Raises :class:`DataError` for a missing/empty source,
    outputs that belong to another source (without ``force``), or when no image at all can
    be packed.
    """
    import mxnet as mx
    t0 = time.time()
    source = os.path.abspath(source)
    if os.path.isdir(source):
        items, class_names = list_image_folder(source, classes)
        if shuffle:
            random.Random(seed).shuffle(items)
        root = source
        rows = [(None, (float(label),), rel) for label, rel in items]
        mode = 'folder'
    elif os.path.isfile(source):
        rows = read_lst(source)
        root = os.path.abspath(root or os.path.dirname(source))
        class_names = None
        mode = 'lst'
    else:
        raise DataError('%s: not found (expected an image folder or a .lst file)' % source)
    paths = [os.path.join(root, rel) for _, _, rel in rows]
    manifest_key = {'version': _MANIFEST_VERSION, 'source': source, 'root': root, 'mode': mode,
                    'resize': int(resize or 0), 'quality': int(quality) if resize else None,
                    'classes': class_names, 'rows': len(rows),
                    'list_digest': _digest([r[1:] for r in rows])}
    out_dir = os.path.dirname(os.path.abspath(prefix))
    if not force:
        check_overwrite(prefix, source, class_names)
        newest = max([os.path.getmtime(source)] + [_mtime(p) for p in paths])
        done = _reuse(prefix, manifest_key, newest)
        if done is not None:
            if done.skipped and not skip_corrupt:
                raise _corrupt_error(source, len(rows), done.skipped,
                                     'the existing %s.rec was packed without them' % prefix)
            return done

    os.makedirs(out_dir, exist_ok=True)
    # PREFIX.lst as the input (im2rec's convention) is kept as the user wrote it
    exts = ('rec', 'idx') if os.path.abspath(prefix + '.lst') == source else ('rec', 'idx', 'lst')
    tmp = {ext: '%s.%s.part' % (prefix, ext) for ext in exts}
    tasks = [(p, int(resize or 0), quality) for p in paths]
    written_rows, skipped = [], []
    writer = mx.recordio.MXIndexedRecordIO(tmp['idx'], tmp['rec'], 'w')
    pool = None
    try:
        if workers and workers > 1:
            import multiprocessing as mp
            method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
            pool = mp.get_context(method).Pool(int(workers), initializer=_init_worker)
            results = pool.imap(_load, tasks, chunksize=chunksize)
        else:
            results = map(_load, tasks)
        for n, ((index, labels, rel), (ok, payload)) in enumerate(zip(rows, results)):
            if ok:
                key = len(written_rows) if index is None else index
                label = labels[0] if len(labels) == 1 else list(labels)
                flag = 0 if len(labels) == 1 else len(labels)
                header = mx.recordio.IRHeader(flag, label, key, 0)
                writer.write_idx(key, mx.recordio.pack(header, payload))
                written_rows.append((key, labels, rel))
            else:
                skipped.append((rel, payload))
            if progress is not None:
                progress(n + 1, len(rows), len(skipped), time.time() - t0)
    except BaseException:
        writer.close()
        for p in tmp.values():
            if os.path.exists(p):
                os.remove(p)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    writer.close()
    if not written_rows or (skipped and not skip_corrupt):
        for p in tmp.values():
            if os.path.exists(p):
                os.remove(p)
        if written_rows:
            raise _corrupt_error(source, len(rows), skipped, 'nothing was written to %s.rec' % prefix)
        raise DataError('%s: none of the %d images could be packed (first: %s: %s)'
                        % (source, len(rows), skipped[0][0], skipped[0][1]))
    if 'lst' in tmp:
        write_lst(tmp['lst'], written_rows)
    manifest = {'key': manifest_key, 'written': len(written_rows), 'skipped': skipped,
                'classes': class_names, 'rec_bytes': os.path.getsize(tmp['rec']), 'complete': False}
    _write_manifest(prefix, manifest)          # claims the outputs before they are replaced
    for ext in exts:
        os.replace(tmp[ext], '%s.%s' % (prefix, ext))
    if class_names is not None:
        ctmp = os.path.join(out_dir, 'classes.txt.part%d' % os.getpid())
        with open(ctmp, 'w') as f:
            f.write(''.join(c + '\n' for c in class_names))
        os.replace(ctmp, os.path.join(out_dir, 'classes.txt'))
    seconds = time.time() - t0
    manifest.update(complete=True, seconds=round(seconds, 3))
    _write_manifest(prefix, manifest)
    return PackReport(prefix, len(written_rows), skipped, class_names, seconds)


def _corrupt_error(source, total, skipped, state):
    return CorruptImagesError(
        '%s: %d of %d images cannot be read or decoded (first: %s: %s); %s: fix or remove them, or pack '
        'without them (skip_corrupt / --skip-corrupt)' % (source, len(skipped), total, skipped[0][0],
                                                           skipped[0][1], state), skipped)


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return float('inf')  # a missing input forces a re-pack (which reports it)


def _digest(rows):
    import hashlib
    h = hashlib.sha1()
    for labels, rel in rows:
        h.update(('%r\t%s\n' % (labels, rel)).encode('utf-8', 'surrogateescape'))
    return h.hexdigest()


def print_progress(stream=None, every=1.0):
    """A ``progress`` callback printing ``done/total, rate, skipped`` about once a second."""
    stream = stream or sys.stderr
    state = {'last': -1e9}

    def cb(done, total, skipped, seconds):
        if done == total or seconds - state['last'] >= every:
            state['last'] = seconds
            rate = done / seconds if seconds > 0 else 0.0
            stream.write('\r%d/%d (%.0f%%) %.0f img/s, %d skipped' % (
                done, total, 100.0 * done / total, rate, skipped) + ('\n' if done == total else ''))
            stream.flush()
    return cb
