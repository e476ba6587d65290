"""AFA in two stages (Xie et al., Neural Networks 2021; transfer-methods.md §4.2-4.3):
reference presets, feature taps, the stage-2 source, and a two-stage driver on the Engine.

* **Stage 1** (``--reg afa-ast``): source = the ImageNet network (frozen, inference mode);
  target = the same weights with a new classifier; the target and the spatial attention
  modules train jointly on ``CE + alpha * sum_l L_AST + beta * 0.5 ||fc||^2``.
* **Stage 2** (``--reg afa-act --init-from STAGE1.params``): the best stage-1 network
  (chosen on a held-out split of the training data) initialises the target -- all weights,
  classifier included -- AND becomes the frozen source, without its classifier
  (:func:`stage2_source`). New channel-attention modules; the stage-1 ones are dropped.

Reference settings (:data:`PRESETS`; the shipped hocon files): batch 64, 4500 iterations,
SGD momentum 0.9, weight decay 0, one x0.1 step at 0.67 of training, beta 0.01, 224 px;
ResNet-101 lr 0.01 / 0.001 and alpha 0.1 / 0.15 (stage 1 / stage 2), MobileNetV2 lr 0.01 /
0.001 and alpha 0.09 / 0.04. The reference steps its schedule per epoch
(``int(0.67 * num_epochs)`` with ``num_epochs = round(max_iter * batch / N_train)``); here
the step is per iteration at ``round(0.67 * iterations)``.

Taps (:func:`default_taps`): ResNet-v1b -- the last convolution of the last block of each
``layerK`` stage (raw output, before BN and the residual add: ``layer1.2.conv3``,
``layer2.3.conv3``, ``layer3.22.conv3``, ``layer4.2.conv3`` for ``resnet101_v1b``);
MobileNetV2 -- :func:`gluon_transfer.nn.taps_mobilenet.mobilenetv2_taps`. Shapes are
checked at start-up (channels and strides) with a one-line error.
"""
import logging
import math
import os

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from .engine.tasks import Task, cross_entropy, logits_of
from .errors import CheckpointError, ConfigError
from .losses.transfer_common import HEAD_NAMES, head_keys, stage_end_taps
from .nn.taps_mobilenet import (conv_paths, is_mobilenetv2, mobilenetv2_taps, check_tap_shapes,
                                MOBILENETV2_TAP_CHANNELS, MOBILENETV2_TAP_STRIDES)

__all__ = ['PRESETS', 'COMMON', 'preset_for', 'default_taps', 'resnet_stage_end_taps', 'check_taps',
           'tap_net', 'AFATransfer', 'build_target', 'stage2_source', 'holdout_split', 'stage_fit_config',
           'run_two_stage', 'HEAD_NAMES']


# Settings every shipped hocon shares (transfer-methods.md §4.3).
COMMON = {'batch_size': 64, 'max_iter': 4500, 'momentum': 0.9, 'wd': 0.0, 'lr_decay': 0.1,
          'decay_at': 0.67, 'beta': 0.01, 'input_size': 224}
PRESETS = {
    'resnet101': {'ast': dict(COMMON, lr=0.01, alpha=0.1, seed=1),
                  'act': dict(COMMON, lr=0.001, alpha=0.15, seed=2)},
    'mobilenetv2': {'ast': dict(COMMON, lr=0.01, alpha=0.09, seed=1),
                    'act': dict(COMMON, lr=0.001, alpha=0.04, seed=5)},
}


def preset_for(model):
    """The reference settings for ``model``: ``{'ast': {...}, 'act': {...}}``. MobileNetV2
    names get the MobileNetV2 hocons, every other network the ResNet-101 ones (the only
    other configuration shipped)."""
    name = str(model).lower().replace('_', '').replace('-', '')
    return PRESETS['mobilenetv2' if 'mobilenetv2' in name else 'resnet101']


