"""Numeric precision: float32, float16 (GPU) and bfloat16 AMP (CPU), and loss scaling.

* ``float16`` (``--dtype float16``, GPUs only): the network is cast with ``net.cast('float16')``
  -- Gluon's BatchNorm overrides ``cast`` and keeps its gamma/beta/running statistics in
  float32 --, inputs are cast, the optimizer keeps float32 master weights
  (``multi_precision=True`` for SGD/NAG) and the loss is read in float32. Gradients are
  protected from underflow by a :class:`LossScaler` (``--amp-loss-scale``, default
  ``auto`` = dynamic for float16). ``MXNET_SAFE_ACCUMULATION=1`` (float32 accumulation in
  softmax/norm reductions, as open-aff's command lines set it) is advised in the log when
  unset. MXNet 1.9.1 has no float16 GEMM on CPU (``FP16 gemm on cpu not implemented``), so
  float16 is refused on CPU contexts; the cast, the optimizer flag and the scaler are tested
  on CPU (tests/test_precision.py), the float16 arithmetic itself only runs on a GPU.
* ``bfloat16``: ``mx.contrib.amp`` with ``target_dtype='bfloat16'``; ``amp.init`` must run
  before the network is built. bfloat16 has float32's exponent range, so no loss scaler is
  attached (``auto`` -> ``none``; ``amp.init_trainer`` is not called, which would add an
  overflow check, i.e. a device sync, to every step). Whether it is faster than float32
  depends on the CPU and oneDNN build: ``bench/bench_precision.py`` measures it.

Loss scaling (``LossScaler``), for a scale ``s``: the backward pass runs on ``s * loss`` and
the optimizer divides the gradients by ``s`` (``trainer.step(batch * s)``, folded into
``rescale_grad``). ``static``: ``s`` is constant; ``dynamic``: after ``window`` consecutive
steps with finite gradients ``s`` is multiplied by ``factor`` (2), and on a step whose
gradients contain inf/NaN the update is skipped and ``s`` is divided by ``factor`` at once
(never below ``min_scale``). The state (scale, finite-step counter, skipped steps) is saved
in the checkpoint and restored on resume, so a resumed run scales exactly as an
uninterrupted one.
"""
import logging
import math
import os

from ..errors import ConfigError

DTYPES = ('float32', 'float16', 'bfloat16')
LOSS_SCALE_MODES = ('auto', 'none', 'static', 'dynamic')
DEFAULT_INIT_SCALE = 2.0 ** 16
DEFAULT_SCALE_WINDOW = 2000
_amp_initialised = []


def check_precision(dtype, ctx):
    if dtype not in DTYPES:
        raise ConfigError('unknown --dtype %r; valid: %s' % (dtype, ', '.join(DTYPES)))
    if dtype == 'float16' and any(c.device_type == 'cpu' for c in ctx):
        raise ConfigError('--dtype float16 needs GPUs: MXNet 1.9.1 has no float16 GEMM on CPU '
                          '(use --dtype float32, or bfloat16 AMP)')


def resolve_loss_scale(mode, dtype):
    """``--amp-loss-scale`` -> 'none' | 'static' | 'dynamic' (``auto``: dynamic for float16,
    none otherwise; bfloat16 needs no scaling). An explicit mode is kept for any dtype
    (with float32 it changes nothing numerically but runs the same code path)."""
    if mode not in LOSS_SCALE_MODES:
        raise ConfigError('unknown --amp-loss-scale %r; valid: %s' % (mode, ', '.join(LOSS_SCALE_MODES)))
    if mode == 'auto':
        return 'dynamic' if dtype == 'float16' else 'none'
    return mode


def make_loss_scaler(mode, dtype, init_scale=DEFAULT_INIT_SCALE, scale_window=DEFAULT_SCALE_WINDOW):
    """The :class:`LossScaler` for ``--amp-loss-scale mode`` and ``--dtype dtype``, or None."""
    mode = resolve_loss_scale(mode, dtype)
    scaler = LossScaler(init_scale, scale_window, dynamic=(mode == 'dynamic'))   # validates the values
    return None if mode == 'none' else scaler


