"""The one training loop shared by train_cifar.py, train_imagenet.py and train_transfer.py.

``Engine(net, task, ctx, cfg, train, val, num_classes, ...).fit()`` does, per iteration:
set the scheduled learning rate, optionally mix the batch (mixup / label smoothing),
``split_and_load`` it over the context list, run ``task.loss`` on every slice inside
``autograd.record()``, back-propagate, call ``task.after_backward(net)`` (a hook for tasks that
add gradients of their own) and ``trainer.step(global_batch)``. Per epoch it appends a JSON
line to the metrics log; every ``cfg.val_interval`` epochs (``--val-interval``, default 1)
and at the last epoch of a ``fit`` (its last scheduled epoch, or the one where ``max_iters``
is reached) it also evaluates (top-1, top-5, mean per-class accuracy), updates the best
checkpoint and writes an atomic checkpoint. Only evaluated epochs are checkpointed, so a
kill loses at most ``val_interval`` epochs and a resume starts from an evaluated epoch; the
metrics lines of the other epochs hold the training statistics only (no ``val_*`` keys).
Scripts differ only in presets and tasks.

Multi-device is a context list (gradients are summed over devices by the kvstore and
divided by the global batch); distributed is a kvstore name or a ``dist_sync`` kvstore
(gradients are summed over workers too, so the step divides by ``batch * num_workers``;
all workers run the same number of iterations per epoch; only rank 0 writes checkpoints
and the metrics log; see ``engine/distributed.py``; BatchNorm running statistics are
averaged over devices and workers at the end of every epoch, before evaluation); precision is ``cfg.dtype``, with an
optional loss scaler (``cfg.amp_loss_scale``; its state is checkpointed; see
``engine/precision.py``).

``cfg.reset_momentum_at_drops`` (``--reset-momentum``; SGD/NAG with the step schedule) zeroes
the momentum buffers right before the update of each iteration where the step schedule
lowers the LR, as the attention-transfer reference does by re-creating its optimizer.

The loss is checked without a per-iteration device sync: each iteration's loss stays
on the device and the window of ``log_interval`` losses is read at once. A NaN/inf stops
training with the iteration it first appeared in. At the end of an epoch, before anything
is written, the validation loss and every parameter (network, BN statistics, trainable loss
modules) are checked too, which catches a divergence in the epoch's last updates: a
non-finite network is never saved, and the previous epoch's checkpoint and ``best.params``
stay as they were (:class:`TrainingDiverged`).

Resume (``fit(resume=DIR)``) refuses a configuration whose LR schedule differs from the
checkpoint's (``--num-epochs``, ``--lr``, ``--lr-mode``, decay and warm-up settings, the
number of iterations per epoch), naming both values, unless ``cfg.allow_schedule_change``
(``--allow-schedule-change``), which continues with the new schedule at the checkpoint's
global step and logs the change as a warning. ``max_iters`` is not part of the schedule: a
run stopped with ``--max-iter`` continues without it, from the iteration where it stopped
(an epoch stopped part-way is continued, not skipped). A resume also repairs a missing
``best.params`` and trims ``metrics.jsonl`` to the checkpoint's epoch (see
``engine/checkpoint.py``).
"""
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field, fields

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from ..errors import ConfigError, CheckpointError, TrainingDiverged
from ..metrics import ClassificationMeter
from ..weights import load_params
from . import distributed, precision
from .checkpoint import jsonable, load_blocks, repair_best, resolve_resume, trim_metrics
from .schedule import LRSchedule

__all__ = ['FitConfig', 'Engine', 'seed_epoch']

OPTIMIZERS = ('sgd', 'nag', 'adam')