def resnet_stage_end_taps(net):
    """The last direct ``Conv2D`` child of the last block of every ``layer<K>`` stage
    (``conv3`` of a bottleneck, ``conv2`` of a basic block): DELTA's taps
    (:func:`gluon_transfer.losses.transfer_common.stage_end_taps`)."""
    try:
        return stage_end_taps(net)
    except ConfigError:
        raise ConfigError('%s has neither layer1..layerN residual stages nor MobileNetV2 blocks: name the '
                          'feature taps explicitly' % type(net).__name__) from None


def default_taps(net):
    """AFA's hooked layers for ``net`` (module docstring)."""
    return mobilenetv2_taps(net) if is_mobilenetv2(net) else resnet_stage_end_taps(net)


def check_taps(net, taps, input_size):
    """``[(C, H, W)]`` of ``taps`` at ``input_size``, checked: AFA's MobileNetV2 taps must
    have 32/64/96/320 channels (width 1.0) at strides 8/16/16/32, ResNet stage ends strides
    4/8/16/32. Other tap lists are only checked to be square maps."""
    taps = list(taps)
    if is_mobilenetv2(net) and taps == mobilenetv2_taps(net):
        widths = [conv_paths(net)[t]._channels for t in taps]
        channels = MOBILENETV2_TAP_CHANNELS if widths[-1] == 320 else None   # other multipliers: strides only
        return check_tap_shapes(net, taps, input_size, channels, MOBILENETV2_TAP_STRIDES)
    if not is_mobilenetv2(net) and len(taps) == 4 and taps == resnet_stage_end_taps(net):
        return check_tap_shapes(net, taps, input_size, None, (4, 8, 16, 32))
    shapes = check_tap_shapes(net, taps, input_size)
    for t, (c, h, w) in zip(taps, shapes):
        if h != w:
            raise ConfigError('feature tap %s is %dx%d: AFA attention needs square maps' % (t, h, w))
    return shapes


def tap_net(net, taps, with_logits=True):
    """``net`` seen through its symbol, returning ``[logits] + maps`` (or the maps only),
    sharing ``net``'s Parameter objects (so training it trains ``net``). Taps are
    structural Conv2D paths; each map is the convolution's raw output."""
    convs = conv_paths(net)
    half = any(p.dtype is not None and np.dtype(p.dtype) == np.float16 for p in net.collect_params().values())
    # A typed input lets SymbolBlock infer every parameter's dtype (no "cannot decide type" warning).
    data = mx.sym.var('data', dtype='float16' if half else 'float32')
    out = net(data)
    out = out[0] if isinstance(out, (list, tuple)) else out
    internals = out.get_internals()
    maps = [internals[convs[t].prefix + 'fwd_output'] for t in taps]
    outputs = ([out] if with_logits else []) + maps
    return gluon.SymbolBlock(mx.sym.Group(outputs), data, params=net.collect_params())


