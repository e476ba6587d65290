"""AFDS (Wang et al., ICLR 2020), ``--reg afd`` with or without ``--afs``.

* ``--reg afd``: attentive feature distillation, ``CE + lambda * R`` with the learned
  per-channel transferability ``rho`` (:mod:`gluon_transfer.losses.afd`; ``--afd-lambda``,
  the reference's ``--lambda_afd`` as the alias ``--lambda-afd``; ``--afd-norm``,
  ``--afd-predictor``).
* ``--afs`` adds attentive feature selection and runs the AFDS schedule
  (:mod:`gluon_transfer.afds`): :meth:`AFDSMethod.prepare` holds out ``--holdout-fraction``
  of the training records (class-balanced, seeded, files under ``SAVE_DIR/holdout``; training
  uses the rest), :meth:`~AFDSMethod.build` converts the target into the AFS ResNet (a gate
  after every ConvBN of every residual block, bottleneck or basic, identity-initialised, WTA
  density ``--density``),
  :meth:`~AFDSMethod.finish_target` multiplies the gates' learning rate by
  ``--afs-gate-lr-mult``, and :meth:`~AFDSMethod.fit` runs phase 1, the mask update on the
  holdout and phase 2 (the best checkpoint is chosen in phase 2 only), then writes
  ``afds_report.json`` / ``afds_masks.json``. ``--max-iter`` counts both phases.

Every ``--afs`` option has a default only with ``--afs`` (:data:`AFS_DEFAULTS`); given
without it, it is an error naming it. ``--afs`` with another ``--reg`` is an error too:
AFS is the selection half of AFDS.
"""
import argparse
import os

from ..errors import ConfigError
from ..registry import METHODS
from ..options import given_flags
from .base import Method, dataset_preset, finish_shapes, train_records_file

__all__ = ['AFDSMethod', 'AFS_DEFAULTS', 'AFS_ONLY', 'check_afs_model', 'scale_gate_lr', 'run_afds']

# ``--afs`` options that have a default only with --afs (None otherwise).
AFS_DEFAULTS = dict(afs_density=0.9, afs_phase1_density=1.0, afs_gate_lr_mult=0.1, mask_scope='layer',
                    holdout_fraction=0.1, afs_gate_norm='l2', afs_channel_multiple=16, mask_stat='gate',
                    afs_static_only=False)
AFS_ONLY = ('afs_density', 'afs_phase1_epochs', 'afs_phase1_density', 'afs_gate_lr_mult', 'thres_m', 'thres_s',
            'macs_budget', 'mask_scope', 'holdout_fraction', 'afs_gate_norm', 'afs_channel_multiple', 'mask_stat',
            'afs_static_only')


def _afd_norm(text):
    """``--afd-norm``: 'sq' (alias of 'l2sq', the paper's squared distance) or 'l2'."""
    value = {'sq': 'l2sq'}.get(str(text), str(text))
    if value not in ('l2sq', 'l2'):
        raise argparse.ArgumentTypeError("expected sq (= l2sq) or l2, got %r" % text)
    return value


def check_afs_model(model, model_kwargs=None):
    """ConfigError naming ``model`` unless :func:`~gluon_transfer.models.afs_resnet.afs_from_gluoncv`
    converts it: a GluonCV ResNet-v1b of bottleneck or basic blocks, or a GluonCV CIFAR
    ResNet-v1. Builds the network without initialising it (cheap)."""
    from ..models.afs_resnet import check_convertible
    from ..zoo import get_model
    try:
        check_convertible(get_model(model, classes=1, **dict(model_kwargs or {})))
    except ConfigError as err:
        raise ConfigError('--afs needs a GluonCV ResNet-v1b (resnet18/34/50/101_v1b, ...) or CIFAR ResNet-v1 '
                          '(cifar_resnet20_v1, ...); %s does not fit: %s' % (model, err)) from None


def scale_gate_lr(net, mult):
    """Multiply the learning rate of every gate parameter (fc, gamma) by ``mult``."""
    from ..models.afs_resnet import afs_gates
    for _, _, _, gate, _, _ in afs_gates(net):
        if gate is not None:
            for p in (gate.fc.weight, gate.fc.bias, gate.gamma):
                p.lr_mult = p.lr_mult * float(mult)
    return net


def run_afds(engine, args, holdout, log):
    """``train_transfer.py --afs`` training: :func:`~gluon_transfer.afds.afds_schedule`
    (phase 1 at ``--afs-phase1-density``, masks from the holdout, phase 2), then the report:
    the logged table and ``SAVE_DIR/afds_report.json`` / ``afds_masks.json``."""
    from ..afds import afds_report, afds_schedule, format_afds_report, write_afds_files
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
        write_afds_files(args.save_dir, rep, engine.net)
    result['report'] = rep
    return result


