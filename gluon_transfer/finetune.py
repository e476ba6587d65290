"""train_transfer.py's driver: fine-tune a GluonCV or registered network from source
weights with a registered regularizer, on the shared engine.

Flow (:func:`main`): parse the ``transfer`` preset's options
(:func:`gluon_transfer.cli.add_transfer_args`), resolve the reference defaults
(:func:`resolve_args`), then :func:`gluon_transfer.cli.run` with the hooks of a
:class:`FineTune` object:

* ``build_net``: the **source** network is built with the classifier size found in the
  source file and loaded with full key/shape checks (``weights.load_params``, strict), or
  comes from GluonCV's pretrained file (``--source-pretrained``; never downloads). The
  **target** is a fresh network with one output per class of the dataset; every
  non-classifier parameter is copied from the source, the classifier (and the groups
  chosen by ``--new-layers``) keep the initializer's values. Layer groups, learning-rate
  and weight-decay multipliers are applied (:mod:`gluon_transfer.param_groups`).
* ``make_task``: a :class:`~gluon_transfer.engine.tasks.Transfer` task with the
  regularizer built by name from ``REGULARIZERS``; the frozen source goes to the task
  only (never to the trainer), the L2-SP anchor ``w0`` is a copy of the source weights.
* AFA (``--reg afa-ast`` / ``afa-act``, :mod:`gluon_transfer.afa`): the stage's lr/alpha
  preset where ``--lr``/``--alpha`` are not given; ``--init-from STAGE1.params`` (stage 2)
  replaces the source file: the target loads the whole stage-1 network and the frozen
  source is the same network without its classifier; ``--afa-two-stage`` runs both.
* AFDS (``--reg afd``, optionally ``--afs``; :mod:`gluon_transfer.afds`): with ``--afs``
  ``prepare`` holds out ``--holdout-fraction`` of the training records (training uses the
  rest), ``build_net`` converts the target into the AFS ResNet (gates after every ConvBN,
  identity-initialised, lr x``--afs-gate-lr-mult``), and the ``fit`` hook runs phase 1,
  the mask update on the holdout and phase 2, then writes ``afds_report.json`` /
  ``afds_masks.json``. ``--max-iter`` counts both phases.
* ``build_val`` (``--eval-ten-crop``): the evaluation images at ``input/crop_ratio``
  (256 for 224) for ten-crop evaluation.

Reference defaults (transfer-methods.md §4.2, §5.2): batch 64, SGD momentum 0.9, lr 0.01,
4500 iterations, one x0.1 step at 2/3 of training (per iteration here: the references step
per epoch at ``int(0.67 * epochs)``), optimizer weight decay 1e-4 for ``l2`` and 0 for the
penalties (the non-binary variants keep 1e-4, as Plested et al.'s code adds L2SP on top of
SGD weight decay).
"""
import math
import os

import mxnet as mx

from .errors import CheckpointError, ConfigError

__all__ = ['resolve_args', 'FineTune', 'load_source', 'build_target', 'main', 'run_stage', 'DEFAULT_ITERS',
           'channel_importance']

DEFAULT_ITERS = 4500

# Regularizer-specific options passed through by name when the parser defines them
# (``--afd-norm`` -> ``afd_norm``...); a regularizer ignores the ones it does not take.
REG_OPTION_NAMES = ('afd_norm', 'afd_predictor')


def _preset_for(name):
    from .data.datasets import PRESETS
    return name if name in PRESETS else 'transfer'


def _regularizer_class(name):
    from . import losses  # noqa: F401  (registers the regularizers)
    from .registry import REGULARIZERS
    return REGULARIZERS.get(name)


def _train_records(args):
    """Records in the training split (structure-checked, cheap), for the iteration count."""
    from .data.datasets import resolve_data_dir, get_preset
    from .data.recordio import inspect_recordio, default_idx_path
    if args.rec_train:
        rec, idx = args.rec_train, args.rec_train_idx
    else:
        preset = get_preset(args.dataset)
        data_dir = args.data_dir or preset.default_dir
        if not data_dir:
            raise ConfigError('pass --data-dir (a folder with train.rec/.idx and val.rec/.idx) or --rec-train')
        source, rec, _ = resolve_data_dir(preset, data_dir)
        if source != 'recordio':
            from .data.cifar import read_cifar_binary
            return len(read_cifar_binary(rec, preset.binary, train=True)[1])
        idx = None
    return inspect_recordio(rec, idx or default_idx_path(rec)).num_records


