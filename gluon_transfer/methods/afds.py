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
  ``--afs-gate-lr-mult`` (default 10), and :meth:`~AFDSMethod.fit` runs phase 1, the mask update on the
  holdout and phase 2 (the best checkpoint is chosen in phase 2 only), then writes
  ``afds_report.json`` / ``afds_masks.json``; ``afds_gate_stats.json`` holds the gate
  statistics on the holdout before phase 1 and at the mask update. ``--max-iter`` counts both phases.

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

__all__ = ['AFDSMethod', 'AFS_DEFAULTS', 'AFS_ONLY', 'AFDS_PRESETS', 'REPRO_TRAIN_AUG', 'check_afs_model',
           'scale_gate_lr', 'run_afds', 'apply_preset', 'preset_schedule']

# ``--afs`` options that have a default only with --afs (None otherwise).
# Measured on the CIFAR-10 5->5 task (docs/afds.md, "Do the gates learn?"): at the network's lr
# the gates move by 1 % in phase 1 (x0.1: 0.1 %), so the masks rank near-ties; at x10 they
# spread by 12 % with the same accuracy. d = 0.9 from step 0 (the reproduction) trains them
# under the WTA competition that the mask statistics measure; ``afs_phase1_density`` None =
# ``--density``.
AFS_DEFAULTS = dict(afs_density=0.9, afs_phase1_density=None, afs_gate_lr_mult=10.0, afs_gate_init='identity',
                    afs_wta_round='ceil', mask_scope='layer', holdout_fraction=0.1, afs_gate_norm='l2',
                    afs_channel_multiple=16, mask_stat='gate', afs_static_only=False, thres_scale='layer',
                    afs_random_masks=False)
AFS_ONLY = ('afs_density', 'afs_phase1_epochs', 'afs_phase1_density', 'afs_gate_lr_mult', 'afs_gate_init',
            'afs_wta_round', 'thres_m', 'thres_s', 'thres_scale', 'macs_budget', 'mask_scope', 'holdout_fraction',
            'afs_gate_norm', 'afs_channel_multiple', 'mask_stat', 'afs_static_only', 'afs_random_masks',
            'afds_preset')

# The reproduction's training augmentation (Resize(256), RandomRotation(45),
# RandomResizedCrop(224), horizontal flip; transfer-methods.md §3.3) as ImageRecordIter
# options over the dataset preset's: rotation by a uniform angle in [-45, 45] degrees about
# the centre (corners filled with 0), then a crop of U(0.08, 1) of the area with aspect
# exp(U(log 3/4, log 4/3)) resized to the input size, then the mirror. ImageRecordIter
# rotates before it crops (checked: with the crop, 19 % of the corners are fill, without it
# 88 %), the reproduction's order; its angles are whole degrees (torchvision: real-valued) and it
# interpolates bilinearly (torchvision's rotation: nearest). The transfer presets' resize to
# 256 (for 224) stays; CIFAR's 32 px images are cropped as they are (a crop of an area
# fraction does not depend on a resize before it).
REPRO_TRAIN_AUG = {'max_rotate_angle': 45, 'fill_value': 0, 'random_resized_crop': True, 'min_random_area': 0.08,
                   'max_random_area': 1.0, 'min_aspect_ratio': 3.0 / 4.0, 'max_aspect_ratio': 4.0 / 3.0,
                   'rand_crop': False, 'pad': 0, 'rand_mirror': True}

