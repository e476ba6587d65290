"""Per-iteration learning-rate schedules with linear warm-up.

``lr(step)`` for a 0-based global iteration ``step``, with ``W = warmup_epochs * ipe``
warm-up iterations and ``T = num_epochs * ipe`` iterations in total (``ipe`` = iterations
per epoch):

* warm-up (``step < W``): ``warmup_lr + (base_lr - warmup_lr) * step / W``;
* ``step``:   ``base_lr * decay ** k`` with ``k`` = number of ``decay_epochs`` e with
  ``step >= e * ipe``. The epochs are absolute: open-aff's CIFAR script subtracted the
  warm-up from them (its "300,450" fired at 290/440); we decay at the epochs given;
* ``cosine``: ``target_lr + (base_lr - target_lr) * (1 + cos(pi * t / N)) / 2``;
* ``poly``:   ``target_lr + (base_lr - target_lr) * (1 - t / N) ** power``;
* ``constant``: ``base_lr``;

where ``t = step - W`` and ``N = T - W`` (GluonCV's ``LRSequential`` of a linear warm-up and
the main schedule). After ``T`` the schedule stays at its final value.
"""
import math

from ..errors import ConfigError

MODES = ('step', 'cosine', 'poly', 'constant')


class LRSchedule:
    def __init__(self, mode, base_lr, iters_per_epoch, num_epochs, warmup_epochs=0.0, warmup_lr=0.0,
                 decay=0.1, decay_epochs=(), target_lr=0.0, power=2.0):
        if mode not in MODES:
            raise ConfigError('unknown --lr-mode %r; valid: %s' % (mode, ', '.join(MODES)))
        if iters_per_epoch <= 0:
            raise ConfigError('an epoch has no iterations (dataset smaller than one batch?)')
        if warmup_epochs < 0 or warmup_epochs > num_epochs:
            raise ConfigError('--warmup-epochs %g must lie in [0, --num-epochs %g]' % (warmup_epochs, num_epochs))
        self.mode = mode
        self.base_lr = float(base_lr)
        self.ipe = int(iters_per_epoch)
        self.warmup_iters = int(round(warmup_epochs * self.ipe))
        self.total_iters = int(round(num_epochs * self.ipe))
        self.warmup_lr = float(warmup_lr)
        self.decay = float(decay)
        self.decay_iters = sorted(int(round(e * self.ipe)) for e in decay_epochs)
        self.target_lr = float(target_lr)
        self.power = float(power)

    def __call__(self, step):
        if step < self.warmup_iters:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / float(self.warmup_iters)
        if self.mode == 'constant':
            return self.base_lr
        if self.mode == 'step':
            k = sum(1 for d in self.decay_iters if step >= d)
            return self.base_lr * self.decay ** k
        span = max(self.total_iters - self.warmup_iters, 1)
        t = min(step - self.warmup_iters, span) / float(span)
        if self.mode == 'cosine':
            return self.target_lr + (self.base_lr - self.target_lr) * (1 + math.cos(math.pi * t)) / 2
        return self.target_lr + (self.base_lr - self.target_lr) * (1 - t) ** self.power
