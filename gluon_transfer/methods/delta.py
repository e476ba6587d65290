"""DELTA (Li et al., ICLR 2019), ``--reg delta``, and its feature-map baseline ``--reg fea_map``:
fine-tuning with the target's stage-end feature maps pulled toward the frozen source's
(math in :mod:`gluon_transfer.losses.delta` and :mod:`gluon_transfer.losses.feature_distance`).

Flags: ``--delta-alpha`` / ``--delta-beta`` and ``--fea-map-alpha`` / ``--fea-map-beta``
(DELTA's ``train.py`` spells them ``--alpha`` / ``--beta``: accepted as aliases), ``--taps``
(default: the stage-end convolutions) and, for DELTA, ``--channel-weights``.

Channel weights. DELTA weights each channel by ``softmax(zscore(r) / 5)`` of its
importance ``r`` (:func:`channel_importance`, the reference's ``channel_eval.py``:
classifier-only training, then each filter zeroed). The importances depend on the source
weights and the target data, so ``tools/delta_channel_weights.py`` stores them in a cache
keyed by both (:func:`channel_weights_path`: ``$GLUON_TRANSFER_CACHE/delta/`` or
``~/.cache/gluon_transfer/delta/``, file ``<model>-<key>.json``, ``key`` a hash of the
model and its options, the source file's path, size and modification time (or GluonCV's
pretrained name), the training records' path, size and modification time, the taps, the
input size and the dataset); ``train_transfer.py --reg delta`` reads the same entry when
``--channel-weights`` is not given. Nothing is written into the data folder. ``--channel-weights
FILE`` (ours or the reference's list-of-lists JSON) or ``uniform`` bypass the cache.
"""
import hashlib
import json
import math
import os

import mxnet as mx

from ..registry import METHODS
from .base import Method, build_target, load_source, train_records_file

__all__ = ['DELTAMethod', 'FeatureMapMethod', 'channel_importance', 'channel_weights_path', 'channel_weights_key',
           'save_channel_weights']


