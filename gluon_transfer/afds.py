"""AFDS mask selection: gate statistics on a held-out split of the TRAINING data, the
threshold / MACs-budget choice of the masks ``m`` and ``s``, the two-phase schedule and
the per-run report.

Procedure (transfer-methods.md §3.2; the reproduction's ``update_afs`` fixed):

1. **Held-out training split.** :func:`split_train_holdout` takes a seeded class-balanced
   fraction of the training RecordIO (:func:`~gluon_transfer.data.datasets.class_balanced_subset`)
   as a :class:`TrainHoldout` and writes the rest as the training set; the statistics
   functions accept only a :class:`TrainHoldout` (the reproduction ran them on the test
   loader). :meth:`TrainHoldout.from_arrays` does the same for in-memory data.
2. **Statistics** (:func:`collect_gate_statistics`): with every mask temporarily 1, in
   inference mode, for every gate and channel ``c`` over the held-out samples ``x``::

       pi_c(x) = WTA_d( relu(W GAP(conv input) + b) )_c        (the gate value, before m)
       mean_c  = E_x[pi_c(x)]            var_c = E_x[pi_c(x)^2] - mean_c^2   (population)

   (The reproduction averaged per batch and took the variance over batch means; we use
   samples, which is what "varies across inputs" means for a per-sample gate.) Also
   ``act_c = E_x[mean_hw relu(pi_c(x) y_c(x))]`` (``|.|`` instead of ``relu`` after conv3,
   whose output goes to the residual add): the gated activation the next layer receives,
   the ranking of ``mask_stat='activation'``. Why offer it: the gates start at the
   identity (value 1) and, at fine-tuning learning rates, move little (CIFAR task: gate
   means 1.0000 +- 3e-5 after phase 1), so ``pi`` ranks channels by near-ties; ``act``
   ranks them by what pruning removes.
3. **Selection** (:func:`select_masks`): ``m_c = [mean_c > thres_m]``,
   ``s_c = m_c [var_c > thres_s]`` (absolute thresholds, the reproduction's 0.5 defaults),
   or a **MACs budget**: for a shared quantile ``q`` the ``floor(q C)`` channels with the
   smallest means get ``m = 0`` and the ``floor(q C)`` with the smallest variances get
   ``s = 0`` (per layer with ``scope='layer'``, over all gated channels with
   ``scope='global'``; ties toward the lower index); ``q`` is found by bisection so that
   the expected MACs (:func:`gluon_transfer.macs.afs_macs`) are at most
   ``macs_budget * baseline`` (``0.1`` = a 10x reduction). Every gated conv keeps at least
   ``min_channels`` (1) channel with ``m = 1`` (the largest means). The MACs are not
   exactly monotone in ``q`` (a channel turning static raises ``ceil(d n)``), so the
   bisection returns *a* ``q`` meeting the budget, not always the smallest one; the
   achieved MACs are reported. ``channel_multiple`` rounds the kept counts after conv1
   and conv2 (the widths the pruned export really has) up to a multiple (CLI default 16,
   oneDNN's channel block) inside the search; ``static_only`` sets ``s = 0`` for every
   kept channel (no runtime gates in the export).
4. **Apply** (:func:`apply_masks`): write ``m``, ``s``; a channel turning static gets
   ``gamma_c = mean_c`` (``gamma_from_mean``) so its multiplier starts at its average gate
   value; ``gamma`` keeps training in phase 2.

:func:`afds_schedule` drives phase 1 (fine-tune, gates on, masks 1), the mask update and
phase 2 (fine-tune with the masks fixed) through one :class:`~gluon_transfer.engine.Engine`
(same trainer, momentum and LR schedule, as the reproduction's ``train.py``).
"""
import json
import math
import os

import numpy as np
import mxnet as mx

from .engine.checkpoint import jsonable
from .errors import CheckpointError, ConfigError, DataError

__all__ = ['TrainHoldout', 'split_train_holdout', 'collect_gate_statistics', 'select_masks', 'apply_masks',
           'update_masks', 'current_masks', 'afds_schedule', 'afds_report', 'format_afds_report', 'selection_summary',
           'AFS_DEFAULTS', 'check_afs_model', 'resolve_afds_args', 'holdout_for_args', 'build_afs_target',
           'scale_gate_lr', 'run_afds', 'recorded_gate_options', 'removable']


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
        from .data.base import ArrayIter
        from .data.datasets import class_balanced_subset
        labels = np.asarray(labels)
        pos = class_balanced_subset(labels, np.arange(len(labels)), fraction, seed)
        rest = np.setdiff1d(np.arange(len(labels)), pos)
        it = ArrayIter(images[pos], labels[pos], batch_size, mean=mean, std=std, shuffle=False, last_batch='pad')
        return cls(it, source, pos, fraction, seed), images[rest], labels[rest]