@dataclass
class FitConfig:
    num_epochs: int = 1
    optimizer: str = 'sgd'
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 1e-4
    lr_mode: str = 'step'
    lr_decay: float = 0.1
    lr_decay_epochs: tuple = ()
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    target_lr: float = 0.0
    poly_power: float = 2.0
    no_wd: bool = False
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0          # 0 switches mixup off
    mixup_off_epoch: int = 0          # no mixing in the last N epochs
    dtype: str = 'float32'
    kvstore: str = 'device'
    mode: str = 'hybrid'              # hybrid | imperative
    log_interval: int = 50
    seed: int = 0
    save_frequency: int = 0           # keep every N-th epoch's checkpoint (0: latest only)
    val_interval: int = 1             # evaluate + checkpoint every N epochs and at the last one
    max_iters: int = 0                # stop after this many iterations (0: num_epochs)
    reset_momentum_at_drops: bool = False   # zero SGD momentum when the step schedule drops the LR
    amp_loss_scale: str = 'auto'      # auto | none | static | dynamic (see engine/precision.py)
    amp_init_scale: float = precision.DEFAULT_INIT_SCALE
    amp_scale_window: int = precision.DEFAULT_SCALE_WINDOW
    allow_schedule_change: bool = False   # resume with another schedule than the checkpoint's
    extra: dict = field(default_factory=dict)


# FitConfig fields that define the LR schedule, with the flag that sets each: a resume
# must use the checkpoint's values (or cfg.allow_schedule_change).
SCHEDULE_FIELDS = (('num_epochs', '--num-epochs'), ('lr', '--lr'), ('lr_mode', '--lr-mode'),
                   ('lr_decay', '--lr-decay'), ('lr_decay_epochs', '--lr-decay-epoch'),
                   ('warmup_epochs', '--warmup-epochs'), ('warmup_lr', '--warmup-lr'), ('target_lr', 'target_lr'),
                   ('poly_power', 'poly_power'))


def check_fit_config(cfg):
    """Reject values no schedule can run (named by their flags)."""
    if int(cfg.num_epochs) < 1:
        raise ConfigError('--num-epochs must be >= 1, got %r' % cfg.num_epochs)
    if int(cfg.max_iters or 0) < 0:
        raise ConfigError('--max-iter must be >= 0 (0: all epochs), got %r' % cfg.max_iters)
    if int(cfg.val_interval) < 1:
        raise ConfigError('--val-interval must be >= 1 (epochs between evaluations), got %r' % cfg.val_interval)
    if not np.isfinite(cfg.lr) or cfg.lr < 0:   # 0 is allowed here (gradient checks); the scripts need > 0
        raise ConfigError('--lr must be a finite number >= 0, got %r' % cfg.lr)


def seed_epoch(seed, epoch):
    """Seed Python, numpy and MXNet (all devices) from ``(seed, epoch)``: the only source
    of randomness of an epoch, which makes resume at an epoch boundary exact."""
    s = (int(seed) * 1000003 + int(epoch) * 7919) % (2 ** 31)
    random.seed(s)
    np.random.seed(s)
    mx.random.seed(s)
    return s


def _to_float(x):
    return float(x.astype('float32').asscalar()) if hasattr(x, 'asscalar') else float(x)