# ------------------------------------------------------------------ channel weights
def _cache_root():
    # the package's cache folder (the fused AFF kernel uses the same variable)
    return os.environ.get('GLUON_TRANSFER_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'gluon_transfer')


def channel_weights_key(args, model_kwargs):
    """``(key, what)``: the hex key of the channel-weights cache entry of ``args`` and the
    dict it hashes (module docstring). Errors: the source or training file is missing."""
    from ..data.holdout import source_identity
    from ..errors import ConfigError, DataError
    if args.source_params:
        if not os.path.isfile(args.source_params):
            raise DataError('--source-params file not found: %s' % args.source_params)
        source = source_identity(args.source_params)
    elif args.source_pretrained:
        source = {'gluoncv_pretrained': args.model}
    else:
        raise ConfigError('DELTA channel weights belong to source weights: pass --source-params FILE or '
                          '--source-pretrained')
    kind, path, _ = train_records_file(args)
    if not os.path.exists(path):
        raise DataError('training data not found: %s' % path)
    data = dict(source_identity(path), kind=kind) if os.path.isfile(path) else {'path': os.path.abspath(path),
                                                                              'kind': kind}
    what = {'model': args.model, 'model_kwargs': {k: model_kwargs[k] for k in sorted(model_kwargs)},
            'source': source, 'data': data, 'dataset': getattr(args, 'dataset_name', None) or args.dataset,
            'taps': list(getattr(args, 'taps', None) or []), 'input_size': int(args.input_size)}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha1(text.encode('utf-8', 'surrogateescape')).hexdigest()[:16], what


def channel_weights_path(args, model_kwargs):
    """The cache file of DELTA's channel importances for ``args`` (module docstring)."""
    key, _ = channel_weights_key(args, model_kwargs)
    return os.path.join(_cache_root(), 'delta', '%s-%s.json' % (args.model, key))


def save_channel_weights(path, raw, taps, model, dataset, procedure=None, identity=None):
    """Write raw importances (one list per tap) as ``{"raw_importance": [...], "taps",
    "model", "dataset", "procedure", "identity"}`` atomically."""
    from ..engine.checkpoint import atomic_write_json
    atomic_write_json(path, {'model': model, 'dataset': dataset, 'taps': list(taps),
                             'raw_importance': [[float(v) for v in r] for r in raw],
                             'procedure': procedure or {}, 'identity': identity or {}})
    return path


def channel_importance(args, ctx, model_kwargs, head_epochs=10, num_batches=4, log=None):
    """DELTA's channel-importance procedure (the reference's ``channel_eval.py``)
    on our data layer: build the target from the source weights, train **only the
    classifier** for ``head_epochs`` epochs (SGD lr 0.01, momentum 0.9, weight decay 1e-4,
    the rate multiplied by ``exp(ln 0.1 / 6)`` after every epoch, batch ``args.batch_size``;
    the backbone's BatchNorm runs in training mode as in a PyTorch ``model.train()`` loop,
    so its running statistics adapt), then on the first ``num_batches`` batches of a fresh
    shuffled training epoch (training augmentation), in inference mode, measure for every
    filter of every tapped convolution the increase of the cross-entropy when it is zeroed
    (:func:`gluon_transfer.losses.delta.filter_importance`). Returns
    ``(taps, raw importances, procedure dict)``."""
    import logging
    from ..data import build_data
    from ..engine.tasks import Classify
    from ..engine.trainer import Engine, FitConfig
    from ..losses.delta import filter_importance
    from ..losses.taps import stage_end_taps
    from ..losses.transfer_common import head_keys
    log = log or logging.getLogger('gluon_transfer')
    data = build_data(args.dataset, data_dir=args.data_dir, rec_train=args.rec_train, rec_val=args.rec_val,
                      rec_train_idx=args.rec_train_idx, rec_val_idx=args.rec_val_idx,
                      batch_size=args.batch_size * len(ctx), num_workers=args.num_workers, seed=args.seed,
                      input_size=args.input_size, crop_ratio=args.crop_ratio)
    source = load_source(args.model, ctx, args.source_params, args.source_pretrained, model_kwargs, log)
    net = build_target(args.model, data.num_classes, ctx, source, mx.init.Xavier(), model_kwargs, seed=args.seed)
    del source
    head = set(head_keys(net))
    for key, p in net._collect_params_with_prefix().items():
        if key not in head:
            p.grad_req = 'null'
    gamma = math.exp(math.log(0.1) / 6.0)
    cfg = FitConfig(num_epochs=head_epochs, optimizer='sgd', lr=0.01, momentum=0.9, wd=1e-4, lr_mode='step',
                    lr_decay=gamma, lr_decay_epochs=tuple(range(1, head_epochs)), mode=args.mode,
                    log_interval=args.log_interval, seed=args.seed, val_interval=head_epochs)
    engine = Engine(net, Classify(), ctx, cfg, data.train, data.val, data.num_classes, logger=log)
    engine.fit()
    data.train.set_epoch(head_epochs)
    batches = []
    for batch in data.train:
        batches.append((batch.data, batch.label))
        if len(batches) >= num_batches:
            break
    taps = list(args.taps) if getattr(args, 'taps', None) else stage_end_taps(net)
    raw = filter_importance(net, taps, batches, ctx[0], log)
    procedure = {'head_epochs': head_epochs, 'num_batches': len(batches), 'batch_size': args.batch_size * len(ctx),
                 'lr': 0.01, 'momentum': 0.9, 'wd': 1e-4, 'lr_gamma_per_epoch': gamma,
                 'head_val_top1': engine.history[-1].get('val_top1') if engine.history else None}
    return taps, raw, procedure


# ------------------------------------------------------------------ the methods
class _FeatureMethod(Method):
    """A method comparing the target's tapped feature maps with the frozen source's."""
    accepts = ('taps',)


@METHODS.register('delta')
class DELTAMethod(_FeatureMethod):
    name = 'delta'
    regs = ('delta',)
    title = 'DELTA (--reg delta)'
    aliases = {'alpha': 'delta_alpha', 'beta': 'delta_beta'}
    weights_hint = 'takes --delta-alpha and --delta-beta'

    @classmethod
    def arguments(cls, g):
        g.add_argument('--delta-alpha', type=float, default=None, metavar='ALPHA',
                       help='weight of the attention-weighted feature-map distance (default 0.01, 0.1 for Stanford '
                            'Dogs as in DELTA\'s run.sh; DELTA\'s --alpha)')
        g.add_argument('--delta-beta', type=float, default=None, metavar='BETA',
                       help='weight of 0.5*||classifier||^2 (default 0.01; DELTA\'s --beta)')
        g.add_argument('--channel-weights', default=None, metavar='FILE|uniform',
                       help='importances JSON (ours, or the reference list-of-lists format) or "uniform"; default: '
                            'the cache entry tools/delta_channel_weights.py wrote for this model, source and data')

    def __init__(self, reg=None):
        super().__init__(reg)
        self.channel_weights = None

    def resolve(self, args, run):
        if args.delta_alpha is None and 'dog' in str(args.dataset_name).lower():
            args.delta_alpha = 0.1     # DELTA's run.sh: alpha 0.1 for Stanford Dogs
        self.channel_weights = args.channel_weights

    def prepare(self, args, ctx, run):
        if self.channel_weights is None:
            self.channel_weights = channel_weights_path(args, run.model_kwargs)
        return None

    def regularizer(self, args, batch_size):
        from ..losses.delta import DELTA
        return DELTA(alpha=args.delta_alpha, beta=args.delta_beta, batch_size=batch_size,
                     channel_weights=self.channel_weights)

    def make_task(self, args, net, run, ctx, log):
        src = run.reg.channel_source
        log.info('DELTA channel weights: %s', src if isinstance(src, str) else 'given as arrays')
        return super().make_task(args, net, run, ctx, log)


@METHODS.register('fea_map')
class FeatureMapMethod(_FeatureMethod):
    name = 'fea_map'
    regs = ('fea_map',)
    title = 'feature-map distance (--reg fea_map)'
    aliases = {'alpha': 'fea_map_alpha', 'beta': 'fea_map_beta'}
    weights_hint = 'takes --fea-map-alpha and --fea-map-beta'

    @classmethod
    def arguments(cls, g):
        g.add_argument('--fea-map-alpha', type=float, default=None, metavar='ALPHA',
                       help='weight of sum_l 0.5*||t_l - s_l||^2 (default 0.01; DELTA\'s --alpha)')
        g.add_argument('--fea-map-beta', type=float, default=None, metavar='BETA',
                       help='weight of 0.5*||classifier||^2 (default 0.01; DELTA\'s --beta)')

    def regularizer(self, args, batch_size):
        from ..losses.feature_distance import FeatureMap
        return FeatureMap(alpha=args.fea_map_alpha, beta=args.fea_map_beta, batch_size=batch_size)