def split_train_holdout(preset, rec_train, fraction=0.1, seed=0, cache_dir=None, batch_size=32, input_size=None,
                        num_workers=2, rec_train_idx=None):
    """Cut a seeded class-balanced ``fraction`` out of the training RecordIO ``rec_train``.

    Writes ``<cache_dir>/<stem>_afds_holdout_f<F>_s<seed>.rec/.idx`` (the held-out records)
    and ``..._afds_train_f<F>_s<seed>.rec/.idx`` (the rest; train on it), with a ``.json``
    naming the source (path, size, mtime); reused when it still matches. Default
    ``cache_dir``: ``subsets/`` beside ``rec_train``. Returns a dict: ``train_rec``,
    ``train_idx`` (the rest), ``holdout`` (a :class:`TrainHoldout` whose iterator uses the
    preset's evaluation transform), ``num_holdout``, ``num_train``."""
    from .data.datasets import class_balanced_subset, get_preset, record_iter_kwargs, write_record_subset
    from .data.recordio import RecordIter, default_idx_path, inspect_recordio
    preset = get_preset(preset)
    info = inspect_recordio(rec_train, rec_train_idx or default_idx_path(rec_train))
    if not 0 < float(fraction) < 1:
        raise ConfigError('holdout fraction must be in (0, 1), got %r' % (fraction,))
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(rec_train)), 'subsets')
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(rec_train))[0]
    tag = 'f%g_s%d' % (float(fraction), int(seed))
    hold_prefix = os.path.join(cache_dir, '%s_afds_holdout_%s' % (stem, tag))
    rest_prefix = os.path.join(cache_dir, '%s_afds_train_%s' % (stem, tag))
    st = os.stat(info.rec)
    ident = {'source': os.path.abspath(info.rec), 'bytes': st.st_size, 'mtime_ns': st.st_mtime_ns,
             'fraction': float(fraction), 'seed': int(seed)}
    manifest = hold_prefix + '.json'
    pos = class_balanced_subset(info.labels, info.keys, fraction, seed)
    rest = np.setdiff1d(np.arange(info.num_records), pos)
    fresh = True
    if os.path.isfile(manifest):
        with open(manifest) as f:
            fresh = json.load(f) != ident
    if fresh or not all(os.path.isfile(p) for p in (hold_prefix + '.rec', rest_prefix + '.rec')):
        write_record_subset(info, pos, hold_prefix)
        write_record_subset(info, rest, rest_prefix)
        with open(manifest, 'w') as f:
            json.dump(ident, f)
    hold_info = inspect_recordio(hold_prefix + '.rec', hold_prefix + '.idx')
    if hold_info.num_records != len(pos):
        raise DataError('%s holds %d records, expected %d' % (hold_prefix + '.rec', hold_info.num_records, len(pos)))
    shape, aug = record_iter_kwargs(preset, False, input_size)
    batch_size = max(1, min(int(batch_size), len(pos)))       # a small holdout still fills one batch
    it = RecordIter(hold_info.rec, hold_info.idx, batch_size, shape, aug=aug, train=False, info=hold_info,
                    mean=preset.mean, std=preset.std, seed=seed, preprocess_threads=num_workers)
    return dict(train_rec=rest_prefix + '.rec', train_idx=rest_prefix + '.idx',
                holdout=TrainHoldout(it, os.path.abspath(rec_train), pos, fraction, seed),
                num_holdout=int(len(pos)), num_train=int(len(rest)))


# ---------------------------------------------------------------------- statistics
def _require_holdout(holdout):
    if not isinstance(holdout, TrainHoldout):
        raise ConfigError('AFS mask statistics must come from a held-out split of the training data '
                          '(a gluon_transfer.afds.TrainHoldout, see split_train_holdout); got %s -- never the '
                          'validation or test set' % type(holdout).__name__)


def _gated(net):
    from .models.afs_resnet import afs_gates
    return [(name, gate) for name, _, _, gate, _, _ in afs_gates(net) if gate is not None]


def current_masks(net):
    """``{gate name: (m, s)}`` numpy float arrays of the network's masks."""
    return {name: (g.mask_m.data().asnumpy().copy(), g.mask_s.data().asnumpy().copy()) for name, g in _gated(net)}


def collect_gate_statistics(net, holdout, ctx=None, max_batches=None):
    """Per gate ``{'mean': (C,), 'var': (C,), 'act': (C,), 'count': n}`` (float64): mean and
    variance of the gate values ``pi`` and the mean activation ``act`` over the held-out
    training samples (module docstring, step 2). The network runs
    imperatively in inference mode with every mask 1; its masks and hybridization are
    restored afterwards. ``Batch.pad`` rows are ignored. A non-finite gate value is a
    DataError (a diverged network), never skipped."""
    _require_holdout(holdout)
    gates = _gated(net)
    if not gates:
        raise ConfigError('%s has no AFS gates to collect statistics for' % type(net).__name__)
    ctx = ctx or gates[0][1].mask_m.list_ctx()[0]
    saved = current_masks(net)
    active, flags = net._active, dict(net._flags)
    acc = {name: [0.0, 0.0, 0, 0.0] for name, _ in gates}
    relu_after = {name: (not name.endswith('gate3')) or bool(getattr(net, 'relu_before_add', False))
                  for name, _ in gates}
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
                pi, pos, mag = (a.asnumpy().astype(np.float64)[:keep] for a in g.collecting[0])
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
    finally:
        for name, g in gates:
            g.collecting = None
            g.mask_m.set_data(mx.nd.array(saved[name][0]))
            g.mask_s.set_data(mx.nd.array(saved[name][1]))
        net.hybridize(active=False)
        if active:
            net.hybridize(True, **flags)
    stats = {}
    for name, (s1, s2, n, s3) in acc.items():
        if n == 0:
            raise DataError('the held-out training split yielded no samples')
        mean = s1 / n
        stats[name] = {'mean': mean, 'var': np.maximum(s2 / n - mean * mean, 0.0), 'act': s3 / n, 'count': int(n)}
    return stats


