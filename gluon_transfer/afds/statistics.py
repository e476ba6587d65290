"""AFDS step 1 and 2: the held-out split of the TRAINING data the mask statistics come
from, and the statistics themselves (the procedure: :mod:`gluon_transfer.afds`).

* :class:`TrainHoldout` -- the only data :func:`collect_gate_statistics` accepts (the
  reproduction ran its statistics on the test loader); :func:`split_train_holdout` cuts it
  from a training RecordIO with the package's one holdout helper
  (:func:`gluon_transfer.data.holdout.split_records`: seeded, class-balanced, files under
  the run folder, rebuilt when the training file changed), :meth:`TrainHoldout.from_arrays`
  from in-memory data.
* :func:`collect_gate_statistics` -- per gate and channel, over the held-out samples, with
  every mask 1, in inference mode: the mean and (population) variance of the gate value
  ``pi`` and the mean gated activation ``act`` (formulas in :mod:`gluon_transfer.afds`).
"""
import numpy as np
import mxnet as mx

from ..errors import ConfigError, DataError

__all__ = ['TrainHoldout', 'split_train_holdout', 'collect_gate_statistics', 'current_masks', 'gated']


class TrainHoldout:
    """A held-out split of the training data (the only data mask statistics accept).

    ``iterator``: a batch iterator (the package's contract) over the held-out records,
    evaluation transform; ``source``: the training data it was cut from (a path or a
    description); ``positions``: the held-out records' positions in that training set;
    ``fraction``/``seed``: how it was drawn."""

    def __init__(self, iterator, source, positions, fraction, seed):
        self.iterator = iterator
        self.source = str(source)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.fraction = float(fraction)
        self.seed = int(seed)

    def __iter__(self):
        self.iterator.set_epoch(0)
        return iter(self.iterator)

    def __len__(self):
        return len(self.iterator)

    @property
    def num_samples(self):
        return int(self.iterator.num_samples)

    def __repr__(self):
        return 'TrainHoldout(%d samples, %g of %s, seed %d)' % (self.num_samples, self.fraction, self.source, self.seed)

    @classmethod
    def from_arrays(cls, images, labels, fraction=0.1, seed=0, batch_size=32, mean=(0., 0., 0.), std=(1., 1., 1.),
                    source='in-memory training set'):
        """Split in-memory training data: returns ``(holdout, train_images, train_labels)``
        where ``holdout`` is a seeded class-balanced ``fraction`` (an ArrayIter, no
        augmentation) and the rest is what to train on."""
        from ..data.base import ArrayIter
        from ..data.datasets import class_balanced_subset
        labels = np.asarray(labels)
        pos = class_balanced_subset(labels, np.arange(len(labels)), fraction, seed)
        rest = np.setdiff1d(np.arange(len(labels)), pos)
        it = ArrayIter(images[pos], labels[pos], batch_size, mean=mean, std=std, shuffle=False, last_batch='pad')
        return cls(it, source, pos, fraction, seed), images[rest], labels[rest]



def split_train_holdout(preset, rec_train, fraction=0.1, seed=0, cache_dir=None, batch_size=32, input_size=None,
                        num_workers=2, rec_train_idx=None):
    """Cut a seeded class-balanced ``fraction`` out of the training RecordIO ``rec_train``
    into ``cache_dir`` (required: e.g. the run folder's ``holdout/``; nothing is written
    beside the training data) with :func:`gluon_transfer.data.holdout.split_records`
    (reused while the training file is unchanged, rebuilt otherwise). Returns a dict:
    ``train_rec``, ``train_idx`` (the rest; train on it), ``holdout`` (a
    :class:`TrainHoldout` whose iterator uses the preset's evaluation transform),
    ``num_holdout``, ``num_train`` and ``rebuilt`` (why the files were written, or None)."""
    from ..data.datasets import get_preset, record_iter_kwargs
    from ..data.holdout import split_records
    from ..data.recordio import RecordIter, inspect_recordio
    if not cache_dir:
        raise ConfigError('split_train_holdout needs cache_dir, the folder for the split (e.g. the run folder); '
                          'nothing is written beside the training data')
    preset = get_preset(preset)
    split = split_records(rec_train, fraction, cache_dir, seed=seed, idx=rec_train_idx)
    hold_info = inspect_recordio(split.holdout_rec, split.holdout_idx)
    shape, aug = record_iter_kwargs(preset, False, input_size)
    batch_size = max(1, min(int(batch_size), split.num_holdout))       # a small holdout still fills one batch
    it = RecordIter(hold_info.rec, hold_info.idx, batch_size, shape, aug=aug, train=False, info=hold_info,
                    mean=preset.mean, std=preset.std, seed=seed, preprocess_threads=num_workers)
    return dict(train_rec=split.train_rec, train_idx=split.train_idx,
                holdout=TrainHoldout(it, split.source, split.positions, fraction, seed),
                num_holdout=split.num_holdout, num_train=split.num_train, rebuilt=split.rebuilt)