class AFATransfer(Task):
    """Fine-tuning with one AFA regularizer (``afa-ast`` / ``afa-act``) from a frozen source.

    ``total = sum_i CE_i + alpha * sum_i omega_i + n * beta * 0.5 ||fc||^2`` per slice (see
    :mod:`gluon_transfer.losses.afa`). The source runs under ``autograd.pause()`` in
    inference mode with ``grad_req='null'`` (never trained, never handed to the trainer);
    the target runs through a tapped view of itself sharing its parameters. At setup the
    tap shapes at ``input_size`` are checked and the regularizer builds its attention
    modules; :meth:`blocks` hands them to the trainer (trained, checkpointed, not exported).
    """
    name = 'afa'

    def __init__(self, regularizer, source, taps=None, input_size=224, hybridize=True):
        self.reg = regularizer
        self.source = source
        self.taps = list(taps) if taps else None
        self.input_size = int(input_size)
        self.hybridize = hybridize
        self._target = self._source = None

    def blocks(self):
        return self.reg.blocks()

    def setup(self, net, ctx):
        taps = self.taps or default_taps(net)
        shapes = check_taps(net, taps, self.input_size)
        src_shapes = check_tap_shapes(self.source, taps, self.input_size)
        if src_shapes != shapes:
            raise ConfigError('source and target taps differ: %s vs %s' % (src_shapes, shapes))
        self.taps = taps
        self._target = tap_net(net, taps, with_logits=True)
        params = self.source.collect_params()
        params.setattr('grad_req', 'null')
        params.reset_ctx(list(ctx))
        if any(p.dtype is not None and np.dtype(p.dtype) == np.float16 for p in net.collect_params().values()):
            self.source.cast('float16')      # it reads the same (float16) input batches
        self._source = tap_net(self.source, taps, with_logits=False)
        if self.hybridize:
            self._target.hybridize(static_alloc=True, static_shape=True)
            self._source.hybridize(static_alloc=True, static_shape=True)
        self.reg.set_feature_shapes(shapes)
        self.reg.setup(net, list(ctx))

    def features(self, data):
        """``(logits, target maps, source maps)`` for ``data`` (source maps not recorded)."""
        out = self._target(data)
        with autograd.pause():
            feats_s = list(self._source(data))
        return out[0], list(out[1:]), feats_s

    def loss(self, net, data, target, label):
        logits, feats_t, feats_s = self.features(data)
        ce = cross_entropy(logits, target)
        n = data.shape[0]
        total = ce.sum()
        terms = {'ce': ce.mean()}
        for name, contrib in self.reg.terms(data.context, n, feats_t, feats_s):
            total = total + contrib.reshape(total.shape)
            terms[name] = contrib / n
        return total, logits, terms

    def predict(self, net, data):
        return logits_of(net(data))


# ------------------------------------------------------------------ networks
def _get_model(model, classes, model_kwargs):
    from .zoo import get_model
    return get_model(model, classes=classes, **dict(model_kwargs or {}))


def _head_keys(net):
    return set(head_keys(net))


def _finish(net, ctx, size=32):
    with autograd.predict_mode():
        net(mx.nd.zeros((1, 3, size, size), ctx=ctx[0]))


def build_target(source, model, classes, ctx, model_kwargs=None, init=None, seed=0):
    """Stage-1 target: a ``classes``-way ``model`` whose non-classifier parameters are
    copies of ``source``'s (keys and shapes checked); the classifier is freshly initialised."""
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    net = _get_model(model, classes, model_kwargs)
    mx.random.seed(seed)
    net.initialize(init or mx.init.Xavier(), ctx=ctx)
    _finish(net, ctx)
    head = _head_keys(net)
    if any(p._deferred_init for p in source.collect_params().values()):
        _finish(source, list(source.collect_params().values())[0]._deferred_init[1])
    src = source._collect_params_with_prefix()
    for key, p in net._collect_params_with_prefix().items():
        if key in head:
            continue
        if key not in src:
            raise CheckpointError('source network lacks %r of the target %s' % (key, model))
        arr = src[key].data(src[key].list_ctx()[0])
        if tuple(arr.shape) != tuple(p.shape):
            raise CheckpointError('source %r has shape %s but the target %s' % (key, arr.shape, p.shape))
        p.set_data(arr)
    return net


