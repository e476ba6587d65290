"""RecordIO files: structure checks in Python, and the ImageRecordIter-backed batch iterator.

File format (dmlc-core RecordIO, as written by ``mx.recordio`` / im2rec)
-----------------------------------------------------------------------
A ``.rec`` file is a sequence of parts. Each part is::

    uint32 magic = 0xced7230a      (little-endian)
    uint32 lrec                    low 29 bits: payload length L; high 3 bits: cflag
    L payload bytes, then zero padding up to a multiple of 4

``cflag`` is 0 for a complete record; a record whose payload contains the magic at a
4-byte-aligned position is split there into parts with cflag 1 (first), 2 (middle),
3 (last), and the reader re-inserts the magic between parts. The payload of an image
record is ``IRHeader`` packed as ``struct 'IfQQ'`` (flag, label, id, id2; 24 bytes), then
``flag`` float32 labels when ``flag > 0``, then the encoded image. The ``.idx`` file has
one ``key<TAB>byte offset`` line per record.

Why check in Python: on MXNet 1.9.1 ``mx.io.ImageRecordIter`` segfaults on a truncated
``.rec`` with an intact ``.idx``, aborts the process (uncatchable C++ terminate) on a
truncated ``.rec`` without one, dies with SIGFPE on an undecodable image when a ``resize``
augmenter is on, and with the pad + random-crop augmentation (the CIFAR presets) silently
turns it into a blank training image (measured). So :func:`inspect_recordio` validates
every indexed record header before the C++ iterator opens the file, and
:func:`verify_decode` decodes every payload the iterator will read -- at every file size:
a corrupt record is an error naming the file and the record, as in the Python pipeline.

Cost: one ``cv2.imdecode`` per record (about 1.4 s for CIFAR-10's 45k records; roughly
0.5-1 ms per 256 px JPEG). Parts of at least ``PARALLEL_MIN_RECORDS`` records are decoded
by ``workers`` processes, and for files of at least ``STAMP_MIN_BYTES`` a passed check is
remembered in the cache (:mod:`gluon_transfer.cache`, ``verified/``), keyed on the files'
identity (device, inode, size, modification and change times of ``.rec`` and ``.idx``) and
the records checked, so it runs once per version of a large file.
"""
import hashlib
import json
import math
import os
import struct
import tempfile
import warnings

import numpy as np
import mxnet as mx

from ..cache import cache_dir
from ..errors import ConfigError, DataError
from .base import Batch

__all__ = ['RECORD_MAGIC', 'RecordInfo', 'inspect_recordio', 'read_index', 'read_record',
           'find_bad_record', 'verify_decode', 'indexed_part_size', 'epoch_seed', 'RecordIter']