def resolve_args(args, num_devices=1, num_train=None):
    """Fill the reference defaults into ``args`` (in place) and validate the combination.

    Sets ``dataset_name`` (the name given) and ``dataset`` (its preset, ``transfer`` for
    unregistered names); ``wd``; ``lr`` from ``--lrs``; ``max_iter``/``num_epochs``
    (``num_train`` records, default: counted in the training split) and the decay step at
    2/3 of the iterations. Returns ``args``."""
    args.dataset_name = getattr(args, 'dataset_name', None) or args.dataset
    args.dataset = _preset_for(args.dataset)
    if getattr(args, 'params', None):
        raise ConfigError('train_transfer.py takes the source weights with --source-params (the classifier is '
                          'replaced); --params is not used')
    if args.source_params and args.source_pretrained:
        raise ConfigError('give either --source-params FILE or --source-pretrained, not both')
    cls = _regularizer_class(args.reg)
    _check_init_from(args)
    from .afds import resolve_afds_args
    resolve_afds_args(args)
    if args.wd is None:
        keep_wd = args.reg == 'l2' or (args.reg == 'l2sp' and args.l2sp_variant in ('nonbinary', 'groups'))
        args.wd = 1e-4 if keep_wd else 0.0
    if args.alpha is None and args.reg == 'delta' and 'dog' in str(args.dataset_name).lower():
        args.alpha = 0.1     # DELTA's run.sh: alpha 0.1 for Stanford Dogs
    if args.lrs is not None:
        if len(args.lrs) != 3:
            raise ConfigError('--lrs takes three rates head,upper,lower; got %r' % (args.lrs,))
        if args.num_low_lr_layers is None:
            raise ConfigError('--lrs needs --num-low-lr-layers k (the k groups nearest the input get the third rate)')
        args.lr = args.lrs[0]
    _apply_afa_preset(args)
    if args.reg == 'l2sp' and args.l2sp_variant in ('nonbinary', 'groups') and args.num_low_lr_layers is None:
        raise ConfigError('--l2sp-variant %s needs --num-low-lr-layers k (the groups anchored at the source '
                          'weights)' % args.l2sp_variant)
    if args.eval_ten_crop:
        from .data.datasets import get_preset
        if not get_preset(args.dataset).val_resize:
            raise ConfigError('--eval-ten-crop needs a preset that resizes for evaluation (not %r)' % args.dataset)
    args.reg_class = cls
    if getattr(args, 'print_param_groups', False):
        return args
    if not (args.source_params or args.source_pretrained or getattr(args, 'init_from', None)):
        raise ConfigError('fine-tuning needs source weights: --source-params FILE or --source-pretrained')
    if num_train is None:
        num_train = _train_records(args)
    gbs = args.batch_size * num_devices
    ipe = int(math.ceil(num_train / float(gbs)))
    explicit_epochs = args.num_epochs > 0
    if args.max_iter is None:
        args.max_iter = 0 if explicit_epochs else DEFAULT_ITERS
    if not explicit_epochs:
        args.num_epochs = int(math.ceil(args.max_iter / float(ipe)))
    total = min(args.max_iter or args.num_epochs * ipe, args.num_epochs * ipe)
    if args.lr_mode == 'step' and not args.lr_decay_epoch and not args.lr_decay_period:
        at = AFA_DECAY_AT if args.reg in AFA_STAGES else 2.0 / 3.0     # AFA's hocons: 0.67
        args.lr_decay_epoch = (int(round(at * total)) / float(ipe),)
    args.iters_per_epoch = ipe
    args.total_iters = total
    return args


AFA_STAGES = {'afa-ast': 'ast', 'afa-act': 'act'}
AFA_DECAY_AT = 0.67
DEFAULT_LR = 0.01