class Engine:
    def __init__(self, net, task, ctx, cfg, train, val=None, num_classes=None, checkpoint=None,
                 logger=None, metrics_path=None, run_info=None):
        self.net = net
        self.task = task
        self.ctx = list(ctx)
        self.cfg = cfg
        self.train_data = train
        self.val_data = val
        self.num_classes = num_classes
        self.ckpt = checkpoint
        self.log = logger or logging.getLogger('gluon_transfer')
        self.metrics_path = metrics_path
        self.run_info = dict(run_info or {})
        check_fit_config(cfg)
        if cfg.optimizer not in OPTIMIZERS:
            raise ConfigError('unknown --optimizer %r; valid: %s' % (cfg.optimizer, ', '.join(OPTIMIZERS)))
        if cfg.mode not in ('hybrid', 'imperative'):
            raise ConfigError("--mode must be 'hybrid' or 'imperative', got %r" % cfg.mode)
        precision.check_precision(cfg.dtype, self.ctx)
        self.scaler = precision.make_loss_scaler(cfg.amp_loss_scale, cfg.dtype, cfg.amp_init_scale,
                                                 cfg.amp_scale_window)
        self.kv, self.rank, self.num_workers = self._make_kvstore(cfg.kvstore)
        # Iterations per epoch: this worker's shard, equal on all workers of a dist job.
        self.iters_per_epoch = len(train) if train is not None else 0
        if train is not None and distributed.is_distributed(self.kv):
            self.iters_per_epoch = distributed.agree_epoch_length(self.kv, len(train), train.batch_size)
        self.schedule = None if train is None else LRSchedule(
            cfg.lr_mode, cfg.lr, self.iters_per_epoch, cfg.num_epochs, cfg.warmup_epochs, cfg.warmup_lr,
            cfg.lr_decay, cfg.lr_decay_epochs, cfg.target_lr, cfg.poly_power)
        self.global_step = 0
        self.start_epoch = 0
        self.skip_iters = 0       # iterations of start_epoch already trained (a resume mid-epoch)
        self.saved_epoch = 0        # epochs completed at the latest checkpoint this run can resume from
        self.best_top1 = -1.0
        self.best_epoch = None
        # False: no epoch may become the best checkpoint (see restart_best)
        self.track_best = True
        self.history = []
        self.lr_trace = []          # the LR of every iteration run by this engine
        self.trainer = None
        self._dist_init_pending = distributed.is_distributed(self.kv)
        self._drop_iters = frozenset()
        if cfg.reset_momentum_at_drops:
            if cfg.optimizer not in ('sgd', 'nag') or cfg.lr_mode != 'step':
                raise ConfigError('--reset-momentum needs --optimizer sgd or nag and --lr-mode step (got %s, %s)'
                                  % (cfg.optimizer, cfg.lr_mode))
            if self.schedule is not None:
                self._drop_iters = frozenset(d for d in self.schedule.decay_iters if d > 0)
        self._mixup = None
        if cfg.mixup_alpha > 0:
            from ..data.mixup import MixupSchedule
            self._mixup = MixupSchedule(cfg.mixup_alpha, cfg.mixup_off_epoch, cfg.num_epochs)

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _make_kvstore(kv):
        """A kvstore name or an existing ``mx.kv.KVStore`` -> (kvstore, rank, num_workers)."""
        return distributed.create_kvstore(kv)

    @property
    def is_writer(self):
        return self.rank == 0

    def _build_trainer(self):
        cfg = self.cfg
        precision.prepare_net(self.net, cfg.dtype)
        self.task.setup(self.net, self.ctx)
        if cfg.mode == 'hybrid':
            self.net.hybridize(static_alloc=True, static_shape=True)
        params = gluon.ParameterDict()
        params.update(self.net.collect_params())
        for block in self.task.blocks().values():
            params.update(block.collect_params())
        if cfg.no_wd:
            # GluonCV's --no-wd: no weight decay on BN scale/shift and biases.
            for name, p in params.items():
                if name.endswith(('_beta', '_gamma', '_bias')):
                    p.wd_mult = 0.0
        opt = {'learning_rate': self.schedule(0), 'wd': cfg.wd}
        if cfg.optimizer in ('sgd', 'nag'):
            opt['momentum'] = cfg.momentum
        opt.update(precision.optimizer_kwargs(cfg.dtype))
        # Updates run on the workers (update_on_kvstore=False) so the per-iteration LR
        # schedule applies everywhere; with dist_sync the kvstore then only sums gradients.
        # (Asynchronous kvstores need server-side updates and are refused by create_kvstore.)
        self.trainer = gluon.Trainer(params, cfg.optimizer, opt, kvstore=self.kv, update_on_kvstore=False)

    # ------------------------------------------------------------------ resume
    def resume(self, path):
        """Continue from a save dir or checkpoint ``.json`` (exact: see checkpoint.py)."""
        meta, d = resolve_resume(path)
        model = self.run_info.get('model')
        if model and meta.get('model') and meta['model'] != model:
            raise CheckpointError('cannot resume: %s was saved by model %r, not %r' % (path, meta['model'], model))
        files = meta['files']
        load_params(self.net, os.path.join(d, files['params']), ctx=self.ctx)
        self.trainer.load_states(os.path.join(d, files['states']))
        if 'extra' in files:
            load_blocks(self.task.blocks(), os.path.join(d, files['extra']))
        if self.scaler is not None and 'loss_scaler' in meta:
            self.scaler.load_state_dict(meta['loss_scaler'])
        elif self.scaler is not None:
            self.log.info('%s has no loss-scaler state (saved without loss scaling): starting at scale %g',
                          path, self.scaler.scale)
        self.start_epoch = int(meta['epoch'])
        self.saved_epoch = self.start_epoch
        self.global_step = int(meta['global_step'])
        self.best_top1 = float(meta.get('best_top1', -1.0))
        self.best_epoch = meta.get('best_epoch')
        if self.start_epoch > self.cfg.num_epochs:
            raise CheckpointError('cannot resume: checkpoint is at epoch %d but --num-epochs is %d'
                                  % (self.start_epoch, self.cfg.num_epochs))
        self._check_schedule(path, meta)
        self._continue_partial_epoch(path, meta)
        if self.is_writer and self.ckpt is not None:
            if repair_best(d, meta, self.ckpt.prefix, dst_dir=self.ckpt.save_dir, log=self.log) == 'lost':
                self.best_top1, self.best_epoch = -1.0, None
        if self.is_writer and self.metrics_path:
            dropped = trim_metrics(self.metrics_path, self.start_epoch, source=os.path.join(d, 'metrics.jsonl'))
            if dropped:
                self.log.info('%s: dropped %d line(s) past epoch %d (epochs trained again now)',
                              self.metrics_path, dropped, self.start_epoch)
        self.log.info('resumed from %s: %d epochs done, step %d', path, self.start_epoch, self.global_step)

    def _continue_partial_epoch(self, path, meta):
        """A checkpoint written when ``max_iters`` stopped an epoch part-way (``--max-iter``
        not a multiple of the epoch) holds ``k`` of that epoch's iterations. If this ``fit``
        trains further, the epoch is continued rather than skipped: ``start_epoch`` goes back
        to it and its first ``k`` batches are drawn from the loader (the same batches, the same
        augmentation and mixup draws) but not trained on (``self.skip_iters``), so the result
        equals an uninterrupted run. Its metrics line is then rewritten for the iterations
        trained after the resume (``first_iteration``). Not done when the number of iterations
        per epoch changed (``--allow-schedule-change``): the next epoch starts, as before."""
        ipe = self.iters_per_epoch
        saved_ipe = meta.get('iters_per_epoch')
        epoch = self.start_epoch
        if not epoch or not ipe or saved_ipe is None or int(saved_ipe) != ipe:
            return
        done = self.global_step - (epoch - 1) * ipe
        if 0 < done < ipe and self.global_step < self.total_iters():
            self.start_epoch, self.skip_iters = epoch - 1, done
            self.log.info('%s: epoch %d stopped after %d of its %d iterations (--max-iter): continuing it at '
                          'iteration %d', path, epoch, done, ipe, done + 1)

    def _check_schedule(self, path, meta):
        """Refuse (or, with ``cfg.allow_schedule_change``, warn about) a resume whose LR
        schedule differs from the one the checkpoint was trained with."""
        old = meta.get('config') or {}
        changes = []
        for key, flag in SCHEDULE_FIELDS:
            if key in old and _differs(old[key], jsonable(getattr(self.cfg, key))):
                changes.append('%s %s (checkpoint) vs %s (now)' % (flag, _fmt(old[key]), _fmt(getattr(self.cfg, key))))
        ipe = meta.get('iters_per_epoch')
        if ipe is not None and self.iters_per_epoch and int(ipe) != self.iters_per_epoch:
            changes.append('%d iterations per epoch (checkpoint) vs %d (now; --batch-size, devices or the training '
                           'set changed)' % (int(ipe), self.iters_per_epoch))
        if not changes:
            return
        if not self.cfg.allow_schedule_change:
            raise CheckpointError('cannot resume from %s with another schedule: %s; resume with the checkpoint\'s '
                                  'values, or add --allow-schedule-change to continue with the new schedule from '
                                  'step %d' % (path, '; '.join(changes), int(meta['global_step'])))
        self.log.warning('WARNING: --allow-schedule-change: resuming %s with a changed schedule (%s); the LR '
                         'continues from step %d on the new schedule, the result is not that of either run',
                         path, '; '.join(changes), int(meta['global_step']))

    def restart_best(self):
        """Choose the best checkpoint afresh from the next epoch on (``best_top1`` back to
        -1, ``track_best`` on): for a method whose earlier phase trained another form of the
        network (AFDS phase 1, before the masks exist, runs with ``track_best = False``)."""
        self.track_best = True
        self.best_top1 = -1.0
        self.best_epoch = None

    def resume_files(self, params=None, states=None, epoch=0):
        """GluonCV-style resume (``--resume-params/--resume-states/--resume-epoch``)."""
        if params:
            load_params(self.net, params, ctx=self.ctx)
        if states:
            if not os.path.isfile(states):
                raise CheckpointError('trainer states file not found: %s' % states)
            self.trainer.load_states(states)
        self.start_epoch = int(epoch)
        self.global_step = self.start_epoch * self.iters_per_epoch

    # ------------------------------------------------------------------ loop
    def fit(self, resume=None, resume_params=None, resume_states=None, resume_epoch=0):
        if self.trainer is None:
            self._build_trainer()
        if resume:
            self.resume(resume)
        elif resume_params or resume_states or resume_epoch:
            self.resume_files(resume_params, resume_states, resume_epoch)
        cfg = self.cfg
        total_iters = self.total_iters()
        for epoch in range(self.start_epoch, cfg.num_epochs):
            if self.global_step >= total_iters:
                break
            stats = self.train_epoch(epoch, total_iters)
            self._sync_running_stats()
            save = self.is_evaluation_epoch(epoch, total_iters)
            if save and self.val_data is not None:
                stats.update(('val_' + k, v) for k, v in self.evaluate(self.val_data).items())
            self._end_epoch(epoch, stats, save=save)
        return self.history

    def total_iters(self):
        """Iterations this ``fit`` trains up to (global step): ``max_iters``, else every epoch's."""
        return self.cfg.max_iters or self.cfg.num_epochs * self.iters_per_epoch

    def is_evaluation_epoch(self, epoch, total_iters):
        """Whether the (0-based) ``epoch`` just trained is evaluated and checkpointed: every
        ``cfg.val_interval``-th epoch (epochs ``N, 2N, ...``, counted from the start of
        training, so a resumed run evaluates the same epochs) and the last epoch of this
        ``fit`` -- the last scheduled one, or the one that reached ``total_iters``
        (``max_iters``; AFDS ends its phase 1 this way)."""
        n = epoch + 1
        return n % max(int(self.cfg.val_interval), 1) == 0 or n >= self.cfg.num_epochs or \
            self.global_step >= total_iters

    def _mix(self, epoch, data, label, rng):
        """Mixup (while active) and/or label smoothing; otherwise the hard labels."""
        cfg = self.cfg
        if self._mixup is None and cfg.label_smoothing <= 0:
            return data, label
        from ..data import mixup as mixmod
        lam = self._mixup.lam(epoch, rng) if self._mixup is not None else 1.0
        if lam < 1.0:
            return mixmod.mixup_batch(data, label, lam, self.num_classes, cfg.label_smoothing)
        if cfg.label_smoothing > 0:
            return data, mixmod.smooth_labels(label, self.num_classes, cfg.label_smoothing)
        return data, label

    def train_epoch(self, epoch, total_iters):
        cfg = self.cfg
        seed = seed_epoch(cfg.seed, epoch)
        rng = np.random.RandomState(seed + 1)
        self.train_data.set_epoch(epoch)
        in_dtype = precision.input_dtype(cfg.dtype)
        c0 = self.ctx[0]
        n_batches = self.iters_per_epoch
        loss_sum = mx.nd.zeros((1,), ctx=c0)
        correct = mx.nd.zeros((1,), ctx=c0)
        term_sums = {}
        window = []
        seen = 0
        t0 = tic = time.time()
        lr = self.schedule(self.global_step)
        iters_done = 0
        skip, self.skip_iters = self.skip_iters, 0
        for i, batch in enumerate(self.train_data):
            if self.global_step >= total_iters or i >= n_batches:
                break
            if i < skip:              # trained before the resume: keep the mixup draws in step
                if self._mixup is not None:
                    self._mixup.lam(epoch, rng)
                continue
            lr = self.schedule(self.global_step)
            self.trainer.set_learning_rate(lr)
            self.lr_trace.append(lr)
            data, target = self._mix(epoch, batch.data, batch.label, rng)
            n = batch.data.shape[0]
            xs = gluon.utils.split_and_load(data, self.ctx, even_split=False)
            ts = gluon.utils.split_and_load(target, self.ctx, even_split=False)
            ys = gluon.utils.split_and_load(batch.label, self.ctx, even_split=False)
            if self._dist_init_pending:
                self._broadcast_initial_params()
            scale = self.scaler.scale if self.scaler is not None else 1.0
            with autograd.record():
                results = [self.task.loss(self.net, x.astype(in_dtype, copy=False), t, y)
                           for x, t, y in zip(xs, ts, ys)]
                heads = [r[0] * scale for r in results] if self.scaler is not None else [r[0] for r in results]
            autograd.backward(heads)
            self.task.after_backward(self.net)
            if self._dist_init_pending:
                self._broadcast_initial_params()
            if self.global_step in self._drop_iters:
                reset_momentum(self.trainer)
                self.log.info('LR drop at global step %d (lr %g): momentum buffers zeroed', self.global_step, lr)
            # dist_sync sums the gradients of all workers: normalise by the global batch.
            if self.scaler is None:
                self.trainer.step(distributed.global_batch_size(n, self.num_workers))
            else:
                self._scaled_update(scale, distributed.global_batch_size(n, self.num_workers))
            step_loss = mx.nd.add_n(*[r[0].reshape((1,)).as_in_context(c0) for r in results])
            loss_sum += step_loss
            window.append((self.global_step, i, step_loss))
            for (total, logits, terms), y in zip(results, ys):
                k = y.shape[0]
                correct += (logits.argmax(axis=1) == y.astype(logits.dtype)).sum().astype('float32').as_in_context(c0)
                for name, value in terms.items():
                    acc = term_sums.setdefault(name, mx.nd.zeros((1,), ctx=c0))
                    acc += value.reshape((1,)).astype('float32').as_in_context(c0) * k
            seen += n
            iters_done += 1
            self.global_step += 1
            if cfg.log_interval and (i + 1) % cfg.log_interval == 0:
                self._check_window(window, epoch)
                window = []
                speed = cfg.log_interval * n / max(time.time() - tic, 1e-9)
                tic = time.time()
                self.log.info('Epoch[%d] Batch [%d/%d]\tSpeed: %.1f samples/sec\tloss=%.4f\tacc=%.4f\tlr=%.6f',
                              epoch + 1, i + 1, n_batches, speed, _to_float(loss_sum) / seen,
                              _to_float(correct) / seen, lr)
        self._check_window(window, epoch)
        elapsed = time.time() - t0
        seen = max(seen, 1)
        stats = {'epoch': epoch + 1, 'lr': lr, 'train_loss': _to_float(loss_sum) / seen,
                 'train_acc': _to_float(correct) / seen,
                 'terms': {k: _to_float(v) / seen for k, v in sorted(term_sums.items())},
                 'images_per_sec': seen / max(elapsed, 1e-9), 'time': elapsed, 'global_step': self.global_step,
                 'iterations': iters_done}
        if skip:
            stats['first_iteration'] = skip + 1
        return stats

    def _scaled_update(self, scale, batch):
        """Loss-scaled step: sum the gradients (kvstore), check them all for inf/NaN (after the
        sum, so every worker decides alike), skip the update on overflow, and otherwise
        update with the gradients divided by ``scale`` (folded into ``rescale_grad``)."""
        self.trainer.allreduce_grads()
        overflow = self.scaler.has_overflow(self.trainer._params)
        if self.scaler.update(overflow):
            self.trainer.update(batch * scale)
        else:
            self.log.info('loss-scale overflow at global step %d: update skipped, scale %g -> %g',
                          self.global_step, scale, self.scaler.scale)

    def _broadcast_initial_params(self):
        """dist kvstores: rank 0's weights to every worker, waited for (see
        ``distributed.broadcast_initial_params`` for why gluon's lazy broadcast is not used).
        Done before the first forward pass; when parameter shapes are still deferred, right
        after it instead (the workers' deferred initialisations draw the same weights
        anyway: ``seed_epoch`` seeds every worker alike before the first batch)."""
        if any(p._deferred_init for p in self.trainer._params):
            return
        self._dist_init_pending = False
        distributed.broadcast_initial_params(self.trainer)

    def _sync_running_stats(self):
        """BatchNorm running statistics -> their mean over devices and workers, on every copy
        (``distributed.average_running_stats``), before the epoch's evaluation and checkpoint:
        each device and worker only averaged its own batches, so without this the workers of
        a dist job would evaluate (and report) different networks."""
        params = list(self.net.collect_params().values())
        for block in self.task.blocks().values():
            params += list(block.collect_params().values())
        distributed.average_running_stats(self.kv, params)

    def _check_window(self, window, epoch):
        if not window:
            return
        values = mx.nd.concat(*[w[2] for w in window], dim=0).asnumpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            step, it, _ = window[int(bad[0])]
            raise TrainingDiverged('loss became %s at epoch %d, iteration %d (global step %d); stopped, %s'
                                   % (values[bad[0]], epoch + 1, it + 1, step + 1, self._kept(epoch)))

    def _kept(self, epoch):
        """What a stop in (0-based) ``epoch`` leaves behind, for the error message."""
        if self.ckpt is None or self.saved_epoch <= 0:
            return 'no checkpoint had been written yet'
        best = os.path.join(self.ckpt.save_dir, 'best.params')
        return 'the checkpoint of epoch %d%s in %s is kept' % (
            self.saved_epoch, ' and best.params' if os.path.isfile(best) else '', self.ckpt.save_dir)

    def nonfinite_parameters(self):
        """Names of the parameters (network, BN statistics, trainable loss modules) holding a
        NaN or infinity on any device; one device sync for all of them."""
        names, flags = [], []
        blocks = [self.net] + [b for _, b in sorted(self.task.blocks().items())]
        for block in blocks:
            for name, p in block.collect_params().items():
                if p._data is None:          # not initialised (deferred): nothing saved either
                    continue
                for d in p.list_data():
                    names.append(name)
                    flags.append(mx.nd.contrib.isfinite(d).min().reshape((1,)).astype('float32')
                                 .as_in_context(mx.cpu()))
        if not flags:
            return []
        ok = mx.nd.concat(*flags, dim=0).asnumpy()
        return sorted({names[i] for i in np.flatnonzero(ok < 1)})

    def _check_finite_epoch(self, epoch, stats):
        """Before an epoch is saved: its losses and every parameter must be finite."""
        problems = ['%s %s' % (k.replace('_', ' '), stats[k]) for k in ('train_loss', 'val_loss')
                    if k in stats and not np.isfinite(stats[k])]
        bad = self.nonfinite_parameters()
        if bad:
            problems.append('%d parameter(s) hold NaN/inf (%s%s)' % (len(bad), ', '.join(bad[:3]),
                                                                     ', ...' if len(bad) > 3 else ''))
        if problems:
            raise TrainingDiverged('training diverged in epoch %d (%s); stopped without saving that epoch, %s'
                                   % (epoch + 1, '; '.join(problems), self._kept(epoch)))

    def evaluate(self, data, progress=0):
        """Top-1, top-5, mean per-class accuracy and mean cross-entropy on ``data``
        (``pad`` rows of the last batch are ignored). ``progress=N`` logs every N batches."""
        in_dtype = precision.input_dtype(self.cfg.dtype)
        meter = ClassificationMeter(self.num_classes)
        loss_sum, n_total = 0.0, 0
        data.set_epoch(0)
        t0 = time.time()
        for i, batch in enumerate(data):
            xs = gluon.utils.split_and_load(batch.data, self.ctx, even_split=False)
            outs = [self.task.predict(self.net, x.astype(in_dtype, copy=False)) for x in xs]
            scores = np.concatenate([o.astype('float32').asnumpy() for o in outs], axis=0)
            keep = scores.shape[0] - int(batch.pad)
            labels = batch.label.asnumpy().astype(np.int64)[:keep]
            scores = scores[:keep]
            meter.update(labels, scores)
            shifted = scores - scores.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss_sum += float(-logp[np.arange(keep), labels].sum())
            n_total += keep
            if progress and (i + 1) % progress == 0:
                r = meter.result()
                self.log.info('[eval] batch %d/%d  top1=%.4f top5=%.4f  %.1f img/s', i + 1, len(data), r['top1'],
                              r['top5'], n_total / max(time.time() - t0, 1e-9))
        res = meter.result()
        res['loss'] = loss_sum / max(n_total, 1)
        return res

    def _end_epoch(self, epoch, stats, save=True):
        """Log the epoch, check it is finite, rank it (when evaluated), append its metrics
        line and, when ``save`` (an evaluation epoch), write the best file and the checkpoint."""
        terms = ' '.join('%s=%.4f' % kv for kv in stats['terms'].items())
        partial = ''
        first = stats.get('first_iteration', 1)
        if first > 1:
            partial = ' (iterations %d-%d: continued after a resume)' % (first, first + stats['iterations'] - 1)
        elif stats.get('iterations', self.iters_per_epoch) < self.iters_per_epoch:
            partial = ' (partial: %d of %d iterations, --max-iter reached)' % (stats['iterations'], self.iters_per_epoch)
        msg = '[Epoch %d/%d]%s train: loss=%.4f acc=%.4f%s' % (
            epoch + 1, self.cfg.num_epochs, partial, stats['train_loss'], stats['train_acc'],
            (' (%s)' % terms) if terms else '')
        if 'val_top1' in stats:
            msg += ' | val: top1=%.4f top5=%.4f mean-class=%.4f loss=%.4f' % (
                stats['val_top1'], stats['val_top5'], stats['val_mean_class_acc'], stats['val_loss'])
        msg += ' | %.1f img/s, %.1fs, lr=%.6g' % (stats['images_per_sec'], stats['time'], stats['lr'])
        self.log.info(msg)
        self._check_finite_epoch(epoch, stats)
        is_best = self.track_best and 'val_top1' in stats and stats['val_top1'] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = stats['val_top1'], epoch + 1
        stats['best_top1'] = self.best_top1
        self.history.append(stats)
        if not self.is_writer:
            if save and self.ckpt is not None:
                self.saved_epoch = epoch + 1      # rank 0 wrote it (for the messages of every rank)
            return
        # Order (see engine/checkpoint.py): best, metrics line, checkpoint + pointer. A kill in
        # between leaves a checkpoint whose best exists; resume trims the metrics past it.
        if self.ckpt is not None and is_best:
            self.ckpt.save_best(epoch + 1, self.net, self.best_top1, val_top5=stats.get('val_top5'),
                                val_loss=stats.get('val_loss'), global_step=self.global_step,
                                model=self.run_info.get('model'))
        if self.metrics_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)
            with open(self.metrics_path, 'a') as f:
                f.write(json.dumps(jsonable(stats), sort_keys=True) + '\n')
        if self.ckpt is not None and save:
            meta = dict(self.run_info, global_step=self.global_step, best_top1=self.best_top1,
                        best_epoch=self.best_epoch, iters_per_epoch=self.iters_per_epoch,
                        seed=self.cfg.seed, config=_config_dict(self.cfg))
            if self.scaler is not None:
                meta['loss_scaler'] = self.scaler.state_dict()
            self.ckpt.save(epoch + 1, self.net, self.trainer, meta, self.task.blocks())
            self.saved_epoch = epoch + 1


