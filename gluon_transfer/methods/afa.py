"""AFA in two stages (Xie et al., Neural Networks 2021; docs/afa.md),
``--reg afa-ast`` / ``--reg afa-act``: the stage-2 source, the reference presets and the
``--afa-two-stage`` driver. The losses, presets and taps are
:mod:`gluon_transfer.losses.afa`.

* **Stage 1** (``--reg afa-ast``): source = the ImageNet network (frozen, inference mode);
  target = the same weights with a new classifier; the target and the spatial attention
  modules train jointly on ``CE + alpha * sum_l L_AST + beta * 0.5 ||fc||^2``.
* **Stage 2** (``--reg afa-act --init-from STAGE1.params``): the best stage-1 network
  (chosen on a held-out split of the training data) initialises the target -- all weights,
  classifier included -- AND becomes the frozen source, without its classifier
  (:func:`stage2_source`). New channel-attention modules; the stage-1 ones are dropped.

Flags: ``--afa-alpha`` / ``--afa-beta`` (the hocon keys ``alpha`` / ``beta``; ``--alpha`` /
``--beta`` are accepted as aliases), ``--init-from``, ``--afa-two-stage``, ``--afa-holdout``.
Each stage's reference lr and alpha for ``--model`` (:data:`~gluon_transfer.losses.afa.PRESETS`)
apply unless ``--lr`` / ``--afa-alpha`` are given, and the log says what was applied; batch
64 and 4500 iterations are the script's defaults anyway (the presets' seeds 1/2/5 are not
applied: ``--seed`` decides). The reference steps its schedule per epoch
(``int(0.67 * num_epochs)``); here the single x0.1 step is per iteration at
``round(0.67 * iterations)``.

Stage 2 needs a stage-1 network: ``--reg afa-act`` without ``--init-from`` is an error (the
reference's stage-2 configs have ``pre_trained_path`` to fill; aligning to the ImageNet
network with channel attention is not one of its stages). ``--init-from`` is only for
``afa-act`` and replaces ``--source-params``.
"""
import copy
import logging
import os

from ..errors import CheckpointError, ConfigError
from ..losses.afa import (COMMON, PRESETS, check_taps, default_taps, preset_for,  # noqa: F401  (the AFA names)
                          resnet_stage_end_taps)
from ..registry import METHODS
from ..options import GIVEN, given, given_flags
from .base import Method, build_target, copy_params, dataset_preset, finish_shapes, train_records_file

__all__ = ['AFAMethod', 'PRESETS', 'COMMON', 'preset_for', 'default_taps', 'resnet_stage_end_taps', 'check_taps',
           'stage2_source', 'holdout_split', 'run_two_stage', 'STAGES', 'DECAY_AT']

STAGES = {'afa-ast': 'ast', 'afa-act': 'act'}
DECAY_AT = COMMON['decay_at']          # the hocons' single step at 0.67 of training
TWO_STAGE_OPTIONS = ('afa_two_stage', 'afa_holdout')


def stage2_source(stage1_params, model, classes, ctx=None, model_kwargs=None):
    """The frozen stage-2 source: ``model`` with every non-classifier parameter from the
    stage-1 file ``stage1_params`` (all present, shapes checked -- a CheckpointError names
    the first bad key), ``grad_req='null'``. Its classifier is not loaded (left at zero):
    only the tapped features are used, as in the reference (``load all but fc``)."""
    import mxnet as mx
    from ..losses.transfer_common import head_keys
    from ..weights import read_params
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
    if not os.path.isfile(stage1_params):
        raise CheckpointError('stage-1 params not found: %s' % stage1_params)
    net = build_target(model, classes, ctx, init=mx.init.Zero(), model_kwargs=model_kwargs)
    finish_shapes(net, ctx, 32)
    copy_params(net, read_params(stage1_params), skip=head_keys(net), source=os.path.basename(stage1_params),
                target=model)
    net.collect_params().setattr('grad_req', 'null')
    return net


def holdout_split(rec, fraction, out_dir, seed=0, idx=None):
    """``(train_rec, holdout_rec)``: the training ``.rec`` split by the package's holdout
    helper (:func:`gluon_transfer.data.holdout.split_records`: a seeded class-balanced
    ``fraction`` held out, files under ``out_dir``, reused only while the training file is
    unchanged)."""
    from ..data.holdout import split_records
    split = split_records(rec, fraction, out_dir, seed=seed, idx=idx)
    return split.train_rec, split.holdout_rec