def _check_init_from(args):
    """``--init-from`` is AFA's stage 2 (``--reg afa-act``) and replaces the source file;
    ``afa-act`` needs it (or ``--afa-two-stage``)."""
    init_from = getattr(args, 'init_from', None)
    if init_from:
        if args.reg != 'afa-act':
            raise ConfigError('--init-from is for AFA stage 2 (--reg afa-act); --reg %s takes the source network '
                              'with --source-params' % args.reg)
        if args.source_params or args.source_pretrained:
            raise ConfigError('--init-from FILE is both the starting network and (without its classifier) the '
                              'frozen source of stage 2: drop --source-params/--source-pretrained')
        if args.new_layers != 1:
            raise ConfigError('--init-from keeps every stage-1 weight; --new-layers %d would re-initialise some'
                              % args.new_layers)
        if not os.path.isfile(init_from):
            raise CheckpointError('--init-from file not found: %s' % init_from)
    elif args.reg == 'afa-act' and not getattr(args, 'afa_two_stage', False):
        raise ConfigError('--reg afa-act is AFA stage 2: pass --init-from STAGE1.params (the network trained with '
                          '--reg afa-ast; it initialises the target and, without its classifier, is the frozen '
                          'source), or run both stages with --afa-two-stage')


def _apply_afa_preset(args):
    """``--lr`` default (0.01), or for ``afa-ast``/``afa-act`` the stage's reference lr and
    alpha for ``--model`` (:func:`gluon_transfer.afa.preset_for`) where the user gave none;
    ``args.preset_note`` says what was applied (logged by ``build_net``)."""
    args.preset_note = None
    stage = AFA_STAGES.get(args.reg)
    if stage:
        from .afa import preset_for
        ref = preset_for(args.model)[stage]
        applied = []
        for key in ('lr', 'alpha'):
            if getattr(args, key) is None:
                setattr(args, key, ref[key])
                applied.append('%s %g' % (key, ref[key]))
        args.preset_note = 'AFA %s preset (%s reference values) for %s: %s' % (
            stage.upper(), ref['name'], args.model, ', '.join(applied) or 'not applied (--lr and --alpha given)')
    if args.lr is None:
        args.lr = DEFAULT_LR


def source_head_classes(model, path, model_kwargs):
    """Classifier size stored in a source params file (read from its head weight), or None."""
    from .weights import read_params
    from .zoo import get_model
    from .losses.transfer_common import head_keys
    arrays = read_params(path)
    probe = get_model(model, classes=1, **model_kwargs)
    for key in head_keys(probe):
        if key.endswith('weight') and key in arrays:
            return int(arrays[key].shape[0])
    return None


def load_source(model, ctx, source_params=None, source_pretrained=False, model_kwargs=None, log=None):
    """The source network with its own classifier, weights loaded and checked."""
    from .weights import load_params, describe_load
    from .zoo import get_model
    kw = dict(model_kwargs or {})
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    if source_params:
        classes = source_head_classes(model, source_params, kw) or 1000
        net = get_model(model, classes=classes, **kw)
        net.initialize(ctx=ctx)
        try:
            report = load_params(net, source_params, ctx=ctx)
        except CheckpointError as err:
            raise CheckpointError('--source-params %s is not a %s: %s' % (source_params, model, err)) from None
        if log:
            log.info('source %s from %s: %s (classifier of %d classes, replaced)', model, source_params,
                     describe_load(report), classes)
    elif source_pretrained:
        net = get_model(model, pretrained=True, ctx=ctx[0], **kw)
        if len(ctx) > 1:
            net.collect_params().reset_ctx(ctx)
        if log:
            log.info("source %s: GluonCV's pretrained weights", model)
    else:
        raise ConfigError('no source weights: pass --source-params FILE or --source-pretrained')
    return net


