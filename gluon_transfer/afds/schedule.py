"""AFDS's schedule (the reproduction's ``train.py``, fixed): phase 1 (fine-tune with the
gates on and every mask 1), the mask update on the held-out training split (statistics ->
selection -> apply), phase 2 (fine-tune with the masks fixed), through one
:class:`~gluon_transfer.engine.trainer.Engine` (same trainer, momentum and LR schedule),
resumable in either phase (the procedure: :mod:`gluon_transfer.afds`)."""
from ..errors import CheckpointError, ConfigError
from .selection import apply_masks, random_masks, select_masks, selection_summary
from .report import gate_movement, write_gate_stats
from .statistics import TrainHoldout, collect_gate_statistics, require_holdout

__all__ = ['update_masks', 'afds_schedule', 'TrainHoldout']


def update_masks(net, holdout, thres_m=None, thres_s=None, macs_budget=None, input_shape=(1, 3, 224, 224),
                 scope='layer', budget_on='expected', gamma_from_mean=True, min_channels=1, ctx=None,
                 max_batches=None, log=None, channel_multiple=1, mask_stat='gate', static_only=False,
                 thres_scale='layer', random=False, random_seed=0):
    """Statistics on ``holdout`` (a :class:`TrainHoldout`) -> :func:`select_masks` ->
    :func:`apply_masks`. Returns the selection dict (with ``stats``).

    ``random=True``: the random-mask control. The masks AFS chose are replaced by
    :func:`~gluon_transfer.afds.selection.random_masks` (seeded with ``random_seed``): per layer
    the same numbers of kept and dynamic channels at random positions, so the same static and
    expected MACs per layer; everything else (statistics, the ``gamma`` of new static
    channels from their mean gate value, phase 2) is unchanged. The selection keeps the AFS
    masks under ``afs_masks``."""
    stats = collect_gate_statistics(net, holdout, ctx=ctx, max_batches=max_batches)
    sel = select_masks(stats, thres_m, thres_s, macs_budget, net, input_shape, scope, budget_on, min_channels,
                       channel_multiple=channel_multiple, mask_stat=mask_stat, static_only=static_only,
                       thres_scale=thres_scale)
    sel['random_masks'] = bool(random)
    if random:
        from ..macs import afs_macs
        sel['afs_masks'] = sel['masks']
        sel['masks'] = random_masks(sel['masks'], random_seed)
        sel['random_seed'] = int(random_seed)
        sel['macs'] = afs_macs(net, input_shape, masks=sel['masks'])
    apply_masks(net, sel['masks'], stats, gamma_from_mean)
    sel['stats'] = stats
    if log:
        mc = sel['macs']
        log('AFS masks from %r: thres_m=%s thres_s=%s%s%s; MACs baseline %.4gG, static %.4gG (%.2fx), expected '
            '%.4gG (%.2fx)' % (holdout, sel['thres_m'], sel['thres_s'],
                               '' if sel['quantile'] is None else ' (quantile %.4f)' % sel['quantile'],
                               '; replaced by random masks with the same counts per layer (seed %d)' % random_seed
                               if random else '',
                               mc['baseline'] / 1e9, mc['static'] / 1e9, 1 / mc['static_ratio'],
                               mc['expected'] / 1e9, 1 / mc['expected_ratio']))
    return sel


def afds_schedule(engine, holdout, phase1_epochs=None, phase1_density=None, resume=None, input_shape=None,
                  log=None, stats_path=None, stats_info=None, **mask_options):
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

    The best checkpoint is chosen within phase 2 only: phase 1 runs with
    ``engine.track_best = False`` and the mask update calls ``engine.restart_best()``, so
    the ``best`` file is always a network with its masks (never the unpruned phase-1
    network, which ``tools/export.py --prune`` could not shrink).

    ``stats_path``: a JSON file (the run's ``afds_gate_stats.json``) that receives the gate
    statistics on the holdout before phase 1 (``'start'``, fresh runs only) and at the mask
    update (``'mask_update'``), with ``stats_info`` (run settings) beside them
    (:func:`~gluon_transfer.afds.report.write_gate_stats`): how far the gates moved.

    Returns ``{'phase1': history, 'selection': dict or None, 'phase2': history}``.
    """
    from ..models.afs_resnet import set_density
    require_holdout(holdout)
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
    start_stats = None
    if stats_path and not resume:
        # the gates as phase 1 starts, at the density of the mask update (comparable with it)
        start_stats = collect_gate_statistics(net, holdout)
        write_gate_stats(stats_path, 'start', start_stats, stats_info)
    if phase1_density is not None:
        set_density(net, phase1_density)
    saved_max = engine.cfg.max_iters
    engine.cfg.max_iters = e1 * engine.iters_per_epoch
    engine.track_best = False           # the phase-1 network has no masks: never the best
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
        if stats_path:
            record = write_gate_stats(stats_path, 'mask_update', selection['stats'], stats_info)
            moved = gate_movement(record.get('start'), record['mask_update'])['median']
            selection['movement'] = moved
            say('AFS gates at the mask update (medians over layers): %s'
                % ', '.join('%s %.4g' % kv for kv in sorted(moved.items())))
        state.update(phase=2, selection=selection_summary(selection, holdout, mask_options))
        engine.restart_best()
    else:
        say('resumed after the mask update (epoch %d > %d): masks come from the checkpoint' % (engine.start_epoch, e1))
        engine.track_best = True        # the checkpoint's best_top1 is phase 2's
    engine.start_epoch = max(engine.start_epoch, e1)
    phase2 = list(engine.fit())[len(phase1):]
    return {'phase1': phase1, 'selection': selection, 'phase2': phase2}


def _checked_resume_state(resume, phase1_epochs):
    """The ``afds`` record of the checkpoint ``resume`` points to, checked against this run."""
    from ..engine.checkpoint import resolve_resume
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