def stage2_source(stage1_params, model, classes, ctx=None, model_kwargs=None):
    """The frozen stage-2 source: ``model`` with every non-classifier parameter from the
    stage-1 file ``stage1_params`` (all present, shapes checked -- a CheckpointError names
    the first bad key), ``grad_req='null'``. Its classifier is not loaded (left at zero):
    only the tapped features are used, as in the reference (``load all but fc``)."""
    from .weights import read_params
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
    if not os.path.isfile(stage1_params):
        raise CheckpointError('stage-1 params not found: %s' % stage1_params)
    net = _get_model(model, classes, model_kwargs)
    net.initialize(mx.init.Zero(), ctx=ctx)
    _finish(net, ctx)
    head = _head_keys(net)
    arrays = read_params(stage1_params)
    name = os.path.basename(stage1_params)
    for key, p in net._collect_params_with_prefix().items():
        if key in head:
            continue
        if key not in arrays:
            raise CheckpointError('%s does not fit %s: missing key %r' % (name, model, key))
        if tuple(arrays[key].shape) != tuple(p.shape):
            raise CheckpointError('%s: %r has shape %s but %s expects %s'
                                  % (name, key, arrays[key].shape, model, p.shape))
        p.set_data(arrays[key].astype(p.dtype))
    net.collect_params().setattr('grad_req', 'null')
    return net


# ------------------------------------------------------------------ data
def holdout_split(rec, fraction, out_dir, seed=0, idx=None):
    """Split a training ``.rec`` into ``(train_rec, holdout_rec)`` files under ``out_dir``:
    the holdout is the seeded class-balanced ``fraction``
    (:func:`gluon_transfer.data.datasets.class_balanced_subset`), training keeps the rest.
    Records are copied verbatim; an existing pair written from the same positions is reused."""
    from .data.datasets import class_balanced_subset, write_record_subset
    from .data.recordio import inspect_recordio, default_idx_path
    if not 0 < float(fraction) < 1:
        raise ConfigError('holdout fraction must be in (0, 1), got %r' % (fraction,))
    info = inspect_recordio(rec, idx or default_idx_path(rec))
    held = class_balanced_subset(info.labels, info.keys, fraction, seed)
    keep = np.setdiff1d(np.arange(info.num_records), held)
    if not len(keep):
        raise ConfigError('holdout %g of %s leaves no training records' % (float(fraction), rec))
    stem = os.path.join(out_dir, 'afa_%s_s%d' % ('%g' % float(fraction), int(seed)))
    out = []
    for tag, pos in (('train', keep), ('holdout', held)):
        prefix = '%s_%s' % (stem, tag)
        if not (os.path.isfile(prefix + '.rec') and os.path.isfile(prefix + '.idx')
                and inspect_recordio(prefix + '.rec', prefix + '.idx').num_records == len(pos)):
            write_record_subset(info, pos, prefix)
        out.append(prefix + '.rec')
    return tuple(out)


# ------------------------------------------------------------------ driver
def stage_fit_config(settings, iters_per_epoch, max_iter=None, **overrides):
    """A :class:`~gluon_transfer.engine.trainer.FitConfig` for one stage: SGD with the
    preset's lr/momentum/wd, ``max_iter`` iterations (default the preset's 4500) and one
    x0.1 step at ``round(0.67 * max_iter)``."""
    from .engine.trainer import FitConfig
    total = int(max_iter or settings['max_iter'])
    epochs = int(math.ceil(total / float(iters_per_epoch)))
    decay = int(round(settings['decay_at'] * total)) / float(iters_per_epoch)
    cfg = dict(num_epochs=epochs, max_iters=total, optimizer='sgd', lr=settings['lr'],
               momentum=settings['momentum'], wd=settings['wd'], lr_mode='step', lr_decay=settings['lr_decay'],
               lr_decay_epochs=(decay,), seed=settings.get('seed', 0))
    cfg.update(overrides)
    return FitConfig(**cfg)


def _best_params(save_dir):
    import glob
    found = sorted(glob.glob(os.path.join(save_dir, '*-best.params')))
    if not found:
        raise CheckpointError('no best checkpoint in %s (was a holdout split evaluated?)' % save_dir)
    return found[-1]