def build_target(model, num_classes, ctx, source=None, init=None, model_kwargs=None, seed=0):
    """A ``num_classes`` network whose non-classifier parameters are copies of ``source``'s
    (same structural keys and shapes, checked); the classifier keeps ``init``'s values."""
    from .zoo import get_model
    from .losses.transfer_common import head_keys
    kw = dict(model_kwargs or {})
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    try:
        net = get_model(model, classes=num_classes, **kw)
    except TypeError as err:
        raise ConfigError('model %r does not accept %s: %s' % (model, sorted(kw), err)) from None
    mx.random.seed(seed)
    net.initialize(init or mx.init.Xavier(), ctx=ctx)
    if source is None:
        return net
    head = set(head_keys(net))
    src = source._collect_params_with_prefix()
    for key, p in net._collect_params_with_prefix().items():
        if key in head:
            continue
        if key not in src:
            raise CheckpointError('source network lacks %r of the target %s' % (key, model))
        arr = src[key].data(src[key].list_ctx()[0])
        if p.shape is not None and all(s > 0 for s in p.shape) and tuple(p.shape) != tuple(arr.shape):
            raise CheckpointError('source %r has shape %s but the target %s' % (key, arr.shape, p.shape))
        p._load_init(arr, ctx, cast_dtype=True, dtype_source='current')
    return net


def _finish_shapes(net, ctx, size):
    """Run one tiny forward so deferred parameter shapes are known (for the listing)."""
    with mx.autograd.predict_mode():
        net(mx.nd.zeros((1, 3, size, size), ctx=ctx[0]))


