"""AFA in two stages (Xie et al., Neural Networks 2021; transfer-methods.md §4.2-4.3):
reference presets, feature taps, the stage-2 source, and the ``--afa-two-stage`` driver.
The losses are :mod:`gluon_transfer.losses.afa`; training is ``train_transfer.py`` (the
generic :class:`~gluon_transfer.engine.tasks.Transfer` task, :mod:`gluon_transfer.finetune`).

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
the step is per iteration at ``round(0.67 * iterations)``. ``train_transfer.py`` applies
the stage's lr and alpha for ``--model`` unless ``--lr`` / ``--alpha`` are given, and logs
what it applied; batch 64 and 4500 iterations are the script's defaults anyway (the
presets' seeds 1/2/5 are not applied: ``--seed`` decides).

Stage 2 needs a stage-1 network: ``--reg afa-act`` without ``--init-from`` is an error (the
reference's stage-2 configs have ``pre_trained_path`` to fill; aligning to the ImageNet
network with channel attention is not one of its stages). ``--init-from`` is only for
``afa-act`` and replaces ``--source-params``.

Taps (:func:`default_taps`): ResNet-v1b -- the last convolution of the last block of each
``layerK`` stage (raw output, before BN and the residual add: ``layer1.2.conv3``,
``layer2.3.conv3``, ``layer3.22.conv3``, ``layer4.2.conv3`` for ``resnet101_v1b``);
MobileNetV2 -- :func:`gluon_transfer.nn.taps_mobilenet.mobilenetv2_taps`. Shapes are
checked at start-up (channels and strides) with a one-line error.
"""
import copy
import json
import logging
import os

import numpy as np

from .errors import CheckpointError, ConfigError
from .losses.transfer_common import head_keys, stage_end_taps
from .nn.taps_mobilenet import (conv_paths, is_mobilenetv2, mobilenetv2_taps, check_tap_shapes,
                                MOBILENETV2_TAP_CHANNELS, MOBILENETV2_TAP_STRIDES)

__all__ = ['PRESETS', 'COMMON', 'preset_for', 'default_taps', 'resnet_stage_end_taps', 'check_taps',
           'stage2_source', 'holdout_split', 'run_two_stage']


# Settings every shipped hocon shares (transfer-methods.md §4.3).
COMMON = {'batch_size': 64, 'max_iter': 4500, 'momentum': 0.9, 'wd': 0.0, 'lr_decay': 0.1,
          'decay_at': 0.67, 'beta': 0.01, 'input_size': 224}