# ``--afds-preset NAME``: every value the preset sets, by dest (shared and AFS options); an
# option given on the command line keeps its value. 'schedule' and 'train_aug' are applied
# by :func:`apply_preset` / :func:`preset_schedule`.
AFDS_PRESETS = {
    'repro': dict(
        title='the AFDS student reproduction: batch 48, SGD momentum 0.9, lr 0.01, '
              'each phase int(max_iter * 48 / N_train) epochs, StepLR x0.1 every int(0.67 * epochs)+1 epochs over '
              'both phases, RandomRotation(45) + RandomResizedCrop, WTA keeps round(d C), d = 0.9 from step 0, the '
              'gates at the network\'s lr; gate init and input stay ours (identity, L2-normalised: '
              '--afs-gate-init random --afs-gate-norm none for the reproduction\'s)',
        shared=dict(batch_size=48, optimizer='sgd', lr=0.01, momentum=0.9, lr_mode='step', lr_decay=0.1),
        afs=dict(afs_density=0.9, afs_wta_round='round', afs_gate_lr_mult=1.0),
        phase1_density='density', schedule='repro', train_aug=REPRO_TRAIN_AUG),
}


def apply_preset(args):
    """Fill the values of ``--afds-preset`` (:data:`AFDS_PRESETS`) into ``args`` where the
    option was not given; idempotent. Returns a one-line note of what it set and kept (None
    without a preset). The schedule (epochs per phase, LR steps) needs the size of the
    training split: :func:`preset_schedule`, after the holdout split."""
    from ..options import given
    name = getattr(args, 'afds_preset', None)
    if not name:
        return None
    preset = AFDS_PRESETS[name]
    seen = given(args)
    kept, applied = [], []
    for key, value in list(preset['shared'].items()) + list(preset['afs'].items()):
        if key in seen:
            kept.append(seen[key][0])
        else:
            setattr(args, key, value)
            applied.append('%s %s' % (key, value))
    if preset.get('phase1_density') == 'density':
        if 'afs_phase1_density' in seen:
            kept.append(seen['afs_phase1_density'][0])
        else:
            args.afs_phase1_density = args.afs_density
    if preset.get('train_aug'):
        bad = [flag for flag, on in (('--randaugment', getattr(args, 'randaugment', None)),
                                     ('--pad-mode ' + str(getattr(args, 'pad_mode', 'constant')),
                                      getattr(args, 'pad_mode', 'constant') != 'constant'),
                                     ('--data-pipeline python', getattr(args, 'data_pipeline', 'auto') == 'python'))
               if on]
        if bad:
            raise ConfigError('--afds-preset %s trains with its rotation + random resized crop, which only the '
                              'ImageRecordIter pipeline does: drop %s' % (name, ', '.join(bad)))
        args.train_aug = dict(preset['train_aug'])
    return 'AFDS preset %r (%s)%s' % (name, preset['title'], '; kept as given: ' + ', '.join(kept) if kept else '')