# ---------------------------------------------------------------------- selection
MASK_STATS = {'gate': 'mean', 'activation': 'act'}


def _lowest(values, count):
    """0/1 vector: 0 at the ``count`` smallest ``values`` (ties toward the lower index)."""
    out = np.ones(len(values))
    if count > 0:
        out[np.argsort(values, kind='stable')[:count]] = 0
    return out


def _ensure_alive(m, mean, min_channels):
    need = min(int(min_channels), len(m)) - int(m.sum())
    if need > 0:
        for c in np.argsort(-mean, kind='stable'):
            if m[c] == 0:
                m[c] = 1
                need -= 1
                if need == 0:
                    break
    return m


def removable(name):
    """True for the gates whose pruned channels :mod:`gluon_transfer.prune` physically removes:
    those after conv1 and conv2 of a bottleneck (``...gate1``, ``...gate2``). conv3's outputs
    feed the residual add and keep their full width (pruned ones become zero rows)."""
    return name.endswith(('gate1', 'gate2'))


def _aligned(m, mean, name, min_channels, channel_multiple):
    """``m`` with at least ``min_channels`` kept and, for a :func:`removable` gate, the kept
    count rounded up to a multiple of ``channel_multiple`` (capped at the width): channels
    are added back in order of decreasing ``mean`` (the ranking statistic, see ``mask_stat``)."""
    keep = max(int(m.sum()), min(int(min_channels), len(m)))
    q = int(channel_multiple)
    if q > 1 and removable(name):
        keep = min(len(m), -(-keep // q) * q)
    return _ensure_alive(m, mean, keep)


def _masks_for_quantile(stats, q, scope, min_channels, channel_multiple=1, m_key='mean'):
    names = list(stats)
    masks = {}
    if scope == 'layer':
        for name in names:
            mean, var = stats[name][m_key], stats[name]['var']
            c = len(mean)
            k = int(math.floor(q * c + 1e-9))
            m = _aligned(_lowest(mean, k), mean, name, min_channels, channel_multiple)
            masks[name] = (m, m * _lowest(var, k))
    else:
        means = np.concatenate([stats[n][m_key] for n in names])
        vars_ = np.concatenate([stats[n]['var'] for n in names])
        k = int(math.floor(q * len(means) + 1e-9))
        m_all, s_all = _lowest(means, k), _lowest(vars_, k)
        start = 0
        for name in names:
            c = len(stats[name]['mean'])
            m = _aligned(m_all[start:start + c].copy(), stats[name][m_key], name, min_channels, channel_multiple)
            masks[name] = (m, m * s_all[start:start + c])
            start += c
    return masks


def select_masks(stats, thres_m=None, thres_s=None, macs_budget=None, net=None, input_shape=(1, 3, 224, 224),
                 scope='layer', budget_on='expected', min_channels=1, iterations=40, channel_multiple=1,
                 mask_stat='gate', static_only=False):
    """Choose ``{gate name: (m, s)}`` from :func:`collect_gate_statistics` output.

    Either absolute thresholds (``thres_m``, ``thres_s``; the reproduction's defaults are
    0.5 / 0.5) or ``macs_budget`` (a fraction of the baseline MACs; needs ``net`` and
    ``input_shape``; ``budget_on``: 'expected' or 'static' MACs).

    ``channel_multiple`` (``q``): the number of channels kept after conv1 and conv2 of
    every bottleneck (the widths the pruned export really has, see :func:`removable`) is
    rounded up to a multiple of ``q`` (or the full width) by keeping the pruned channels
    with the largest mean gate values; under a budget the rounding is part of the search,
    so the budget still holds. Why: oneDNN's CPU convolutions work on blocks of 16 (AVX-512)
    or 8 channels; the CIFAR AFDS run's uneven widths (39 of 64, 155 of 256) made its
    static-only pruned network 1.15x faster at 1.83x fewer MACs, multiples of 16 1.42x at
    1.71x (ResNet-50, 224 px, batch 8; docs/transfer_results.md). ``1`` turns it off.

    ``mask_stat``: what ranks the channels for ``m`` (and what ``thres_m`` compares with):
    ``'gate'`` the mean gate value ``pi`` (the paper's and reproduction's saliency),
    ``'activation'`` the mean gated activation ``act`` the next layer receives (after the
    ReLU for conv1/conv2, its magnitude for conv3) -- a magnitude criterion that still ranks
    channels when the gates have hardly moved from their identity start (module docstring).
    ``s`` always follows the gate variance, unless ``static_only``: every kept channel static
    (``s = 0``, its multiplier the learned constant ``gamma``), so no runtime gate survives
    the pruned export -- a plain, narrower GluonCV ResNet, the form that runs faster on
    hardware that cannot skip channels per sample (CPUs: the WTA-skipped channels of a
    dynamic gate are still computed, and the gate itself costs time). ``thres_s`` is then
    meaningless and refused; expected MACs equal static MACs.

    Returns a dict with
    ``masks``, ``quantile`` (budget search), ``thres_m``/``thres_s`` (the thresholds used;
    for a budget the largest pruned mean / variance, reported), and ``macs`` (the
    :func:`~gluon_transfer.macs.afs_macs` result when ``net`` is given)."""
    from .macs import afs_macs, plain_macs
    if scope not in ('layer', 'global'):
        raise ConfigError("mask scope must be 'layer' or 'global', got %r" % (scope,))
    if budget_on not in ('expected', 'static'):
        raise ConfigError("budget_on must be 'expected' or 'static', got %r" % (budget_on,))
    if not stats:
        raise ConfigError('no gate statistics')
    if mask_stat not in MASK_STATS:
        raise ConfigError('mask_stat must be one of %s, got %r' % (', '.join(MASK_STATS), mask_stat))
    m_key = MASK_STATS[mask_stat]
    if static_only and thres_s is not None:
        raise ConfigError('static_only makes every kept channel static; thres_s does not apply')

    def finish(masks):
        return {n: (m, np.zeros_like(m)) for n, (m, _) in masks.items()} if static_only else masks
    if any(m_key not in st for st in stats.values()):
        raise ConfigError("mask_stat %r needs statistics with %r (collect_gate_statistics)" % (mask_stat, m_key))
    if int(channel_multiple) != channel_multiple or channel_multiple < 1:
        raise ConfigError('channel_multiple must be an integer >= 1, got %r' % (channel_multiple,))
    result = dict(quantile=None, thres_m=thres_m, thres_s=thres_s, macs=None, macs_budget=macs_budget,
                  channel_multiple=int(channel_multiple), mask_stat=mask_stat, static_only=bool(static_only))
    base = plain_macs(net, input_shape) if net is not None else None
    if macs_budget is None:
        tm = 0.5 if thres_m is None else float(thres_m)
        ts = 0.5 if thres_s is None else float(thres_s)
        masks = {}
        for name, st in stats.items():
            m = _aligned((st[m_key] > tm).astype(np.float64), st[m_key], name, min_channels, channel_multiple)
            masks[name] = (m, m * (st['var'] > ts).astype(np.float64))
        result.update(masks=finish(masks), thres_m=tm, thres_s=None if static_only else ts)
    else:
        budget = float(macs_budget)
        if not 0 < budget <= 1:
            raise ConfigError('macs_budget must be in (0, 1] (a fraction of the baseline MACs), got %r' % macs_budget)
        if net is None:
            raise ConfigError('a MACs budget needs the network (net=...) to count MACs')
        if thres_m is not None or thres_s is not None:
            raise ConfigError('pass either thresholds (thres_m/thres_s) or macs_budget, not both')

        def cost(q):
            masks = finish(_masks_for_quantile(stats, q, scope, min_channels, channel_multiple, m_key))
            return afs_macs(net, input_shape, masks=masks, base=base)[budget_on], masks

        target = budget * base['total']
        c_hi, masks_hi = cost(1.0)
        if c_hi > target:
            raise ConfigError('MACs budget %g unreachable: pruning every gated channel but %d per layer still costs '
                              '%.4g of the baseline' % (budget, min_channels, c_hi / base['total']))
        c_lo, masks_lo = cost(0.0)
        lo, hi, best = 0.0, 1.0, masks_hi
        if c_lo <= target:
            hi, best = 0.0, masks_lo
        else:
            for _ in range(int(iterations)):
                mid = 0.5 * (lo + hi)
                c, masks = cost(mid)
                if c <= target:
                    hi, best = mid, masks
                else:
                    lo = mid
        pruned_means = [st[m_key][best[n][0] == 0] for n, st in stats.items()]
        static_vars = [st['var'][(best[n][0] == 1) & (best[n][1] == 0)] for n, st in stats.items()]
        pm = np.concatenate(pruned_means)
        sv = np.concatenate(static_vars)
        result.update(masks=best, quantile=hi, thres_m=float(pm.max()) if pm.size else None,
                      thres_s=float(sv.max()) if sv.size and not static_only else None)
    if net is not None:
        result['macs'] = afs_macs(net, input_shape, masks=result['masks'], base=base)
    return result


def apply_masks(net, masks, stats=None, gamma_from_mean=True):
    """Write ``masks`` (``{gate name: (m, s)}``) into the network's gates. With
    ``gamma_from_mean`` and ``stats``, every channel that becomes static (``m = 1, s = 0``)
    gets ``gamma_c = mean_c`` (its average gate value)."""
    gates = dict(_gated(net))
    unknown = [n for n in masks if n not in gates]
    if unknown:
        raise ConfigError('masks name unknown gates: %s' % ', '.join(unknown[:5]))
    for name, (m, s) in masks.items():
        g = gates[name]
        m = np.asarray(m, np.float32)
        s = np.asarray(s, np.float32) * m
        if m.shape != (g.channels,) or s.shape != (g.channels,):
            raise ConfigError('masks of %s must have %d entries' % (name, g.channels))
        g.mask_m.set_data(mx.nd.array(m))
        g.mask_s.set_data(mx.nd.array(s))
        if gamma_from_mean and stats is not None:
            gamma = g.gamma.data().asnumpy()
            newly = (m == 1) & (s == 0)
            gamma[newly] = stats[name]['mean'][newly]
            g.gamma.set_data(mx.nd.array(gamma))
    return net


def update_masks(net, holdout, thres_m=None, thres_s=None, macs_budget=None, input_shape=(1, 3, 224, 224),
                 scope='layer', budget_on='expected', gamma_from_mean=True, min_channels=1, ctx=None,
                 max_batches=None, log=None, channel_multiple=1, mask_stat='gate', static_only=False):
    """Statistics on ``holdout`` (a :class:`TrainHoldout`) -> :func:`select_masks` ->
    :func:`apply_masks`. Returns the selection dict (with ``stats``)."""
    stats = collect_gate_statistics(net, holdout, ctx=ctx, max_batches=max_batches)
    sel = select_masks(stats, thres_m, thres_s, macs_budget, net, input_shape, scope, budget_on, min_channels,
                       channel_multiple=channel_multiple, mask_stat=mask_stat, static_only=static_only)
    apply_masks(net, sel['masks'], stats, gamma_from_mean)
    sel['stats'] = stats
    if log:
        mc = sel['macs']
        log('AFS masks from %r: thres_m=%s thres_s=%s%s; MACs baseline %.4gG, static %.4gG (%.2fx), expected '
            '%.4gG (%.2fx)' % (holdout, sel['thres_m'], sel['thres_s'],
                               '' if sel['quantile'] is None else ' (quantile %.4f)' % sel['quantile'],
                               mc['baseline'] / 1e9, mc['static'] / 1e9, 1 / mc['static_ratio'],
                               mc['expected'] / 1e9, 1 / mc['expected_ratio']))
    return sel


# ---------------------------------------------------------------------- schedule
def afds_schedule(engine, holdout, phase1_epochs=None, phase1_density=None, resume=None, input_shape=None,
                  log=None, **mask_options):
    """Phase 1 -> mask update -> phase 2 through one Engine (the reproduction's schedule).

    ``engine``: an :class:`~gluon_transfer.engine.Engine` over an AFS network whose
    ``cfg.num_epochs`` covers both phases (its LR schedule spans both, the trainer and its
    momentum carry over, as the reproduction's single optimizer/scheduler).
    ``phase1_epochs``: default ``num_epochs // 2`` (the reproduction trains the same
    number of epochs before and after). ``phase1_density``: WTA ``d`` during phase 1
    (default: the network's; e.g. 1.0 to fine-tune without WTA first); phase 2 uses the
    network's ``density``. ``holdout``: a :class:`TrainHoldout`. ``mask_options``: passed
    to :func:`update_masks` (``thres_m``, ``thres_s``, ``macs_budget``, ``scope``, ...).
    ``resume``: a checkpoint; a run resumed after the mask update (epoch > phase1)
    keeps the masks stored in the checkpoint.

    Returns ``{'phase1': history, 'selection': dict or None, 'phase2': history}``.
    """
    from .models.afs_resnet import set_density
    _require_holdout(holdout)
    net = engine.net
    say = log or (lambda msg: engine.log.info('%s', msg))
    total = engine.cfg.num_epochs
    e1 = total // 2 if phase1_epochs is None else int(phase1_epochs)
    if not 0 < e1 < total:
        raise ConfigError('phase1_epochs must be in [1, num_epochs - 1] = [1, %d], got %d' % (total - 1, e1))
    # The checkpoints record the phase (and, in phase 2, the selection); the masks themselves
    # are parameters of the network, so every checkpoint carries them.
    state = engine.run_info.setdefault('afds', {})
    state.update(phase=1, phase1_epochs=e1)
    if resume:
        prev = _checked_resume_state(resume, e1)
        if prev.get('phase') == 2:
            state.update(phase=2, selection=prev.get('selection'))
    final_density = getattr(net, 'density', None)
    if phase1_density is not None:
        set_density(net, phase1_density)
    saved_max = engine.cfg.max_iters
    engine.cfg.max_iters = e1 * engine.iters_per_epoch
    try:
        phase1 = list(engine.fit(resume=resume))
    finally:
        engine.cfg.max_iters = saved_max
    if phase1_density is not None:
        set_density(net, final_density)
    selection = None
    if engine.start_epoch <= e1:
        shape = input_shape or (1,) + tuple(next(iter(holdout)).data.shape[1:])
        selection = update_masks(net, holdout, input_shape=shape, log=say, **mask_options)
        state.update(phase=2, selection=selection_summary(selection, holdout, mask_options))
    else:
        say('resumed after the mask update (epoch %d > %d): masks come from the checkpoint' % (engine.start_epoch, e1))
    engine.start_epoch = max(engine.start_epoch, e1)
    phase2 = list(engine.fit())[len(phase1):]
    return {'phase1': phase1, 'selection': selection, 'phase2': phase2}


def _checked_resume_state(resume, phase1_epochs):
    """The ``afds`` record of the checkpoint ``resume`` points to, checked against this run."""
    from .engine.checkpoint import resolve_resume
    meta, _ = resolve_resume(resume)
    prev = meta.get('afds')
    if not isinstance(prev, dict):
        raise CheckpointError('cannot resume an AFDS run from %s: that checkpoint was not written by an --afs run'
                              % resume)
    if int(prev.get('phase1_epochs', -1)) != int(phase1_epochs):
        raise CheckpointError('cannot resume from %s: it was trained with %s phase-1 epochs, this run has %d '
                              '(--afs-phase1-epochs, --max-iter and --num-epochs must match)'
                              % (resume, prev.get('phase1_epochs'), phase1_epochs))
    epoch = int(meta.get('epoch', 0))
    if (epoch > phase1_epochs) != (prev.get('phase') == 2):
        raise CheckpointError('cannot resume from %s: epoch %d is recorded as phase %s (phase 1 = epochs 1-%d)'
                              % (resume, epoch, prev.get('phase'), phase1_epochs))
    return prev


def selection_summary(selection, holdout=None, mask_options=None):
    """A JSON-able summary of a :func:`select_masks` result (no masks, no per-layer rows)."""
    out = {k: selection.get(k) for k in ('thres_m', 'thres_s', 'quantile', 'macs_budget', 'channel_multiple',
                                         'mask_stat', 'static_only')}
    for k, v in (mask_options or {}).items():
        if k not in out and isinstance(v, (str, int, float, type(None))):
            out[k] = v
    stats = selection.get('stats')
    if stats:
        # how far the gates moved from their identity start (value 1, variance 0)
        means = np.concatenate([st['mean'] for st in stats.values()])
        var = np.concatenate([st['var'] for st in stats.values()])
        out['gate_mean_quantiles'] = np.quantile(means, [0, 0.05, 0.5, 0.95, 1]).tolist()
        out['gate_var_quantiles'] = np.quantile(var, [0, 0.05, 0.5, 0.95, 1]).tolist()
    mc = selection.get('macs')
    if mc:
        out['macs'] = {k: float(mc[k]) for k in ('baseline', 'static', 'expected')}
    if holdout is not None:
        out['holdout'] = {'source': holdout.source, 'num_samples': holdout.num_samples,
                          'fraction': holdout.fraction, 'seed': holdout.seed}
    return jsonable(out)



# ---------------------------------------------------------------------- report
def afds_report(net, input_shape=(1, 3, 224, 224), evaluation=None, pruned=None):
    """Per-run numbers: ``baseline``, ``static`` (m), ``expected`` (d and s) MACs and their
    reductions, channel counts, and (from ``evaluation``, the engine's ``evaluate`` dict)
    ``top1`` and ``mean_class_acc``; with ``pruned`` (the :func:`gluon_transfer.prune.prune_afs`
    network), ``exported``: its counted MACs."""
    from .macs import afs_macs, count_macs
    mc = afs_macs(net, input_shape)
    layers = mc['layers']
    rep = dict(baseline=mc['baseline'], static=mc['static'], expected=mc['expected'],
               static_reduction=mc['baseline'] / float(mc['static']),
               expected_reduction=mc['baseline'] / float(mc['expected']),
               channels=int(sum(l['channels'] for l in layers)), alive=int(sum(l['alive'] for l in layers)),
               dynamic=int(sum(l['dynamic'] for l in layers)),
               static_channels=int(sum(l['static_channels'] for l in layers)),
               input_shape=tuple(input_shape), top1=None, mean_class_acc=None, exported=None)
    if evaluation is not None:
        rep['top1'] = float(evaluation['top1'])
        rep['mean_class_acc'] = float(evaluation.get('mean_class_acc', float('nan')))
    if pruned is not None:
        rep['exported'] = count_macs(pruned, input_shape)['total']
    return rep


def format_afds_report(rep):
    """A small text table of :func:`afds_report`."""
    def g(v):
        return '%.4f G' % (v / 1e9)
    rows = [('baseline MACs', g(rep['baseline']), '1.00x'),
            ('static pruning (m)', g(rep['static']), '%.2fx' % rep['static_reduction']),
            ('expected, WTA d + static s folded', g(rep['expected']), '%.2fx' % rep['expected_reduction'])]
    if rep.get('exported') is not None:
        rows.append(('exported pruned network', g(rep['exported']), '%.2fx' % (rep['baseline'] / rep['exported'])))
    rows.append(('gated channels alive / dynamic / static', '%d / %d / %d' % (rep['alive'], rep['dynamic'],
                                                                             rep['static_channels']),
                 'of %d' % rep['channels']))
    if rep.get('top1') is not None:
        rows.append(('top-1 / mean per-class accuracy', '%.4f / %.4f' % (rep['top1'], rep['mean_class_acc']), ''))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = ['%-*s  %*s  %s' % (w0, 'AFDS (input %s)' % 'x'.join(map(str, rep['input_shape'][1:])), w1, '', '')]
    lines += ['%-*s  %*s  %s' % (w0, a, w1, b, c) for a, b, c in rows]
    return '\n'.join(lines)


# ---------------------------------------------------------------------- train_transfer.py
# ``--afs`` options that have a default only with --afs (None otherwise, so a stray one is an error).
AFS_DEFAULTS = dict(afs_density=0.9, afs_phase1_density=1.0, afs_gate_lr_mult=0.1, mask_scope='layer',
                    holdout_fraction=0.1, afs_gate_norm='l2', afs_channel_multiple=16, mask_stat='gate',
                    afs_static_only=False)
AFS_ONLY = ('afs_density', 'afs_phase1_epochs', 'afs_phase1_density', 'afs_gate_lr_mult', 'thres_m', 'thres_s',
            'macs_budget', 'mask_scope', 'holdout_fraction', 'afs_gate_norm', 'afs_channel_multiple', 'mask_stat',
            'afs_static_only')
_FLAGS = {'afs_density': '--density'}


def _flag(dest):
    return _FLAGS.get(dest, '--' + dest.replace('_', '-'))


def check_afs_model(model, model_kwargs=None):
    """ConfigError naming ``model`` unless it is a GluonCV ResNet-v1b made of
    ``BottleneckV1b`` blocks (what :func:`~gluon_transfer.models.afs_resnet.afs_from_gluoncv`
    converts). Builds the network without initialising it (cheap)."""
    from .models.afs_resnet import _check_v1b
    from .zoo import get_model
    try:
        _check_v1b(get_model(model, classes=1, **dict(model_kwargs or {})))
    except ConfigError as err:
        raise ConfigError('--afs needs a GluonCV ResNet-v1b with bottleneck blocks (resnet50_v1b, resnet101_v1b, '
                          '...); %s does not fit: %s' % (model, err)) from None


def resolve_afds_args(args):
    """Validate the AFDS options of ``train_transfer.py`` and fill the ``--afs`` defaults
    (:data:`AFS_DEFAULTS`) in place; idempotent. Errors are one line naming the flag."""
    from .nn.gates import check_density
    if args.reg != 'afd':
        given = [_flag(k) for k in ('afd_norm', 'afd_predictor') if getattr(args, k, None) is not None]
        if given:
            raise ConfigError('%s: option of --reg afd, not --reg %s' % (', '.join(given), args.reg))
    if not getattr(args, 'afs', False):
        given = [_flag(k) for k in AFS_ONLY if getattr(args, k, None) is not None]
        if given:
            raise ConfigError('%s: only used with --afs (the AFDS schedule)' % ', '.join(given))
        return args
    if getattr(args, 'init_from', None) or getattr(args, 'afa_two_stage', False):
        raise ConfigError('--afs is not an AFA option: drop --init-from / --afa-two-stage')
    if args.resume_params or args.resume_states or args.resume_epoch:
        raise ConfigError('--afs resumes with --resume SAVE_DIR (the checkpoint records the phase), not '
                          '--resume-params/--resume-states/--resume-epoch')
    from .finetune import _regularizer_class
    if getattr(_regularizer_class(args.reg), 'uses_w0', False):
        raise ConfigError('--afs with --reg %s: the AFS gates have no source weights for its anchor; use --reg afd, '
                          'fea_map, delta or l2' % args.reg)
    from .cli import model_kwargs
    check_afs_model(args.model, model_kwargs(args))
    for key, value in AFS_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ('afs_density', 'afs_phase1_density'):
        try:
            check_density(getattr(args, key))
        except ConfigError:
            raise ConfigError('%s must be in (0, 1], got %r' % (_flag(key), getattr(args, key))) from None
    if args.macs_budget is not None:
        if not 0 < args.macs_budget <= 1:
            raise ConfigError('--macs-budget must be in (0, 1] (a fraction of the baseline MACs), got %r'
                              % args.macs_budget)
        if args.thres_m is not None or args.thres_s is not None:
            raise ConfigError('give either --macs-budget or --thres-m/--thres-s, not both')
    if not 0 < args.holdout_fraction < 1:
        raise ConfigError('--holdout-fraction must be in (0, 1), got %r' % args.holdout_fraction)
    if args.afs_gate_lr_mult < 0:
        raise ConfigError('--afs-gate-lr-mult must be >= 0, got %r' % args.afs_gate_lr_mult)
    if args.afs_static_only and args.thres_s is not None:
        raise ConfigError('--afs-static-only makes every kept channel static; --thres-s does not apply')
    if args.afs_channel_multiple < 1:
        raise ConfigError('--afs-channel-multiple must be >= 1 (1 = no rounding), got %r' % args.afs_channel_multiple)
    if args.afs_phase1_epochs is not None and args.afs_phase1_epochs < 1:
        raise ConfigError('--afs-phase1-epochs must be >= 1, got %r' % args.afs_phase1_epochs)
    return args


def holdout_for_args(args):
    """``--afs``: hold out ``--holdout-fraction`` of the training records
    (:func:`split_train_holdout`, files under ``SAVE_DIR/holdout``, reused on resume) and
    point ``args`` at the rest for training (``rec_train``) and at the original val split
    (``rec_val``). Returns the :class:`TrainHoldout`."""
    from .afa import _train_rec
    from .data.datasets import get_preset, resolve_data_dir
    from .finetune import _preset_for
    resolve_afds_args(args)
    rec, idx = _train_rec(args, '--afs')
    if not args.rec_val:
        preset = get_preset(_preset_for(args.dataset))
        _, _, val = resolve_data_dir(preset, args.data_dir or preset.default_dir)
        args.rec_val = val
    split = split_train_holdout(_preset_for(args.dataset), rec, args.holdout_fraction, seed=args.seed,
                                cache_dir=os.path.join(args.save_dir, 'holdout'), batch_size=args.batch_size,
                                input_size=args.input_size, num_workers=args.num_workers, rec_train_idx=idx)
    args.rec_train, args.rec_train_idx = split['train_rec'], split['train_idx']
    return split['holdout']


def build_afs_target(args, plain, ctx):
    """The AFS network for ``--afs``: ``plain`` (the GluonCV target already holding the
    source weights and the new classifier) converted with gates (identity initialised:
    the pretrained function at ``d = 1``), WTA density ``--density``; the gates' learning
    rate is multiplied by ``--afs-gate-lr-mult`` (on top of their layer group's)."""
    from .finetune import _finish_shapes
    from .models.afs_resnet import afs_from_gluoncv
    _finish_shapes(plain, ctx, min(int(args.input_size), 64))
    return afs_from_gluoncv(plain, density=args.afs_density, gate_input_norm=args.afs_gate_norm)


def scale_gate_lr(net, mult):
    """Multiply the learning rate of every gate parameter (fc, gamma) by ``mult``."""
    from .models.afs_resnet import afs_gates
    for _, _, _, gate, _, _ in afs_gates(net):
        if gate is not None:
            for p in (gate.fc.weight, gate.fc.bias, gate.gamma):
                p.lr_mult = p.lr_mult * float(mult)
    return net


def run_afds(engine, args, holdout, log):
    """The ``fit`` hook of ``train_transfer.py --afs``: :func:`afds_schedule` (phase 1 at
    ``--afs-phase1-density``, masks from the holdout, phase 2), then the report: the logged
    table and ``SAVE_DIR/afds_report.json`` / ``afds_masks.json``."""
    shape = (1, 3, int(args.input_size), int(args.input_size))
    options = dict(thres_m=args.thres_m, thres_s=args.thres_s, macs_budget=args.macs_budget, scope=args.mask_scope,
                   channel_multiple=args.afs_channel_multiple, mask_stat=args.mask_stat,
                   static_only=args.afs_static_only)
    # what rebuilding the network from a checkpoint needs besides its weights (bench_afds.py --exported)
    engine.run_info.setdefault('afds', {})['gate_input_norm'] = args.afs_gate_norm
    result = afds_schedule(engine, holdout, phase1_epochs=args.afs_phase1_epochs,
                           phase1_density=args.afs_phase1_density, resume=args.resume, input_shape=shape,
                           log=lambda msg: log.info('%s', msg), **options)
    evaluation = None
    if engine.history and 'val_top1' in engine.history[-1]:
        last = engine.history[-1]
        evaluation = {'top1': last['val_top1'], 'mean_class_acc': last.get('val_mean_class_acc', float('nan'))}
    rep = afds_report(engine.net, shape, evaluation)
    rep['selection'] = engine.run_info.get('afds', {}).get('selection')
    rep['phase1_epochs'] = engine.run_info.get('afds', {}).get('phase1_epochs')
    rep['density'] = args.afs_density
    rep['gate_input_norm'] = args.afs_gate_norm
    log.info('AFDS report\n%s', format_afds_report(rep))
    if engine.is_writer:
        from .engine.checkpoint import atomic_write_json
        atomic_write_json(os.path.join(args.save_dir, 'afds_report.json'), jsonable(rep))
        masks = {name: {'m': m.astype(int).tolist(), 's': s.astype(int).tolist()}
                 for name, (m, s) in current_masks(engine.net).items()}
        atomic_write_json(os.path.join(args.save_dir, 'afds_masks.json'),
                          {'selection': rep['selection'], 'masks': masks})
    result['report'] = rep
    return result


def recorded_gate_options(params_path):
    """The AFS model options a ``train_transfer.py --afs`` run recorded for the weights file
    ``params_path`` (today ``gate_input_norm``), so that a tool rebuilding the network from
    that file alone (``tools/export.py --model afs_...``) builds the same function.

    Looks, in order, at the checkpoint record beside the file (``<stem>.json``, key ``afds``),
    the run's ``afds_report.json`` in the same folder (e.g. for ``best.params``). Returns
    ``({}, None)`` when neither exists, else ``(options, path_read)``."""
    folder = os.path.dirname(os.path.abspath(params_path))
    stem = params_path[:-len('.params')] if params_path.endswith('.params') else params_path
    for path, pick in ((stem + '.json', lambda d: d.get('afds')),
                       (os.path.join(folder, 'afds_report.json'), lambda d: d)):
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                record = pick(json.load(f)) or {}
        except (OSError, ValueError) as err:
            raise CheckpointError('%s: not a readable JSON record (%s)' % (path, err)) from None
        if record.get('gate_input_norm') is not None:
            return {'gate_input_norm': record['gate_input_norm']}, path
    return {}, None