def run_two_stage(model, source, train, holdout, num_classes, ctx, save_dir, max_iter=None, taps=None,
                  input_size=None, model_kwargs=None, val=None, settings=None, fit_overrides=None, log=None):
    """Run AFA's two stages through the Engine and return a dict with the stage histories,
    the best stage-1 params path (chosen by top-1 on ``holdout``), and the final stage-2
    network (``net``) and its frozen source (``stage2_source``).

    ``source``: the ImageNet network (any classifier size; frozen); ``train``: training
    iterator (without the holdout records, e.g. from :func:`holdout_split`); ``holdout``:
    iterator over the held-out training records (model selection for BOTH stages: the
    stage-2 result kept is the best on it too); ``val``: optional test iterator evaluated
    once with the final best stage-2 network. ``settings``: ``{'ast': {...}, 'act': {...}}``
    overriding :func:`preset_for`; ``fit_overrides``: extra FitConfig fields for both
    stages (e.g. ``mode='imperative'``, ``log_interval``)."""
    from .engine.checkpoint import CheckpointManager
    from .engine.trainer import Engine
    from .losses.afa import AFASpatial, AFAChannel
    log = log or logging.getLogger('gluon_transfer')
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    ref = preset_for(model)
    settings = {k: dict(ref[k], **((settings or {}).get(k, {}))) for k in ('ast', 'act')}
    size = int(input_size or settings['ast']['input_size'])
    run_info = {'model': model, 'method': 'afa'}
    result = {}

    # Stage 1: ImageNet source, new classifier, spatial attention.
    s1 = settings['ast']
    net1 = build_target(source, model, num_classes, ctx, model_kwargs, seed=s1.get('seed', 0))
    reg1 = AFASpatial(alpha=s1['alpha'], beta=s1['beta'], seed=s1.get('seed', 0))
    task1 = AFATransfer(reg1, source, taps=taps, input_size=size)
    dir1 = os.path.join(save_dir, 'stage1_ast')
    cfg1 = stage_fit_config(s1, len(train), max_iter, **dict(fit_overrides or {}))
    eng1 = Engine(net1, task1, ctx, cfg1, train, holdout, num_classes,
                  checkpoint=CheckpointManager(dir1, model + '-afa-ast'), logger=log,
                  metrics_path=os.path.join(dir1, 'metrics.jsonl'), run_info=run_info)
    result['stage1_history'] = eng1.fit()
    best1 = _best_params(dir1)
    result['stage1_best'] = best1
    log.info('AFA stage 1 done: best holdout top-1 %.4f (%s)', eng1.best_top1, best1)

    # Stage 2: the best stage-1 network initialises the target and is the frozen source.
    s2 = settings['act']
    from .weights import load_params
    net2 = _get_model(model, num_classes, model_kwargs)
    net2.initialize(ctx=ctx)
    _finish(net2, ctx)
    load_params(net2, best1, ctx=ctx)
    src2 = stage2_source(best1, model, num_classes, ctx, model_kwargs)
    reg2 = AFAChannel(alpha=s2['alpha'], beta=s2['beta'], seed=s2.get('seed', 0))
    task2 = AFATransfer(reg2, src2, taps=task1.taps, input_size=size)
    dir2 = os.path.join(save_dir, 'stage2_act')
    cfg2 = stage_fit_config(s2, len(train), max_iter, **dict(fit_overrides or {}))
    eng2 = Engine(net2, task2, ctx, cfg2, train, holdout, num_classes,
                  checkpoint=CheckpointManager(dir2, model + '-afa-act'), logger=log,
                  metrics_path=os.path.join(dir2, 'metrics.jsonl'), run_info=run_info)
    result['stage2_history'] = eng2.fit()
    best2 = _best_params(dir2)
    result['stage2_best'] = best2
    result['stage2_source'] = src2
    load_params(net2, best2, ctx=ctx)
    result['net'] = net2
    if val is not None:
        result['test'] = eng2.evaluate(val)
        log.info('AFA stage 2 best (holdout top-1 %.4f) on the test split: top-1 %.4f',
                 eng2.best_top1, result['test']['top1'])
    return result