def reset_momentum(trainer):
    """Zero the momentum buffers of an SGD/NAG ``gluon.Trainer`` (all devices), keeping
    float16 master weights. Used at the step schedule's LR drops, where the attention-transfer
    reference re-creates its optimizer there (its ``cifar.py``): the first update
    after the drop is then ``mom = -lr * (g + wd * w)``, PyTorch's first momentum step
    ``buf = g + wd * w``. Buffers not created yet (before the first update) stay absent."""
    for updater in trainer._updaters:
        for state in updater.states.values():
            # multi_precision SGD keeps (momentum, float32 weight); momentum 0 keeps None
            mom = state[0] if isinstance(state, (list, tuple)) else state
            if mom is not None:
                mom[:] = 0


def _differs(a, b):
    """Whether two JSON values (numbers, strings, lists) differ beyond float round-off."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        a, b = list(a or []) if isinstance(a, (list, tuple)) else [a], list(b or []) if isinstance(b, (list, tuple)) else [b]
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) > 1e-12 * max(1.0, abs(float(a)), abs(float(b)))
    return a != b


def _fmt(v):
    if isinstance(v, (list, tuple)):
        return ','.join(_fmt(x) for x in v) or "''"
    return '%g' % v if isinstance(v, float) else str(v)


def _config_dict(cfg):
    """``cfg`` as JSON-able dict. Not ``asdict``: it deep-copies fields, and a kvstore
    object (what cli.run passes for dist_sync) cannot be copied; it is stored by type."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if d['kvstore'] is not None and not isinstance(d['kvstore'], str):
        d['kvstore'] = d['kvstore'].type
    return jsonable(d)