RECORD_MAGIC = 0xced7230a
_MAGIC_BYTES = struct.pack('<I', RECORD_MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = 'IfQQ'
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
# Every record is decode-checked (verify_decode); files of at least this size remember a
# passed check in the cache (CIFAR-10 train, 43 MB, decodes in about 1.4 s: not worth a file).
STAMP_MIN_BYTES = 64 << 20
# Parts with at least this many records are decoded by several processes.
PARALLEL_MIN_RECORDS = 4096


class RecordInfo:
    """What :func:`inspect_recordio` learnt about a ``.rec``/``.idx`` pair.

    Attributes: ``rec``, ``idx`` (paths), ``keys``, ``offsets`` (int64 arrays in file order,
    i.e. sorted by offset, the order ImageRecordIter partitions in), ``labels`` (float32,
    first label of each record's IRHeader), ``file_size``, ``num_records``.
    """

    def __init__(self, rec, idx, keys, offsets, labels, file_size):
        self.rec, self.idx = rec, idx
        self.keys, self.offsets, self.labels = keys, offsets, labels
        self.file_size = file_size

    @property
    def num_records(self):
        return len(self.offsets)

    def __repr__(self):
        return 'RecordInfo(%r, %d records)' % (self.rec, self.num_records)


def default_idx_path(rec):
    return os.path.splitext(rec)[0] + '.idx'


def _check_readable(path, what):
    if not os.path.exists(path):
        raise DataError('%s: %s not found' % (path, what))
    if not os.path.isfile(path):
        raise DataError('%s: %s is not a regular file' % (path, what))
    try:
        with open(path, 'rb') as f:
            f.read(1)
    except OSError as e:
        raise DataError('%s: cannot read %s (%s)' % (path, what, e.strerror or e)) from None


def read_index(idx_path):
    """Parse a ``.idx`` file (``key<TAB>offset`` per line) into two int64 arrays.

    Uses ``np.fromstring`` on the whole text (about 0.2 s per million lines) and checks
    the value count so a malformed line is reported, not silently dropped."""
    with open(idx_path, 'rb') as f:
        text = f.read()
    nlines = text.count(b'\n') + (0 if text.endswith(b'\n') or not text else 1)
    with warnings.catch_warnings():
        warnings.simplefilter('error', DeprecationWarning)
        try:
            vals = np.fromstring(text.decode('ascii', 'replace'), dtype=np.int64, sep=' ')
        except (DeprecationWarning, ValueError):
            vals = None
    if vals is None or len(vals) != 2 * nlines:
        bad = _first_bad_idx_line(text)
        raise DataError('%s: line %d is not "index<TAB>offset"' % (idx_path, bad))
    vals = vals.reshape(-1, 2)
    return vals[:, 0].copy(), vals[:, 1].copy()


def _first_bad_idx_line(text):
    lines = text.split(b'\n')
    if lines and not lines[-1]:
        lines.pop()
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return i + 1
    return len(lines)


def inspect_recordio(rec, idx=None):
    """Check a ``.rec``/``.idx`` pair's structure and read every record's label.

    Checks: both files exist and are readable (a ``.rec`` without ``.idx`` is an error);
    the index parses and lists at least one record; every indexed offset ``o`` satisfies
    ``o % 4 == 0``, ``o + 8 <= size``, the uint32 at ``o`` is the magic, cflag is 0 or 1
    (a record must start at a first part) and the padded payload ends inside the file
    (multi-part records are followed part by part). Labels are read from the IRHeader
    that follows (first label when ``flag > 0``).

    Cost: the file is memory-mapped and the 8-byte headers are gathered with numpy fancy
    indexing, so only the pages holding headers are touched (see docs/benchmarks.md for the
    time per million records). Raises :class:`DataError` naming the file and problem.
    """
    idx = idx or default_idx_path(rec)
    _check_readable(rec, 'record file')
    if not os.path.exists(idx):
        raise DataError('%s has no index file %s (ImageRecordIter would crash on a damaged '
                        'file without it); re-pack with tools/pack.py' % (rec, idx))
    _check_readable(idx, 'index file')
    keys, offsets = read_index(idx)
    if len(offsets) == 0:
        raise DataError('%s: index lists no records (empty set)' % idx)
    size = os.path.getsize(rec)
    order = np.argsort(offsets, kind='stable')
    keys, offsets = keys[order], offsets[order]
    if size < 8:
        raise DataError('%s: file is empty or truncated (%d bytes) but %s lists %d records'
                        % (rec, size, idx, len(offsets)))

    def fail(i, why):
        raise DataError('%s: record %d (offset %d) %s' % (rec, int(keys[i]), int(offsets[i]), why))

    bad = np.nonzero((offsets < 0) | (offsets % 4 != 0) | (offsets + 8 > size))[0]
    if len(bad):
        i = bad[0]
        if offsets[i] + 8 > size:
            fail(i, 'lies beyond the end of the file (%d bytes): the .rec is truncated or the '
                    '.idx belongs to another file' % size)
        fail(i, 'is not 4-byte aligned: %s does not match the .rec' % idx)
    words = np.memmap(rec, dtype='<u4', mode='r', shape=(size // 4,))
    try:
        w = offsets // 4
        magic = np.asarray(words[w])
        lrec = np.asarray(words[w + 1])
        bad = np.nonzero(magic != RECORD_MAGIC)[0]
        if len(bad):
            fail(bad[0], 'does not start with the RecordIO magic 0x%08x: the file is corrupt or '
                         '%s does not match it' % (RECORD_MAGIC, idx))
        length = (lrec & _LEN_MASK).astype(np.int64)
        cflag = lrec >> 29
        end = offsets + 8 + ((length + 3) // 4) * 4
        bad = np.nonzero(cflag > 1)[0]
        if len(bad):
            fail(bad[0], 'starts in the middle of a split record (cflag %d): %s does not match '
                         'the .rec' % (int(cflag[bad[0]]), idx))
        bad = np.nonzero(end > size)[0]
        if len(bad):
            i = bad[0]
            fail(i, 'needs %d payload bytes but the file ends at %d: the .rec is truncated'
                 % (int(length[i]), size))
        bad = np.nonzero(length < _IR_SIZE)[0]
        if len(bad):
            fail(bad[0], 'is too short (%d bytes) to hold an image record header'
                 % int(length[bad[0]]))
        for i in np.nonzero(cflag == 1)[0]:  # rare: payload contained the magic
            _follow_parts(rec, words, int(offsets[i]), size, lambda why, i=i: fail(i, why))
        # IRHeader: flag (uint32) at +8, label (float32) at +12; array labels follow the header.
        flag = np.asarray(words[w + 2])
        labels = np.asarray(words[w + 3]).view('<f4').astype(np.float32)
        multi = np.nonzero(flag > 0)[0]
        if len(multi):
            first = np.asarray(words[w[multi] + 2 + _IR_SIZE // 4]).view('<f4')
            labels[multi] = first
    finally:
        del words
    return RecordInfo(rec, idx, keys, offsets, labels, size)


def _follow_parts(rec, words, offset, size, fail):
    pos = offset
    while True:
        if pos + 8 > size:
            fail('is split into parts and the file ends inside it: the .rec is truncated')
        if int(words[pos // 4]) != RECORD_MAGIC:
            fail('is split into parts and part at offset %d lacks the magic' % pos)
        lrec = int(words[pos // 4 + 1])
        length, cflag = lrec & _LEN_MASK, lrec >> 29
        pos += 8 + ((length + 3) // 4) * 4
        if pos > size:
            fail('is split into parts and the file ends inside it: the .rec is truncated')
        if cflag in (0, 3):
            return


def read_record(f, offset):
    """Payload bytes of the record at ``offset`` of the open binary file ``f`` (pure Python,
    so a damaged file raises :class:`ValueError` instead of crashing the process)."""
    f.seek(offset)
    parts = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError('file ends inside the record')
        magic, lrec = struct.unpack('<II', head)
        if magic != RECORD_MAGIC:
            raise ValueError('no RecordIO magic')
        length, cflag = lrec & _LEN_MASK, lrec >> 29
        data = f.read(length)
        if len(data) < length:
            raise ValueError('file ends inside the record')
        parts.append(data)
        f.seek((4 - length % 4) % 4, 1)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def unpack_payload(payload):
    """``(flag, label, id, id2, image_bytes)`` from a record payload; ``label`` is a float
    or an array of ``flag`` floats, as in ``mx.recordio.unpack``."""
    flag, label, rid, rid2 = struct.unpack_from(_IR_FORMAT, payload)
    body = payload[_IR_SIZE:]
    if flag > 0:
        label = np.frombuffer(body[:4 * flag], dtype='<f4')
        body = body[4 * flag:]
    return flag, label, rid, rid2, body


def _scan(rec, offsets, keys):
    """``(key, reason)`` of the first record (in the given order) that does not read or
    decode with ``cv2.imdecode(IMREAD_COLOR)`` -- the Python pipeline's decode -- else None."""
    import cv2
    with open(rec, 'rb') as f:
        for offset, key in zip(offsets, keys):
            try:
                payload = read_record(f, int(offset))
                body = unpack_payload(payload)[4]
            except (ValueError, struct.error) as e:
                return int(key), 'cannot be read (%s)' % e
            img = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR) if body else None
            if img is None or img.size == 0:
                return int(key), 'holds %d bytes that do not decode as an image' % len(body)
    return None


def _scan_in_worker(args):
    import cv2
    cv2.setNumThreads(1)        # the processes are the parallelism
    return _scan(*args)


def find_bad_record(info, positions=None, workers=1):
    """Decode records in file order (``positions`` into ``info.offsets``, default all) and
    return ``(key, reason)`` for the first that does not read or decode, else None.

    ``workers > 1`` and at least ``PARALLEL_MIN_RECORDS`` records: contiguous chunks are
    decoded by that many forked processes (Linux); the answer is the same, the first bad
    record in file order."""
    positions = np.arange(info.num_records) if positions is None else np.asarray(positions, dtype=np.int64)
    offsets, keys = info.offsets[positions], info.keys[positions]
    workers = int(workers or 1)
    if workers <= 1 or len(positions) < max(PARALLEL_MIN_RECORDS, 2) or not hasattr(os, 'fork'):
        return _scan(info.rec, offsets, keys)
    import multiprocessing
    chunks = np.array_split(np.arange(len(positions)), min(len(positions), 8 * workers))
    jobs = [(info.rec, offsets[c], keys[c]) for c in chunks if len(c)]
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        for bad in pool.imap(_scan_in_worker, jobs):     # in order: the first bad chunk wins
            if bad is not None:
                pool.terminate()
                return bad
    return None


def verify_decode(info, positions=None, workers=1):
    """Raise :class:`DataError` naming the first record of ``info`` (among ``positions``,
    default all) that does not decode; ``workers`` processes decode large parts. For files
    of at least ``STAMP_MIN_BYTES`` a passed check of a range of positions is remembered (see
    the module docstring) and not repeated while ``.rec`` and ``.idx`` are unchanged."""
    span = _as_span(positions, info.num_records)
    stamp = _stamp_path(info) if span is not None and info.file_size >= STAMP_MIN_BYTES else None
    if stamp is not None and _stamp_covers(stamp, info, span):
        return
    bad = find_bad_record(info, positions, workers)
    if bad is not None:
        raise DataError('%s: record %d %s' % (info.rec, bad[0], bad[1]))
    if stamp is not None:
        _stamp_add(stamp, info, span)


def _as_span(positions, n):
    """``positions`` as ``(begin, end)`` when it is a contiguous ascending range, else None."""
    if positions is None:
        return 0, n
    if isinstance(positions, range) and positions.step == 1:
        return positions.start, positions.stop
    return None


def _identity(path):
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _stamp_path(info):
    name = hashlib.sha1(os.path.realpath(info.rec).encode()).hexdigest()[:20]
    return cache_dir('verified', name + '.json')


def _stamp_read(path, info):
    """The verified spans of ``path`` if it describes these very files, else []."""
    try:
        with open(path) as f:
            stamp = json.load(f)
        same = (stamp['rec'] == os.path.realpath(info.rec) and stamp['idx'] == os.path.realpath(info.idx)
                and stamp['rec_id'] == _identity(info.rec) and stamp['idx_id'] == _identity(info.idx))
        return [tuple(s) for s in stamp['spans']] if same else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _stamp_covers(path, info, span):
    return any(b <= span[0] and span[1] <= e for b, e in _stamp_read(path, info))


def _stamp_add(path, info, span):
    """Record ``span`` as verified (atomic write; a cache that cannot be written only costs
    the check next time)."""
    try:
        spans = sorted(set(_stamp_read(path, info)) | {tuple(span)})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.verified', dir=os.path.dirname(path))
        with os.fdopen(fd, 'w') as f:
            json.dump({'rec': os.path.realpath(info.rec), 'idx': os.path.realpath(info.idx),
                       'rec_id': _identity(info.rec), 'idx_id': _identity(info.idx), 'spans': spans}, f)
        os.replace(tmp, path)
    except OSError:
        pass


def indexed_part_size(n, num_parts, part_index):
    """Records ImageRecordIter reads for ``part_index`` of ``num_parts`` with an index file:
    dmlc's indexed splitter cuts the offset-sorted records into steps of
    ``ceil(n / num_parts)`` (so the last parts can be smaller, or empty). Matches the counts
    measured in tests/test_data_recordio.py."""
    step = (n + num_parts - 1) // num_parts
    begin = min(step * part_index, n)
    return min(step * (part_index + 1), n) - begin, begin


def epoch_seed(seed, epoch, stream=0):
    """A 31-bit seed derived from ``(seed, epoch, stream)`` with numpy's SeedSequence, so
    every epoch (and the shuffle vs augmentation stream) gets an independent seed."""
    return int(np.random.SeedSequence([int(seed) & 0xffffffff, int(epoch), int(stream)])
               .generate_state(1)[0] & 0x7fffffff)


class RecordIter:
    """Batches from a ``.rec``/``.idx`` pair through ``mx.io.ImageRecordIter``, following the
    contract in :mod:`gluon_transfer.data.base`.

    Parameters
    ----------
    rec, idx : paths (``idx`` defaults to the ``.rec`` path with ``.idx``).
    batch_size : int
    data_shape : (C, H, W) of the output.
    mean, std : per-channel RGB values in 0-255 units; output is ``(x - mean) / std``.
    aug : dict of extra ImageRecordIter keyword arguments (augmentation), e.g. the
        preset's ``pad``/``rand_crop`` or ``random_resized_crop`` settings.
    train : training iterators shuffle and report ``pad = 0`` (the last batch is filled
        by wrapping round, ``round_batch=True``, so every batch is full of real images);
        evaluation iterators keep file order and report ImageRecordIter's ``pad``.
    num_parts, part_index : shard (ImageRecordIter's own partitioning, see
        :func:`indexed_part_size`); ``round_batch`` stays True because with False
        ImageRecordIter reports ``pad = 0`` for stale rows (measured).
    seed : shuffling uses ``epoch_seed(seed, epoch, 0)`` and augmentation
        ``epoch_seed(seed, epoch, 1)``; the C++ iterator is recreated for every epoch, so
        ``set_epoch(e)`` gives the same batches whenever it is called with the same ``e``
        (for a fixed ``preprocess_threads``: each thread has its own generator).
    preprocess_threads, prefetch_buffer : ImageRecordIter threads and queue length
        (``preprocess_threads`` processes also run the decode check of large parts).
    verify : True or 'auto' (default): decode every record of this part first, at any file
        size (:func:`verify_decode`: a corrupt record is a :class:`DataError` naming the file
        and record; large files remember a passed check); False: skip it (only for records
        already checked -- ImageRecordIter crashes or trains on blank images otherwise).
    info : a :class:`RecordInfo` already obtained from :func:`inspect_recordio`.

    Batches are copied out of ImageRecordIter's buffers, which it recycles on the next
    call, so a batch stays valid after the loop moves on.
    """

    def __init__(self, rec, idx=None, batch_size=32, data_shape=(3, 224, 224),
                 mean=(0., 0., 0.), std=(1., 1., 1.), aug=None, train=False, num_parts=1,
                 part_index=0, seed=0, preprocess_threads=2, prefetch_buffer=2, verify='auto',
                 info=None, label_width=1):
        if not 0 <= part_index < num_parts:
            raise ConfigError('part_index %d not in [0, %d)' % (part_index, num_parts))
        self.info = info if info is not None else inspect_recordio(rec, idx)
        self.rec, self.idx = self.info.rec, self.info.idx
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.num_samples, begin = indexed_part_size(self.info.num_records, num_parts, part_index)
        self._positions = range(begin, begin + self.num_samples)
        if self.num_samples < self.batch_size:
            raise ConfigError('%s: part %d of %d holds %d records, fewer than the batch size %d '
                              '(ImageRecordIter cannot fill one batch); use a smaller batch or '
                              'fewer parts' % (self.rec, part_index, num_parts, self.num_samples,
                                               self.batch_size))
        if verify not in (True, False, 'auto'):
            raise ConfigError("verify must be True, False or 'auto', got %r" % (verify,))
        if verify:
            verify_decode(self.info, self._positions, workers=preprocess_threads)
        self.seed = int(seed)
        self.epoch = 0
        c = data_shape[0]
        kw = dict(path_imgrec=self.rec, path_imgidx=self.idx, data_shape=tuple(data_shape),
                  batch_size=self.batch_size, label_width=label_width,
                  preprocess_threads=int(max(1, preprocess_threads)),
                  prefetch_buffer=int(max(1, prefetch_buffer)), num_parts=int(num_parts),
                  part_index=int(part_index), round_batch=True, shuffle=self.train,
                  verbose=False, dtype='float32')
        for ch, m, s in zip('rgba'[:c], mean, std):
            kw['mean_' + ch] = float(m)
            kw['std_' + ch] = float(s)
        kw.update(aug or {})
        self.iter_kwargs = kw

    def __len__(self):
        return int(math.ceil(self.num_samples / float(self.batch_size)))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def make_iter(self):
        """The ImageRecordIter for the current epoch (its constructor decodes a batch)."""
        kw = dict(self.iter_kwargs, seed=epoch_seed(self.seed, self.epoch, 0),
                  seed_aug=epoch_seed(self.seed, self.epoch, 1))
        return mx.io.ImageRecordIter(**kw)

    def _decode_error(self, err):
        bad = find_bad_record(self.info, self._positions)
        first = str(err).strip().splitlines()
        first = first[-1] if first else repr(err)
        if bad is not None:
            return DataError('%s: record %d %s (ImageRecordIter: %s)'
                             % (self.rec, bad[0], bad[1], first[:200]))
        return DataError('%s: ImageRecordIter failed: %s' % (self.rec, first[:300]))

    def __iter__(self):
        try:
            it = self.make_iter()
        except mx.base.MXNetError as e:
            raise self._decode_error(e) from None
        try:
            for _ in range(len(self)):
                try:
                    b = it.next()
                except StopIteration:
                    raise DataError('%s: ImageRecordIter ended after fewer batches than the %d '
                                    'records of this part need' % (self.rec, self.num_samples)) from None
                except mx.base.MXNetError as e:
                    raise self._decode_error(e) from None
                data = b.data[0].copy()
                label = b.label[0].copy()
                data.wait_to_read()
                label.wait_to_read()
                yield Batch(data, label, 0 if self.train else int(b.pad))
        finally:
            del it