def require_holdout(holdout):
    """ConfigError unless ``holdout`` is a :class:`TrainHoldout`."""
    if not isinstance(holdout, TrainHoldout):
        raise ConfigError('AFS mask statistics must come from a held-out split of the training data '
                          '(a gluon_transfer.afds.TrainHoldout, see split_train_holdout); got %s -- never the '
                          'validation or test set' % type(holdout).__name__)


def gated(net):
    """``[(name, gate)]`` of the network's AFS gates (blocks built without a gate skipped)."""
    from ..models.afs_resnet import afs_gates
    return [(name, gate) for name, _, _, gate, _, _ in afs_gates(net) if gate is not None]


def current_masks(net):
    """``{gate name: (m, s)}`` numpy float arrays of the network's masks."""
    return {name: (g.mask_m.data().asnumpy().copy(), g.mask_s.data().asnumpy().copy()) for name, g in gated(net)}


def collect_gate_statistics(net, holdout, ctx=None, max_batches=None):
    """Per gate ``{'mean': (C,), 'var': (C,), 'act': (C,), 'h_mean': (C,), 'count': n}``
    (float64): mean and variance of the gate values ``pi``, the mean activation ``act`` and the
    mean gate value before WTA ``h_mean`` (``relu(W GAP(x) + b)``) over the held-out
    training samples (module docstring, step 2). The network runs
    imperatively in inference mode with every mask 1; its masks and hybridization are
    restored afterwards. ``Batch.pad`` rows are ignored. A non-finite gate value is a
    DataError (a diverged network), never skipped."""
    require_holdout(holdout)
    gates = gated(net)
    if not gates:
        raise ConfigError('%s has no AFS gates to collect statistics for' % type(net).__name__)
    ctx = ctx or gates[0][1].mask_m.list_ctx()[0]
    saved = current_masks(net)
    active, flags = net._active, dict(net._flags)
    acc = {name: [0.0, 0.0, 0, 0.0, 0.0] for name, _ in gates}
    from ..models.afs_resnet import removable_gates
    inner = removable_gates(net)          # the others feed the residual add (no ReLU after them)
    relu_after = {name: name in inner or bool(getattr(net, 'relu_before_add', False)) for name, _ in gates}
    for _, g in gates:
        if not g.enabled:
            raise ConfigError('AFS gates are disabled; enable them (set_gates_enabled) before collecting statistics')
        g.mask_m.set_data(mx.nd.ones(g.channels))
        g.mask_s.set_data(mx.nd.ones(g.channels))
    net.hybridize(active=False)
    try:
        for i, batch in enumerate(holdout):
            if max_batches is not None and i >= max_batches:
                break
            keep = batch.data.shape[0] - int(batch.pad)
            if keep <= 0:
                continue
            for _, g in gates:
                g.collecting = []
            with mx.autograd.predict_mode():
                net(batch.data.as_in_context(ctx))
            for name, g in gates:
                pi, pos, mag, h = (a.asnumpy().astype(np.float64)[:keep] for a in g.collecting[0])
                if not np.isfinite(pi).all():
                    # Never skipped: a mask chosen from the finite part would hide a diverged network.
                    raise DataError('AFS gate %s: %d non-finite gate values on the held-out training split (the '
                                    'network diverged; lower --lr or --afs-gate-lr-mult)'
                                    % (name, int((~np.isfinite(pi)).sum())))
                a = acc[name]
                a[0] = a[0] + pi.sum(axis=0)
                a[1] = a[1] + (pi * pi).sum(axis=0)
                a[2] += keep
                a[3] = a[3] + (pi * (pos if relu_after[name] else mag)).sum(axis=0)
                a[4] = a[4] + h.sum(axis=0)
    finally:
        for name, g in gates:
            g.collecting = None
            g.mask_m.set_data(mx.nd.array(saved[name][0]))
            g.mask_s.set_data(mx.nd.array(saved[name][1]))
        net.hybridize(active=False)
        if active:
            net.hybridize(True, **flags)
    stats = {}
    for name, (s1, s2, n, s3, s4) in acc.items():
        if n == 0:
            raise DataError('the held-out training split yielded no samples')
        mean = s1 / n
        stats[name] = {'mean': mean, 'var': np.maximum(s2 / n - mean * mean, 0.0), 'act': s3 / n,
                       'h_mean': s4 / n, 'count': int(n)}
    return stats