class LossScaler:
    """Static or dynamic loss scale (see the module docstring for the rule).

    Use per step: ``backward(scaler.scale * loss)``; ``trainer.allreduce_grads()``;
    ``if scaler.update(scaler.has_overflow(params)): trainer.update(batch * old_scale)``,
    where ``old_scale`` is the scale the loss was multiplied by (``update`` may change it).
    """

    def __init__(self, init_scale=DEFAULT_INIT_SCALE, window=DEFAULT_SCALE_WINDOW, dynamic=True,
                 factor=2.0, min_scale=1.0, max_scale=2.0 ** 24):
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ConfigError('--amp-init-scale must be a positive finite number, got %r' % (init_scale,))
        if int(window) < 1:
            raise ConfigError('--amp-scale-window must be >= 1, got %r' % (window,))
        if factor <= 1:
            raise ConfigError('loss-scale factor must be > 1, got %r' % (factor,))
        self.scale = float(init_scale)
        self.window = int(window)
        self.dynamic = bool(dynamic)
        self.factor = float(factor)
        self.min_scale = float(min_scale)
        self.max_scale = float(max(max_scale, init_scale))
        self.good_steps = 0       # consecutive finite steps since the last change
        self.skipped = 0          # steps skipped because of overflow, in total

    def update(self, overflow):
        """Record one step's outcome; returns True when the optimizer update should run."""
        if overflow:
            self.skipped += 1
            self.good_steps = 0
            if self.dynamic:
                self.scale = max(self.scale / self.factor, self.min_scale)
            return False
        if self.dynamic:
            self.good_steps += 1
            if self.good_steps >= self.window:
                self.scale = min(self.scale * self.factor, self.max_scale)
                self.good_steps = 0
        return True

    @staticmethod
    def has_overflow(params):
        """True when any gradient of ``params`` (gluon Parameters, all devices) holds inf/NaN.
        One device sync for all of them (``multi_all_finite`` per device)."""
        import mxnet as mx
        by_ctx = {}
        for p in params:
            if p.grad_req == 'null' or p._grad is None:
                continue
            for g in p.list_grad():
                by_ctx.setdefault(g.context, []).append(g)
        flags = []
        with mx.autograd.pause():
            for ctx, grads in by_ctx.items():
                ok = mx.nd.ones((1,), ctx=ctx)
                for i in range(0, len(grads), 200):
                    chunk = grads[i:i + 200]
                    mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=ok)
                flags.append(ok)
        return any(float(f.asscalar()) == 0 for f in flags)

    def state_dict(self):
        return {'scale': self.scale, 'good_steps': self.good_steps, 'skipped': self.skipped,
                'window': self.window, 'dynamic': self.dynamic}

    def load_state_dict(self, state):
        for key in ('scale', 'good_steps', 'skipped'):
            if key not in state:
                raise ConfigError('loss-scaler state lacks %r (got keys %s)' % (key, sorted(state)))
        self.scale = float(state['scale'])
        self.good_steps = int(state['good_steps'])
        self.skipped = int(state['skipped'])

    def __repr__(self):
        return 'LossScaler(%s, scale=%g, window=%d)' % ('dynamic' if self.dynamic else 'static',
                                                       self.scale, self.window)


def setup_precision(dtype, ctx, log=None):
    """Validate ``dtype`` for ``ctx``; for bfloat16 switch AMP on. Call before building nets."""
    check_precision(dtype, ctx)
    if dtype == 'float16' and os.environ.get('MXNET_SAFE_ACCUMULATION') != '1':
        (log or logging.getLogger('gluon_transfer')).info(
            'float16: MXNET_SAFE_ACCUMULATION is unset; `export MXNET_SAFE_ACCUMULATION=1` makes softmax '
            'and norm reductions accumulate in float32 (advised, as in open-aff\'s float16 recipes)')
    if dtype == 'bfloat16' and not _amp_initialised:
        from mxnet.contrib import amp
        amp.init(target_dtype='bfloat16')
        _amp_initialised.append(True)


def prepare_net(net, dtype):
    """Cast ``net`` for ``dtype``: float16 casts every parameter except BatchNorm's (Gluon's
    BatchNorm.cast keeps float32); float32/bfloat16 leave it (AMP converts ops, not params)."""
    if dtype == 'float16':
        net.cast('float16')


def optimizer_kwargs(dtype):
    """Extra optimizer arguments for ``dtype``: with float16 the optimizer (SGD/NAG, and Adam
    through MXNet's generic path) keeps float32 master weights and updates them in float32."""
    return {'multi_precision': True} if dtype == 'float16' else {}


def input_dtype(dtype):
    return 'float16' if dtype == 'float16' else 'float32'