class FineTune:
    """Holds what the run's hooks share (the source network, the regularizer, the rows)."""

    def __init__(self):
        self.source = None
        self.reg = None
        self.rows = None
        self.holdout = None

    # ------------------------------------------------------------------ hooks
    def prepare(self, args):
        from .cli import open_run_dir, resolve_ctx
        if getattr(args, 'afa_two_stage', False):
            from .afa import run_two_stage
            open_run_dir(args, 'transfer')             # holds the holdout split and both stages
            run_two_stage(args, run_stage)
            return 0
        ctx = resolve_ctx(args)
        if getattr(args, 'afs', False) and not getattr(args, 'print_param_groups', False):
            from .afds import holdout_for_args, resolve_afds_args
            resolve_afds_args(args)                    # bad AFDS options fail before the run folder exists
            open_run_dir(args, 'transfer')             # the holdout split is written there
            self.holdout = holdout_for_args(args)      # training then uses the rest of the records
        resolve_args(args, num_devices=len(ctx))
        self.make_regularizer(args, args.batch_size * len(ctx))   # bad regularizer settings fail here
        if args.print_param_groups:
            return self.print_groups(args, ctx)
        return None

    def make_regularizer(self, args, batch_size):
        channel_weights = args.channel_weights
        if args.reg == 'delta' and channel_weights is None and args.data_dir and not args.print_param_groups:
            from .losses.delta import default_channel_weights_path
            channel_weights = default_channel_weights_path(args.data_dir, args.model)
        # Every regularizer takes what it needs from these keywords and ignores the rest.
        extra = {k: getattr(args, k) for k in REG_OPTION_NAMES if getattr(args, k, None) is not None}
        return args.reg_class(alpha=args.alpha, beta=args.beta, variant=args.l2sp_variant,
                              rates=args.l2sp_rates, batch_size=batch_size, channel_weights=channel_weights,
                              model=args.model, seed=args.seed, input_size=args.input_size, taps=args.taps,
                              **extra)

    def plan(self, args, net):
        from .param_groups import plan
        return plan(net, lrs=args.lrs, num_low=args.num_low_lr_layers, new_layers=args.new_layers,
                    no_wd=args.no_wd, rates=self.reg.param_rates)

    def build_net(self, args, data, ctx, log):
        from .cli import model_kwargs
        from .param_groups import reinit_new_groups, apply_multipliers
        kw = model_kwargs(args)
        init = mx.init.Xavier() if args.init == 'xavier' else mx.init.MSRAPrelu()
        if getattr(args, 'init_from', None):
            net, self.source = self.load_stage1(args, data.num_classes, ctx, init, kw, log)
        else:
            self.source = load_source(args.model, ctx, args.source_params, args.source_pretrained, kw, log)
            net = build_target(args.model, data.num_classes, ctx, self.source, init, kw, seed=args.seed)
            if getattr(args, 'afs', False):
                from .afds import build_afs_target
                net = build_afs_target(args, net, ctx)
        if getattr(args, 'preset_note', None):
            log.info(args.preset_note)
        self.reg = self.make_regularizer(args, args.batch_size * len(ctx))
        self.rows = self.plan(args, net)
        self.reg.bind(self.rows)
        fresh = reinit_new_groups(net, self.rows, init, ctx)
        apply_multipliers(net, self.rows)
        if getattr(args, 'afs', False):
            from .afds import scale_gate_lr
            scale_gate_lr(net, args.afs_gate_lr_mult)
            log.info('AFS target: gates after every ConvBN of every bottleneck (identity init), density %g '
                     '(phase 1: %g), gate lr x%g; mask statistics on %r', args.afs_density,
                     args.afs_phase1_density, args.afs_gate_lr_mult, self.holdout)
        groups = len({r.group for r in self.rows})
        log.info('target %s: %d classes (%s), %d layer groups%s; reg %s, wd %g, %d iterations (%d epochs of %d)',
                 args.model, data.num_classes, args.dataset_name, groups,
                 (', re-initialised: ' + ', '.join(fresh)) if fresh else '', self._describe_reg(), args.wd,
                 args.total_iters, args.num_epochs, args.iters_per_epoch)
        return net

    @staticmethod
    def load_stage1(args, num_classes, ctx, init, kw, log):
        """``--init-from``: the target is the stage-1 network (every parameter, classifier
        included, strict key/shape checks) and the frozen source is the same file without
        its classifier (:func:`gluon_transfer.afa.stage2_source`)."""
        from .afa import stage2_source
        from .weights import load_params, describe_load
        net = build_target(args.model, num_classes, ctx, None, init, kw, seed=args.seed)
        try:
            report = load_params(net, args.init_from, ctx=ctx)
        except CheckpointError as err:
            raise CheckpointError('--init-from %s is not a %d-class %s: %s'
                                  % (args.init_from, num_classes, args.model, err)) from None
        source = stage2_source(args.init_from, args.model, num_classes, ctx, kw)
        log.info('stage 2: target initialised from %s (%s); the frozen source is the same network without its '
                 'classifier', args.init_from, describe_load(report))
        return net, source

    def _describe_reg(self):
        r = self.reg
        parts = [r.name]
        for attr in ('variant', 'alpha', 'beta'):
            if hasattr(r, attr):
                parts.append('%s=%s' % (attr, getattr(r, attr)))
        return ' '.join(parts)

    def make_task(self, args, net, data, ctx, log):
        from .engine.tasks import Transfer
        source_weights = None
        if self.reg.uses_w0:
            source_weights = {k: p.data(p.list_ctx()[0]) for k, p in self.source._collect_params_with_prefix().items()}
        source = self.source if self.reg.needs_features else None
        task = Transfer([self.reg], source=source, taps=args.taps, source_weights=source_weights,
                        ten_crop=args.eval_ten_crop, crop=args.input_size)
        if source is None:
            self.source = None    # nothing else needs it (w0 is copied at setup)
        return task

    def fit(self, engine, args, log):
        """The run's ``fit`` hook: the AFDS schedule with ``--afs``
        (:func:`gluon_transfer.afds.run_afds`), else one plain ``engine.fit``."""
        from .cli import default_fit
        if getattr(args, 'afs', False):
            from .afds import run_afds
            return run_afds(engine, args, self.holdout, log)
        return default_fit(engine, args, log)

    def build_val(self, args, batch_size, num_parts, part_index):
        if not args.eval_ten_crop:
            return None
        from .data import build_data
        size = int(math.ceil(args.input_size / float(args.crop_ratio)))
        bundle = build_data(args.dataset, data_dir=args.data_dir, rec_val=args.rec_val, rec_val_idx=args.rec_val_idx,
                            batch_size=max(1, batch_size // 4), num_workers=args.num_workers, num_parts=num_parts,
                            part_index=part_index, shard_val=False, seed=args.seed, input_size=size, crop_ratio=1.0,
                            with_train=False)
        return bundle.val

    # ------------------------------------------------------------------ dry run
    def print_groups(self, args, ctx, out=None):
        import sys
        from .cli import model_kwargs
        from .param_groups import format_rows
        out = out or sys.stdout
        num_classes, note = 1000, ' (no data given: shown with 1000 classes)'
        if args.data_dir or args.rec_train or args.rec_val:
            from .data import build_data
            bundle = build_data(args.dataset, data_dir=args.data_dir, rec_train=args.rec_train,
                                rec_val=args.rec_val, rec_train_idx=args.rec_train_idx, rec_val_idx=args.rec_val_idx,
                                batch_size=1, verify=False)
            num_classes, note = bundle.num_classes, ''
        net = build_target(args.model, num_classes, ctx, None, None, model_kwargs(args), args.seed)
        _finish_shapes(net, ctx, min(args.input_size, 64))
        self.reg = self.make_regularizer(args, args.batch_size * len(ctx))
        rows = self.plan(args, net)
        out.write('%s, %d classes%s; --reg %s; base lr %g%s\n' % (
            args.model, num_classes, note, self._describe_reg(), args.lr,
            '; --lrs %s with --num-low-lr-layers %d' % (','.join('%g' % v for v in args.lrs), args.num_low_lr_layers)
            if args.lrs else ''))
        out.write(format_rows(rows, base_lr=args.lr) + '\n')
        out.flush()
        return 0


def run_stage(args):
    """One ``train_transfer.py`` run on already parsed ``args`` (a copy is resolved);
    returns the engine."""
    import copy
    from . import cli
    args = copy.deepcopy(args)
    ft = FineTune()
    ft.prepare(args)
    return cli.run(args, 'transfer', ft.make_task, build_net=ft.build_net, build_val=ft.build_val, fit=ft.fit)


def main(argv=None):
    from . import cli
    ft = FineTune()
    return cli.main('transfer', 'Fine-tune a network from source weights (DELTA, L2-SP, feature-map, L2).',
                    argv, make_task=ft.make_task, prepare=ft.prepare, build_net=ft.build_net, build_val=ft.build_val,
                    fit=ft.fit)


def channel_importance(args, head_epochs=10, num_batches=4, log=None):
    """DELTA's channel-importance procedure (``channel_eval.py``, transfer-methods.md §5.1)
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
    from .cli import model_kwargs, resolve_ctx
    from .data import build_data
    from .engine.tasks import Classify
    from .engine.trainer import Engine, FitConfig
    from .losses.delta import filter_importance
    from .losses.transfer_common import head_keys, stage_end_taps
    log = log or logging.getLogger('gluon_transfer')
    ctx = resolve_ctx(args)
    data = build_data(args.dataset, data_dir=args.data_dir, rec_train=args.rec_train, rec_val=args.rec_val,
                      rec_train_idx=args.rec_train_idx, rec_val_idx=args.rec_val_idx,
                      batch_size=args.batch_size * len(ctx), num_workers=args.num_workers, seed=args.seed,
                      input_size=args.input_size, crop_ratio=args.crop_ratio)
    kw = model_kwargs(args)
    source = load_source(args.model, ctx, args.source_params, args.source_pretrained, kw, log)
    net = build_target(args.model, data.num_classes, ctx, source, mx.init.Xavier(), kw, seed=args.seed)
    del source
    head = set(head_keys(net))
    for key, p in net._collect_params_with_prefix().items():
        if key not in head:
            p.grad_req = 'null'
    gamma = math.exp(math.log(0.1) / 6.0)
    cfg = FitConfig(num_epochs=head_epochs, optimizer='sgd', lr=0.01, momentum=0.9, wd=1e-4, lr_mode='step',
                    lr_decay=gamma, lr_decay_epochs=tuple(range(1, head_epochs)), mode=args.mode,
                    log_interval=args.log_interval, seed=args.seed)
    engine = Engine(net, Classify(), ctx, cfg, data.train, data.val, data.num_classes, logger=log)
    engine.fit()
    data.train.set_epoch(head_epochs)
    batches = []
    for batch in data.train:
        batches.append((batch.data, batch.label))
        if len(batches) >= num_batches:
            break
    taps = list(args.taps) if args.taps else stage_end_taps(net)
    raw = filter_importance(net, taps, batches, ctx[0], log)
    procedure = {'head_epochs': head_epochs, 'num_batches': len(batches), 'batch_size': args.batch_size * len(ctx),
                 'lr': 0.01, 'momentum': 0.9, 'wd': 1e-4, 'lr_gamma_per_epoch': gamma,
                 'head_val_top1': engine.history[-1].get('val_top1') if engine.history else None}
    return taps, raw, procedure