PRESETS = {
    'resnet101': {'ast': dict(COMMON, name='ResNet-101', lr=0.01, alpha=0.1, seed=1),
                  'act': dict(COMMON, name='ResNet-101', lr=0.001, alpha=0.15, seed=2)},
    'mobilenetv2': {'ast': dict(COMMON, name='MobileNetV2', lr=0.01, alpha=0.09, seed=1),
                    'act': dict(COMMON, name='MobileNetV2', lr=0.001, alpha=0.04, seed=5)},
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


def stage2_source(stage1_params, model, classes, ctx=None, model_kwargs=None):
    """The frozen stage-2 source: ``model`` with every non-classifier parameter from the
    stage-1 file ``stage1_params`` (all present, shapes checked -- a CheckpointError names
    the first bad key), ``grad_req='null'``. Its classifier is not loaded (left at zero):
    only the tapped features are used, as in the reference (``load all but fc``)."""
    import mxnet as mx
    from .finetune import build_target, _finish_shapes
    from .weights import read_params
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
    if not os.path.isfile(stage1_params):
        raise CheckpointError('stage-1 params not found: %s' % stage1_params)
    net = build_target(model, classes, ctx, init=mx.init.Zero(), model_kwargs=model_kwargs)
    _finish_shapes(net, ctx, 32)
    head = set(head_keys(net))
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
def _best_params(save_dir):
    from .engine.checkpoint import best_params_path
    return best_params_path(save_dir)


def _train_rec(args, flag='--afa-two-stage'):
    """``(train .rec, .idx or None)`` of ``args`` for a run that splits its training records
    (``flag`` names that run's option in errors)."""
    if args.rec_train:
        return args.rec_train, args.rec_train_idx
    from .data.datasets import get_preset, resolve_data_dir
    from .finetune import _preset_for
    preset = get_preset(_preset_for(args.dataset))
    data_dir = args.data_dir or preset.default_dir
    if not data_dir:
        raise ConfigError('%s needs --data-dir or --rec-train (its training records are split)' % flag)
    source, rec, _ = resolve_data_dir(preset, data_dir)
    if source != 'recordio':
        raise ConfigError('%s splits a RecordIO training set; %s holds %s data' % (flag, data_dir, source))
    return rec, None


def run_two_stage(args, run_stage, log=None):
    """``train_transfer.py --afa-two-stage``: both AFA stages, each a full
    ``train_transfer.py`` run (``run_stage(stage_args) -> Engine``), model selection on a
    held-out part of the TRAINING data (never the val/test split):

    1. ``holdout_split``: the seeded class-balanced fraction ``--afa-holdout`` of the
       training records is held out (files under ``SAVE_DIR/holdout``);
    2. stage 1 (``--reg afa-ast``, ``SAVE_DIR/stage1_ast``): from ``--source-params``,
       trained on the rest, evaluated on the holdout after every epoch; the best
       holdout-top-1 checkpoint is kept;
    3. stage 2 (``--reg afa-act --init-from <best stage 1>``, ``SAVE_DIR/stage2_act``):
       same split, best holdout checkpoint kept;
    4. the best stage-2 network is evaluated once on the val split (``--data-dir``'s
       val, or ``--rec-val``).

    Each stage gets its reference preset (lr, alpha) unless ``--lr``/``--alpha`` are given
    (then both stages use them). Writes and returns (plus ``'engines'``) the summary
    ``SAVE_DIR/afa_two_stage.json``: best checkpoints, their holdout top-1, the val result."""
    log = log or logging.getLogger('gluon_transfer')
    if getattr(args, 'init_from', None):
        raise ConfigError('--afa-two-stage trains stage 1 itself: drop --init-from')
    if not (args.source_params or args.source_pretrained):
        raise ConfigError('--afa-two-stage needs the ImageNet source: --source-params FILE or --source-pretrained')
    if args.resume:
        raise ConfigError('--afa-two-stage cannot --resume; resume a stage with its own command '
                          '(the stage directories hold the usual checkpoints)')
    rec, idx = _train_rec(args)
    base = copy.deepcopy(args)
    tr, ho = holdout_split(rec, args.afa_holdout, os.path.join(args.save_dir, 'holdout'), seed=args.seed, idx=idx)
    common = dict(rec_train=tr, rec_train_idx=None, rec_val=ho, rec_val_idx=None, afa_two_stage=False)
    s1 = copy.deepcopy(base)
    vars(s1).update(common, reg='afa-ast', save_dir=os.path.join(args.save_dir, 'stage1_ast'))
    eng1 = run_stage(s1)
    best1 = _best_params(s1.save_dir)
    s2 = copy.deepcopy(base)
    vars(s2).update(common, reg='afa-act', init_from=best1, source_params=None, source_pretrained=False,
                    save_dir=os.path.join(args.save_dir, 'stage2_act'))
    eng2 = run_stage(s2)
    best2 = _best_params(s2.save_dir)
    from .data import build_data
    from .finetune import _preset_for
    from .weights import load_params
    load_params(eng2.net, best2, ctx=eng2.ctx)
    val = build_data(_preset_for(base.dataset), data_dir=base.data_dir, rec_val=base.rec_val, rec_val_idx=base.rec_val_idx,
                     batch_size=base.batch_size * len(eng2.ctx), num_workers=base.num_workers,
                     input_size=base.input_size, crop_ratio=base.crop_ratio, with_train=False).val
    test = eng2.evaluate(val)
    log.info('AFA two stages: best stage 1 %s (holdout top-1 %.4f), best stage 2 %s (holdout top-1 %.4f); '
             'val top-1 %.4f, mean per-class %.4f', best1, eng1.best_top1, best2, eng2.best_top1, test['top1'],
             test.get('mean_class_acc', float('nan')))
    summary = {'stage1_best': best1, 'stage1_holdout_top1': eng1.best_top1, 'stage2_best': best2,
               'stage2_holdout_top1': eng2.best_top1, 'holdout': ho, 'val': test}
    with open(os.path.join(args.save_dir, 'afa_two_stage.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return dict(summary, test=test, engines=(eng1, eng2))