def _best_params(save_dir):
    """The best checkpoint of a stage's run folder (its ``best.params``)."""
    from ..engine.checkpoint import best_params_path
    return best_params_path(save_dir)


def run_two_stage(args, run_stage, log=None):
    """``train_transfer.py --afa-two-stage``: both AFA stages, each a full
    ``train_transfer.py`` run (``run_stage(stage_args) -> Engine``), model selection on a
    held-out part of the TRAINING data (never the val/test split):

    1. :func:`holdout_split`: the seeded class-balanced fraction ``--afa-holdout`` of the
       training records is held out (files under ``SAVE_DIR/holdout``);
    2. stage 1 (``--reg afa-ast``, ``SAVE_DIR/stage1_ast``): from ``--source-params``,
       trained on the rest, evaluated on the holdout after every epoch; the best
       holdout-top-1 checkpoint is kept;
    3. stage 2 (``--reg afa-act --init-from <best stage 1>``, ``SAVE_DIR/stage2_act``):
       same split, best holdout checkpoint kept;
    4. the best stage-2 network is evaluated once on the val split (``--data-dir``'s
       val, or ``--rec-val``).

    Each stage gets its reference preset (lr, alpha) unless ``--lr``/``--afa-alpha`` are
    given (then both stages use them). Writes and returns (plus ``'engines'``) the summary
    ``SAVE_DIR/afa_two_stage.json``: best checkpoints, their holdout top-1, the val result."""
    from ..data import build_data
    from ..engine.checkpoint import atomic_write_json, jsonable
    from ..weights import load_params
    log = log or logging.getLogger('gluon_transfer')
    if getattr(args, 'init_from', None):
        raise ConfigError('--afa-two-stage trains stage 1 itself: drop --init-from')
    if not (args.source_params or args.source_pretrained):
        raise ConfigError('--afa-two-stage needs the ImageNet source: --source-params FILE or --source-pretrained')
    if args.resume:
        raise ConfigError('--afa-two-stage cannot --resume; resume a stage with its own command '
                          '(the stage directories hold the usual checkpoints)')
    _, rec, idx = train_records_file(args, '--afa-two-stage')
    base = copy.deepcopy(args)
    # the stages are ordinary runs: the two-stage options were given for this driver, not for them
    setattr(base, GIVEN, {k: v for k, v in given(args).items() if k not in TWO_STAGE_OPTIONS})
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
    load_params(eng2.net, best2, ctx=eng2.ctx)
    val = build_data(dataset_preset(base.dataset), data_dir=base.data_dir, rec_val=base.rec_val,
                     rec_val_idx=base.rec_val_idx, batch_size=base.batch_size * len(eng2.ctx),
                     num_workers=base.num_workers, input_size=base.input_size, crop_ratio=base.crop_ratio,
                     with_train=False).val
    test = eng2.evaluate(val)
    log.info('AFA two stages: best stage 1 %s (holdout top-1 %.4f), best stage 2 %s (holdout top-1 %.4f); '
             'val top-1 %.4f, mean per-class %.4f', best1, eng1.best_top1, best2, eng2.best_top1, test['top1'],
             test.get('mean_class_acc', float('nan')))
    summary = {'stage1_best': best1, 'stage1_holdout_top1': eng1.best_top1, 'stage2_best': best2,
               'stage2_holdout_top1': eng2.best_top1, 'holdout': ho, 'val': test}
    atomic_write_json(os.path.join(args.save_dir, 'afa_two_stage.json'), jsonable(summary))
    return dict(summary, test=test, engines=(eng1, eng2))