def preset_schedule(args, num_train, num_devices=1):
    """The reproduction's schedule (``train.py``) for ``--afds-preset repro``, in place:
    ``E = max(1, int(max_iter * B / num_train))`` epochs per phase (``max_iter``: ``--max-iter``,
    default 4500, the reproduction's ``--max_iter``; ``B`` the global batch; ``num_train`` the
    training records after the holdout split), ``--num-epochs 2E`` and ``--afs-phase1-epochs E``,
    and the StepLR of one scheduler over both phases: step size ``S = int(0.67 E) + 1``, x0.1 at
    epochs ``S, 2S, ... < 2E`` (twice for ``E >= 4``). Options given on the command line
    (``--num-epochs``, ``--afs-phase1-epochs``, ``--lr-mode``, ``--lr-decay-epoch``,
    ``--lr-decay-period``) keep their values. Returns ``(E, decay epochs)``."""
    from .base import DEFAULT_ITERS
    from ..options import given
    seen = given(args)
    if not getattr(args, 'afds_preset', None):
        return None
    if 'num_epochs' in seen and args.num_epochs > 0:
        total = int(args.num_epochs)
        e = total // 2 if args.afs_phase1_epochs is None else int(args.afs_phase1_epochs)
    else:
        per_phase_iters = DEFAULT_ITERS if args.max_iter is None else int(args.max_iter)
        e = max(1, int(per_phase_iters * args.batch_size * num_devices / float(num_train)))
        total = 2 * e
        args.num_epochs = total
        args.max_iter = 0                   # the epochs decide (resolve_schedule)
    if 'afs_phase1_epochs' not in seen:
        args.afs_phase1_epochs = e
    steps = ()
    if args.lr_mode == 'step' and 'lr_decay_epoch' not in seen and 'lr_decay_period' not in seen:
        size = int(0.67 * e) + 1
        steps = tuple(k * size for k in range(1, total // size + 1) if k * size < total)
        args.lr_decay_epoch = steps
        args.lr_decay_period = 0
    return e, steps


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
                   static_only=args.afs_static_only, thres_scale=args.thres_scale, random=args.afs_random_masks,
                   random_seed=args.seed)
    # what rebuilding the network from a checkpoint needs besides its weights (bench_afds.py --exported)
    engine.run_info.setdefault('afds', {}).update(gate_input_norm=args.afs_gate_norm, wta_round=args.afs_wta_round)
    from ..afds.report import GATE_STATS_FILE
    stats_path = os.path.join(args.save_dir, GATE_STATS_FILE) if engine.is_writer else None
    info = dict(model=args.model, lr=args.lr, batch_size=args.batch_size, density=args.afs_density,
                phase1_density=args.afs_phase1_density, gate_lr_mult=args.afs_gate_lr_mult,
                gate_init=args.afs_gate_init, gate_norm=args.afs_gate_norm, wta_round=args.afs_wta_round,
                random_masks=args.afs_random_masks, preset=args.afds_preset, seed=args.seed)
    result = afds_schedule(engine, holdout, phase1_epochs=args.afs_phase1_epochs,
                           phase1_density=args.afs_phase1_density, resume=args.resume, input_shape=shape,
                           log=lambda msg: log.info('%s', msg), stats_path=stats_path, stats_info=info, **options)
    evaluation = None
    if engine.history and 'val_top1' in engine.history[-1]:
        last = engine.history[-1]
        evaluation = {'top1': last['val_top1'], 'mean_class_acc': last.get('val_mean_class_acc', float('nan'))}
    rep = afds_report(engine.net, shape, evaluation)
    rep['selection'] = engine.run_info.get('afds', {}).get('selection')
    rep['phase1_epochs'] = engine.run_info.get('afds', {}).get('phase1_epochs')
    rep['density'] = args.afs_density
    rep['gate_input_norm'] = args.afs_gate_norm
    rep['wta_round'] = args.afs_wta_round
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
                       help='--afs: winner-take-all density d of the dynamic channels (default 0.9, both phases; the '
                            "reference's --ratio)")
        g.add_argument('--afs-phase1-epochs', type=int, default=None,
                       help='--afs: epochs of phase 1 (default: half of all epochs; --max-iter counts both phases)')
        g.add_argument('--afs-phase1-density', type=float, default=None,
                       help='--afs: WTA density in phase 1 (default: --density from the first step, as the '
                            'reproduction; 1.0 = every channel on, the gates then learn without the competition the '
                            'mask statistics measure)')
        g.add_argument('--afs-gate-lr-mult', type=float, default=None,
                       help='--afs: learning-rate multiplier of the gates (fc, gamma), default 10: at x1 they move '
                            'by ~1 %% in phase 1 and the masks rank near-ties (docs/afds.md); the reproduction: 1')
        g.add_argument('--afs-gate-init', default=None, choices=['identity', 'random'],
                       help='--afs: gate initialisation: identity (W = 0, b = 1, gamma = 1: the pretrained function at '
                            'd = 1; default) or random (the reproduction: PyTorch Linear init, gamma ~ U[0, 1)); see '
                            'gluon_transfer/nn/gates.py')
        g.add_argument('--afs-wta-round', default=None, choices=['ceil', 'round'],
                       help='--afs: how many dynamic channels WTA keeps per sample: ceil(d n - 1e-3) (default: at least '
                            'one) or round(d n) (the reproduction)')
        g.add_argument('--afs-gate-norm', default=None, choices=['none', 'l2'],
                       help='--afs: gate input L2-normalised per sample (l2, default: scale-invariant gates, no '
                            'float32 overflow on inputs with large activations) or GAP(x) as is (none, the '
                            'reproduction); see gluon_transfer/nn/gates.py. Recorded in the checkpoints; '
                            'tools/export.py reads it from there')
        g.add_argument('--thres-m', type=float, default=None,
                       help='--afs: keep channel c when its mean gate value on the holdout (or --mask-stat) > thres-m '
                            'x its layer\'s average (default 0.5, unless --macs-budget; --thres-scale)')
        g.add_argument('--thres-s', type=float, default=None,
                       help='--afs: channel c stays dynamic when its gate variance on the holdout > thres-s x its '
                            'layer\'s average variance (default 0.5); otherwise it becomes static')
        g.add_argument('--thres-scale', default=None, choices=['layer', 'absolute'],
                       help='--afs: --thres-m/--thres-s are fractions of the layer\'s average (layer, default: the '
                            'same rule for any scale of the statistic) or the numbers themselves (absolute, the '
                            'reproduction)')
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
                       help='--afs: round the channels kept after conv1/conv2 of each bottleneck (conv1 of a basic '
                            'block) up to a multiple of Q (default 16: oneDNN CPU kernels work on blocks of 16/8 channels, so the pruned export '
                            'gets faster in step with its MACs; the budget still holds); 1 = no rounding')
        g.add_argument('--afs-random-masks', action='store_const', const=True, default=None,
                       help='--afs: the random-mask control: at the mask update, replace the chosen masks by masks with '
                            'the same numbers of kept and dynamic channels per layer (the same MACs) at random '
                            'positions, seeded by --seed; everything else as with the chosen masks')
        g.add_argument('--afds-preset', default=None, choices=sorted(AFDS_PRESETS),
                       help='--afs: set every value of a reference setting at once; repro = the AFDS reproduction: '
                            'batch 48, SGD momentum 0.9, lr 0.01, --max-iter (default 4500) counted as the '
                            'reproduction\'s (each phase trains int(max_iter x 48 / N_train) epochs), StepLR x0.1 every '
                            'int(0.67 x epochs)+1 epochs over both phases, RandomRotation(45) + RandomResizedCrop, '
                            'WTA round(d C), d = 0.9 from step 0, the gates at the network\'s lr (their init and '
                            'input stay identity and l2; see docs/afds.md). Options given explicitly win')
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
        note = apply_preset(args)
        if note:
            args.preset_note = note
        for key, value in AFS_DEFAULTS.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        if args.afs_phase1_density is None:
            args.afs_phase1_density = args.afs_density          # d from the first step

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
        sched = preset_schedule(args, split['num_train'], len(ctx))
        if sched is not None:
            self.holdout_note = ((self.holdout_note + '; ') if self.holdout_note else '') + (
                'preset schedule: %d epochs per phase on %d training records, lr x%g at epochs %s'
                % (sched[0], split['num_train'], args.lr_decay, ', '.join(map(str, sched[1])) or '-'))
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
            net = afs_from_gluoncv(net, density=args.afs_density, gate_input_norm=args.afs_gate_norm,
                                   gate_init=args.afs_gate_init, wta_round=args.afs_wta_round)
        return net, source

    def finish_target(self, args, net, run, init, ctx, log):
        if args.afs:
            scale_gate_lr(net, args.afs_gate_lr_mult)
            if self.holdout_note:
                log.info('%s', self.holdout_note)
            log.info('AFS target: gates after every ConvBN of every residual block (%s init, gate input %s), '
                     'density %g (phase 1: %g), gate lr x%g; mask statistics on %r', args.afs_gate_init,
                     args.afs_gate_norm, args.afs_density, args.afs_phase1_density, args.afs_gate_lr_mult,
                     self.holdout)
        return net

    def fit(self, engine, args, log, plain_fit):
        if args.afs:
            return run_afds(engine, args, self.holdout, log)
        return plain_fit(engine, args, log)
