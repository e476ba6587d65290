"""A held-out split of a training RecordIO set: the one helper behind AFDS's mask statistics
and AFA's two-stage model selection (both choose on part of the *training* data, never on
the val/test split).

:func:`split_records` takes a seeded class-balanced ``fraction`` of the records
(:func:`~gluon_transfer.data.datasets.class_balanced_subset`) and writes, under ``out_dir``
(never beside the source: the user's data folder is left alone),

* ``<stem>_f<F>_s<seed>_holdout.rec/.idx`` -- the held-out records,
* ``<stem>_f<F>_s<seed>_train.rec/.idx``   -- the rest (train on these),
* ``<stem>_f<F>_s<seed>.json``             -- the manifest: what the split was cut from.

Records are copied verbatim (keys kept). The files are reused only while the manifest
matches the source: its path, size and modification time, its index size and record
count, the fraction and the seed, and the pair on disk holds the expected record counts. Anything else (the
source ``.rec`` was re-packed, a file is missing or truncated) rebuilds the pair and says
why in :attr:`RecordSplit.rebuilt`, so a changed training set never reuses a stale split.
"""
import json
import os

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ['RecordSplit', 'split_records', 'source_identity', 'NEW_SPLIT']

NEW_SPLIT = 'no split yet'      # RecordSplit.rebuilt of a first split


class RecordSplit:
    """The result of :func:`split_records`: ``train_rec``/``train_idx`` (the rest),
    ``holdout_rec``/``holdout_idx``, ``positions`` (the held-out records' positions in the
    source's file order), ``num_train``, ``num_holdout``, ``source`` (absolute path of the
    source ``.rec``), ``fraction``, ``seed``, ``manifest`` (its path) and ``rebuilt``
    (None when existing files were reused, else why they were written)."""

    def __init__(self, prefix, positions, num_train, source, fraction, seed, rebuilt):
        self.train_rec, self.train_idx = prefix + '_train.rec', prefix + '_train.idx'
        self.holdout_rec, self.holdout_idx = prefix + '_holdout.rec', prefix + '_holdout.idx'
        self.manifest = prefix + '.json'
        self.positions = np.asarray(positions, dtype=np.int64)
        self.num_holdout = int(len(self.positions))
        self.num_train = int(num_train)
        self.source = source
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.rebuilt = rebuilt

    def __repr__(self):
        return 'RecordSplit(%d train + %d held out of %s, fraction %g, seed %d)' % (
            self.num_train, self.num_holdout, self.source, self.fraction, self.seed)


def source_identity(path):
    """``{'path', 'bytes', 'mtime_ns'}`` of a file: what a cache keyed on a data file records."""
    st = os.stat(path)
    return {'path': os.path.abspath(path), 'bytes': int(st.st_size), 'mtime_ns': int(st.st_mtime_ns)}


def _count(rec, idx):
    from .recordio import inspect_recordio
    try:
        return inspect_recordio(rec, idx).num_records
    except DataError:
        return None


def split_records(rec, fraction, out_dir, seed=0, idx=None):
    """Split the training RecordIO ``rec`` (index ``idx``, default beside it) into a seeded
    class-balanced held-out ``fraction`` and the rest, under ``out_dir`` (module docstring).
    Returns a :class:`RecordSplit`. Errors: a fraction outside (0, 1), a split that leaves
    no training records, an unreadable source."""
    from .datasets import class_balanced_subset, write_record_subset
    from .recordio import default_idx_path, inspect_recordio
    if not 0 < float(fraction) < 1:
        raise ConfigError('holdout fraction must be in (0, 1), got %r' % (fraction,))
    if not out_dir:
        raise ConfigError('split_records needs an output folder (it never writes beside the source)')
    info = inspect_recordio(rec, idx or default_idx_path(rec))
    held = class_balanced_subset(info.labels, info.keys, fraction, seed)
    rest = np.setdiff1d(np.arange(info.num_records), held)
    if not len(rest):
        raise ConfigError('holdout %g of %s leaves no training records' % (float(fraction), rec))
    stem = os.path.splitext(os.path.basename(rec))[0]
    prefix = os.path.join(out_dir, '%s_f%g_s%d' % (stem, float(fraction), int(seed)))
    ident = dict(source_identity(info.rec), idx_bytes=int(os.path.getsize(info.idx)),
                 records=int(info.num_records), fraction=float(fraction), seed=int(seed))
    split = RecordSplit(prefix, held, len(rest), ident['path'], fraction, seed, None)
    reason = None
    if not os.path.isfile(split.manifest):
        reason = NEW_SPLIT
    else:
        try:
            with open(split.manifest) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            recorded = None
        if recorded != ident:
            reason = '%s changed since the split was written' % info.rec
        elif _count(split.holdout_rec, split.holdout_idx) != len(held) or \
                _count(split.train_rec, split.train_idx) != len(rest):
            reason = 'the split files are missing or incomplete'
    if reason is not None:
        if os.path.exists(split.manifest):
            os.remove(split.manifest)           # no manifest until both files are complete again
        write_record_subset(info, held, prefix + '_holdout')
        write_record_subset(info, rest, prefix + '_train')
        with open(split.manifest + '.part', 'w') as f:
            json.dump(ident, f, indent=1, sort_keys=True)
        os.replace(split.manifest + '.part', split.manifest)
        split.rebuilt = reason
    return split