@METHODS.register('afa')
class AFAMethod(Method):
    name = 'afa'
    regs = ('afa-ast', 'afa-act')
    title = 'AFA (--reg afa-ast, stage 1; --reg afa-act, stage 2)'
    aliases = {'alpha': 'afa_alpha', 'beta': 'afa_beta'}
    accepts = ('taps',)
    weights_hint = 'takes --afa-alpha and --afa-beta'
    decay_at = DECAY_AT

    @classmethod
    def arguments(cls, g):
        g.add_argument('--afa-alpha', type=float, default=None, metavar='ALPHA',
                       help='weight of the attentive feature alignment (default: the stage\'s reference value, '
                            'afa-ast 0.1 (MobileNetV2 0.09), afa-act 0.15 (MobileNetV2 0.04); the hocon key alpha)')
        g.add_argument('--afa-beta', type=float, default=None, metavar='BETA',
                       help='weight of 0.5*||classifier||^2 (default 0.01; the hocon key beta)')
        g.add_argument('--init-from', default=None, metavar='STAGE1.params',
                       help='AFA stage 2 (--reg afa-act): the stage-1 network initialises the target (all weights) '
                            'and, without its classifier, is the frozen source (replaces --source-params)')
        g.add_argument('--afa-two-stage', action='store_true',
                       help='run AFA stage 1 (afa-ast) then stage 2 (afa-act --init-from the best stage 1), choosing '
                            'each best checkpoint on --afa-holdout of the training data; then evaluate on val')
        g.add_argument('--afa-holdout', type=float, default=0.1, metavar='F',
                       help='--afa-two-stage: class-balanced fraction of the training records held out for model '
                            'selection')

    @classmethod
    def claims(cls, args):
        return bool(getattr(args, 'afa_two_stage', False))

    @classmethod
    def foreign_option(cls, flag, dest, args, reg):
        if dest == 'init_from':
            return ('%s is for AFA stage 2 (--reg afa-act); --reg %s takes the source network with --source-params'
                    % (flag, reg))
        return None

    def has_source(self, args):
        return super().has_source(args) or bool(getattr(args, 'init_from', None))

    def resolve(self, args, run):
        """Stage checks (``--init-from`` is stage 2 and replaces the source file;
        ``afa-act`` needs it) and the stage's reference lr / alpha where not given
        (``args.preset_note`` says what was applied)."""
        stray = [f for f in given_flags(args, ['afa_holdout']) if not args.afa_two_stage]
        if stray:
            raise ConfigError('%s: only used with --afa-two-stage' % ', '.join(stray))
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
        elif args.reg == 'afa-act' and not args.afa_two_stage:
            raise ConfigError('--reg afa-act is AFA stage 2: pass --init-from STAGE1.params (the network trained '
                              'with --reg afa-ast; it initialises the target and, without its classifier, is the '
                              'frozen source), or run both stages with --afa-two-stage')
        stage = STAGES[args.reg]
        ref = preset_for(args.model)[stage]
        applied = []
        if args.lr is None:
            args.lr = ref['lr']
            applied.append('lr %g' % ref['lr'])
        if args.afa_alpha is None:
            args.afa_alpha = ref['alpha']
            applied.append('alpha %g' % ref['alpha'])
        typed = (given_flags(args, ['alpha', 'afa_alpha']) or ['--afa-alpha'])[0]
        args.preset_note = 'AFA %s preset (%s reference values) for %s: %s' % (
            stage.upper(), ref['name'], args.model, ', '.join(applied) or 'not applied (--lr and %s given)' % typed)

    def take_over(self, args, run):
        """``--afa-two-stage``: run both stages (:func:`run_two_stage`) and stop (status 0).
        (With ``--print-param-groups`` the run goes on as stage 1's dry run.)"""
        if not args.afa_two_stage or getattr(args, 'print_param_groups', False):
            return None
        run.open_run_dir(args)             # holds the holdout split and both stages
        run_two_stage(args, run.run_stage)
        return 0

    def build(self, args, num_classes, ctx, init, kw, log):
        if getattr(args, 'init_from', None):
            return self.load_stage1(args, num_classes, ctx, init, kw, log)
        return super().build(args, num_classes, ctx, init, kw, log)

    @staticmethod
    def load_stage1(args, num_classes, ctx, init, kw, log):
        """``--init-from``: the target is the stage-1 network (every parameter, classifier
        included, strict key/shape checks) and the frozen source is the same file without
        its classifier (:func:`stage2_source`)."""
        from ..weights import load_params, describe_load
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

    def regularizer(self, args, batch_size):
        from ..registry import REGULARIZERS
        from .. import losses  # noqa: F401  (registers the regularizers)
        return REGULARIZERS.get(args.reg)(alpha=args.afa_alpha, beta=args.afa_beta, model=args.model, seed=args.seed,
                                          input_size=args.input_size)