@METHODS.register('afds')
class AFDSMethod(Method):
    name = 'afds'
    regs = ('afd',)
    title = 'AFDS (attentive feature distillation and selection; --reg afd, --afs)'
    accepts = ('taps',)
    weights_hint = 'takes --afd-lambda (alias --lambda-afd)'

    @classmethod
    def arguments(cls, g):
        g.add_argument('--afd-lambda', '--lambda-afd', dest='afd_lambda', type=float, default=None, metavar='LAMBDA',
                       help='weight lambda of the distillation term R (default 0.01; --lambda-afd is the AFDS '
                            "reference's name)")
        g.add_argument('--afd-norm', type=_afd_norm, default=None, metavar='{sq,l2}',
                       help='per-channel distance, sq = squared L2 (the paper; default) or l2 (the reproduction\'s '
                            'code)')
        g.add_argument('--afd-predictor', default=None, choices=['entropy', 'joint', 'frozen'],
                       help='how the transferability predictor trains (default entropy; joint = the reproduction, '
                            'collapses to one channel; see gluon_transfer/losses/afd.py)')
        g.add_argument('--afs', action='store_true',
                       help='build the target as the AFS ResNet (a channel gate after every ConvBN of every residual '
                            'block: GluonCV resnet*_v1b, cifar_resnet*_v1) and run '
                            'the AFDS schedule: phase 1, masks from a held-out split of the training data, phase 2')
        g.add_argument('--density', '--afs-density', dest='afs_density', type=float, default=None,
                       help='--afs: winner-take-all density d of the dynamic channels in phase 2 (default 0.9; the '
                            "reference's --ratio)")
        g.add_argument('--afs-phase1-epochs', type=int, default=None,
                       help='--afs: epochs of phase 1 (default: half of all epochs; --max-iter counts both phases)')
        g.add_argument('--afs-phase1-density', type=float, default=None,
                       help='--afs: WTA density in phase 1 (default 1.0: every channel on, the pretrained function '
                            'at step 0; the reproduction trains at --density throughout)')
        g.add_argument('--afs-gate-lr-mult', type=float, default=None,
                       help='--afs: learning-rate multiplier of the gates (fc, gamma), default 0.1')
        g.add_argument('--afs-gate-norm', default=None, choices=['none', 'l2'],
                       help='--afs: gate input L2-normalised per sample (l2, default: scale-invariant gates, no '
                            'float32 overflow on inputs with large activations) or GAP(x) as is (none, the '
                            'reproduction); see gluon_transfer/nn/gates.py. Recorded in the checkpoints; '
                            'tools/export.py reads it from there')
        g.add_argument('--thres-m', type=float, default=None,
                       help='--afs: keep channel c when its mean gate value on the holdout > thres-m (default 0.5, '
                            'unless --macs-budget)')
        g.add_argument('--thres-s', type=float, default=None,
                       help='--afs: channel c stays dynamic when its gate variance on the holdout > thres-s '
                            '(default 0.5)')
        g.add_argument('--macs-budget', type=float, default=None, metavar='F',
                       help='--afs: choose the masks so that the expected MACs are at most F x the baseline, F in '
                            '(0, 1] (0.1 = a 10x reduction); replaces --thres-m/--thres-s')
        g.add_argument('--mask-scope', default=None, choices=['layer', 'global'],
                       help='--afs --macs-budget: rank channels per layer (default) or over all gated channels')
        g.add_argument('--mask-stat', default=None, choices=['gate', 'activation'],
                       help='--afs: what ranks channels for pruning (m) and what --thres-m compares with: the mean '
                            'gate value (gate, the paper; default) or the mean gated activation the next layer '
                            'receives (activation: ranks channels even when the gates stayed near their identity '
                            'start)')
        g.add_argument('--afs-static-only', action='store_const', const=True, default=None,
                       help='--afs: make every kept channel static (s = 0, a learned constant folded into BN): the '
                            'pruned export is a plain narrower ResNet without runtime gates, the fast form on CPUs '
                            '(which compute WTA-skipped channels anyway); the budget then counts static MACs')
        g.add_argument('--afs-channel-multiple', type=int, default=None, metavar='Q',
                       help='--afs: round the channels kept after conv1/conv2 of each bottleneck (conv1 of a basic block) '
                            'up to a multiple of '
                            'Q (default 16: oneDNN CPU kernels work on blocks of 16/8 channels, so the pruned export '
                            'gets faster in step with its MACs; the budget still holds); 1 = no rounding')
        g.add_argument('--holdout-fraction', type=float, default=None, metavar='F',
                       help='--afs: class-balanced fraction of the TRAINING records held out for the mask statistics '
                            '(default 0.1; never the val split); training uses the rest')

    @classmethod
    def foreign_option(cls, flag, dest, args, reg):
        if dest != 'afs':
            return None
        from ..registry import REGULARIZERS
        anchored = reg in REGULARIZERS and getattr(REGULARIZERS.get(reg), 'needs_source_weights', False)
        return ('--afs with --reg %s: %s--afs is the selection half of AFDS: use --reg afd --afs'
                % (reg, 'the AFS gates have no source weights for its anchor, and ' if anchored else ''))

    def __init__(self, reg=None):
        super().__init__(reg)
        self.holdout = None
        self.holdout_note = None

    # ---------------------------------------------------------------- settings
    def resolve(self, args, run):
        """Check the AFDS options and fill the ``--afs`` defaults (:data:`AFS_DEFAULTS`) in
        place; idempotent. Errors are one line naming the flag as typed."""
        from ..nn.gates import check_density
        if not args.afs:
            stray = given_flags(args, AFS_ONLY)
            if stray:
                raise ConfigError('%s: only used with --afs (the AFDS schedule)' % ', '.join(stray))
            return
        if args.resume_params or args.resume_states or args.resume_epoch:
            raise ConfigError('--afs resumes with --resume SAVE_DIR (the checkpoint records the phase), not '
                              '--resume-params/--resume-states/--resume-epoch')
        check_afs_model(args.model, run.model_kwargs)
        for key, value in AFS_DEFAULTS.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)

        def flag(dest):
            return (given_flags(args, [dest]) or ['--' + dest.replace('_', '-')])[0]
        for key in ('afs_density', 'afs_phase1_density'):
            try:
                check_density(getattr(args, key))
            except ConfigError:
                raise ConfigError('%s must be in (0, 1], got %r' % (flag(key), getattr(args, key))) from None
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
            raise ConfigError('--afs-channel-multiple must be >= 1 (1 = no rounding), got %r'
                              % args.afs_channel_multiple)
        if args.afs_phase1_epochs is not None and args.afs_phase1_epochs < 1:
            raise ConfigError('--afs-phase1-epochs must be >= 1, got %r' % args.afs_phase1_epochs)

    def regularizer(self, args, batch_size):
        from ..losses.afd import AFD
        extra = {k: getattr(args, k) for k in ('afd_norm', 'afd_predictor') if getattr(args, k) is not None}
        return AFD(lambda_afd=args.afd_lambda, input_size=args.input_size, taps=args.taps, **extra)

    # ---------------------------------------------------------------- run
    def prepare(self, args, ctx, run):
        """``--afs``: hold out ``--holdout-fraction`` of the training records
        (:func:`~gluon_transfer.afds.split_train_holdout`, files under ``SAVE_DIR/holdout``,
        reused while the training file is unchanged) and point ``args`` at the rest for
        training (``rec_train``) and at the original val split (``rec_val``)."""
        if not args.afs:
            return None
        from ..afds import split_train_holdout
        from ..data.holdout import NEW_SPLIT
        from ..data.datasets import get_preset, resolve_data_dir
        _, rec, idx = train_records_file(args, '--afs')
        if not args.rec_val:
            preset = get_preset(dataset_preset(args.dataset))
            _, _, val = resolve_data_dir(preset, args.data_dir or preset.default_dir)
            args.rec_val = val
        run.open_run_dir(args)             # the holdout split is written there
        split = split_train_holdout(dataset_preset(args.dataset), rec, args.holdout_fraction, seed=args.seed,
                                    cache_dir=os.path.join(args.save_dir, 'holdout'), batch_size=args.batch_size,
                                    input_size=args.input_size, num_workers=args.num_workers, rec_train_idx=idx)
        args.rec_train, args.rec_train_idx = split['train_rec'], split['train_idx']
        self.holdout = split['holdout']
        if split['rebuilt'] not in (None, NEW_SPLIT):
            self.holdout_note = 'AFS holdout split rewritten: %s' % split['rebuilt']
        return None

    def build(self, args, num_classes, ctx, init, kw, log):
        """With ``--afs`` the plain target (source weights, new classifier) is converted
        into the AFS network: gates identity-initialised (the pretrained function at
        ``d = 1``), WTA density ``--density``, gate input ``--afs-gate-norm``."""
        net, source = super().build(args, num_classes, ctx, init, kw, log)
        if args.afs:
            from ..models.afs_resnet import afs_from_gluoncv
            finish_shapes(net, ctx, min(int(args.input_size), 64))
            net = afs_from_gluoncv(net, density=args.afs_density, gate_input_norm=args.afs_gate_norm)
        return net, source

    def finish_target(self, args, net, run, init, ctx, log):
        if args.afs:
            scale_gate_lr(net, args.afs_gate_lr_mult)
            if self.holdout_note:
                log.info('%s', self.holdout_note)
            log.info('AFS target: gates after every ConvBN of every residual block (identity init), density %g '
                     '(phase 1: %g), gate lr x%g; mask statistics on %r', args.afs_density,
                     args.afs_phase1_density, args.afs_gate_lr_mult, self.holdout)
        return net

    def fit(self, engine, args, log, plain_fit):
        if args.afs:
            return run_afds(engine, args, self.holdout, log)
        return plain_fit(engine, args, log)
