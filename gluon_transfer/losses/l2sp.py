"""L2-SP (Li, Grandvalet & Davoine, ICML 2018) and the plain L2 baseline.

Math (the paper's, as both reference implementations compute it)::

    Omega(w) = alpha * sum_{p in shared} 0.5 * ||w_p - w0_p||^2  +  beta * sum_{p in new} 0.5 * ||w_p||^2

``w0`` are the source (pre-trained) weights, snapshot once when training starts and
never updated; "shared" are the parameters the target inherits from the source, "new"
the classifier (and re-initialised layers). The 0.5 makes the gradient
``alpha * (w - w0)``. The total objective is ``mean CE + Omega`` with optimizer weight
decay 0 (both reference configurations do this).

Which tensors (``--l2sp-variant``):

* ``official`` (holyseven/TransferLearningClassification ``_decay``, mode 1): kernel
  weights only -- conv kernels toward ``w0``, the classifier's weight matrix toward 0;
  biases and BN gamma/beta are not regularised. alpha 0.1, beta 0.01.
* ``all`` (the PyTorch port inside DELTA / AFA / TLlib, §6.2): every trainable
  non-classifier parameter (BN gamma/beta and biases included) toward ``w0``, every
  classifier parameter (weight and bias) toward 0. alpha 0.01 (DELTA's default), beta 0.01.
* ``nonbinary`` (Plested et al.'s released code, §7.2, "fixed-weight form"): BN
  parameters skipped; the ``k = --num-low-lr-layers`` bottom groups toward ``w0`` with
  alpha 0.004; every other group (upper, re-initialised, classifier) toward 0 with beta
  0.0005; added on top of SGD weight decay. The released code multiplies the first
  existing tensor by 10 and the others by 5 (an accumulation bug); that is not copied.
* ``groups`` (the paper's per-layer-group rates, ``--l2sp-rates head,upper,lower``; the
  released code parses the flag but never uses it): BN skipped; lower groups toward
  ``w0`` at ``lower``, upper groups toward ``w0`` at ``upper``, classifier and
  re-initialised groups toward 0 at ``head``.

In the engine the penalty is a batch-level term: a slice of ``n`` samples contributes
``n * Omega`` to the task's summed total, so after ``trainer.step(B)`` the gradient is
``grad(mean CE) + grad(Omega)`` exactly as in the references.

Exact resume: ``w0`` comes from the *source* network (the ``--source-params`` file or
GluonCV's pretrained file), never from the target's current weights, so a resumed run
rebuilds the identical snapshot whatever the checkpoint holds.
"""
import mxnet as mx

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .transfer_common import Regularizer, param_penalty

__all__ = ['l2sp_penalty', 'L2', 'L2SP', 'ParamPenalty']


def l2sp_penalty(shared, reference, new, alpha=0.1, beta=0.01):
    """``alpha * sum_i 0.5 * ||shared[i] - reference[i]||^2 + beta * sum_j 0.5 * ||new[j]||^2``.

    ``shared``/``reference``: equal-length lists of NDArrays (current and starting-point
    values of the inherited parameters); ``new``: list of NDArrays (new-head parameters).
    Returns a (1,) float32 NDArray."""
    shared, reference, new = list(shared), list(reference), list(new)
    if len(shared) != len(reference):
        raise ConfigError('l2sp_penalty: %d shared arrays but %d reference arrays' % (len(shared), len(reference)))
    for i, (w, w0) in enumerate(zip(shared, reference)):
        if w.shape != w0.shape:
            raise ConfigError('l2sp_penalty: shared[%d] has shape %s but reference[%d] %s'
                              % (i, w.shape, i, w0.shape))
    items = [(w, w0, alpha) for w, w0 in zip(shared, reference)] + [(w, None, beta) for w in new]
    if not items:
        ctx = mx.cpu()
        return mx.nd.zeros((1,), ctx=ctx)
    return param_penalty(items)


class ParamPenalty(Regularizer):
    """Base for regularizers with a parameter penalty ``sum_p rate_p 0.5 ||w_p - a_p||^2``.

    Subclasses define ``param_rates(rows) -> {key: (rate, 'w0' | '0')}`` (rows from
    :func:`gluon_transfer.param_groups.plan`); ``bind(rows)`` fixes the table,
    ``setup`` takes the ``w0`` snapshot (a private copy per device) and ``param_terms``
    returns the batch-level contributions ``n * penalty`` named ``<name>_w0`` (toward the
    source weights) and ``<name>_new`` (toward 0)."""
    needs_source_weights = False

    def __init__(self):
        self.table = None
        self._items = {}

    def param_rates(self, rows):
        return {}

    def classifier_rates(self, rows):
        """``beta`` toward 0 on every trainable classifier parameter (weight and bias): the
        ``beta * 0.5 ||fc||^2`` term of the feature regularizers (DELTA, fea_map, AFA)."""
        return {r.key: (self.beta, '0') for r in rows if r.section == 'head' and r.kind != 'stat'}

    def bind(self, rows):
        self.table = {k: v for k, v in self.param_rates(rows).items() if v[0]}
        return self.table

    @property
    def uses_w0(self):
        return any(a == 'w0' for _, a in (self.table or {}).values())

    def setup(self, net, ctx, source_weights=None):
        if self.table is None:
            raise ConfigError('%s: bind(rows) must be called before setup' % self.name)
        params = net._collect_params_with_prefix()
        missing = [k for k in self.table if k not in params]
        if missing:
            raise ConfigError('%s: the network has no parameter %r' % (self.name, missing[0]))
        if self.uses_w0 and source_weights is None:
            raise ConfigError('%s needs the source weights (w0)' % self.name)
        self._items = {}
        for c in ctx:
            w0_items, new_items = [], []
            for key, (rate, anchor) in sorted(self.table.items()):
                p = params[key]
                if anchor == 'w0':
                    if key not in source_weights:
                        raise ConfigError('%s: source weights lack %r' % (self.name, key))
                    ref = source_weights[key]
                    if tuple(ref.shape) != tuple(p.shape):
                        raise ConfigError('%s: source %r has shape %s but the target %s'
                                          % (self.name, key, ref.shape, p.shape))
                    # A private copy: the snapshot never moves, whatever happens to the source arrays.
                    w0_items.append((key, p, ref.as_in_context(c).astype(p.dtype).copy(), rate))
                else:
                    new_items.append((key, p, None, rate))
            self._items[c] = (w0_items, new_items)

    def snapshot(self, ctx=None):
        """``{key: w0 NDArray}`` on ``ctx`` (default the first context), for inspection."""
        c = ctx or next(iter(self._items))
        return {k: a for k, _, a, _ in self._items[c][0]}

    def param_terms(self, ctx, n):
        w0_items, new_items = self._items[ctx]
        out = []
        if w0_items:
            out.append((self.name + '_w0', param_penalty([(p.data(ctx), a, r) for _, p, a, r in w0_items]) * n))
        if new_items:
            out.append((self.name + '_new', param_penalty([(p.data(ctx), None, r) for _, p, _, r in new_items]) * n))
        return out

    def terms(self, ctx, n, feats_t, feats_s):
        return self.param_terms(ctx, n)


@REGULARIZERS.register('l2')
class L2(ParamPenalty):
    """Plain fine-tuning: no penalty term, only the optimizer's weight decay
    (``--wd``, default 1e-4 with ``--reg l2``, as DELTA's and AFDS's ``l2`` baseline)."""
    name = 'l2'

    def __init__(self):
        super().__init__()


_L2SP_DEFAULTS = {'official': (0.1, 0.01), 'all': (0.01, 0.01), 'nonbinary': (0.004, 0.0005), 'groups': (None, None)}


@REGULARIZERS.register('l2sp')
class L2SP(ParamPenalty):
    """L2-SP; see the module docstring for the math and the four variants."""
    name = 'l2sp'
    needs_source_weights = True
    VARIANTS = tuple(_L2SP_DEFAULTS)

    def __init__(self, alpha=None, beta=None, variant='official', rates=None):
        super().__init__()
        if variant not in _L2SP_DEFAULTS:
            raise ConfigError('unknown --l2sp-variant %r; valid: %s' % (variant, ', '.join(_L2SP_DEFAULTS)))
        da, db = _L2SP_DEFAULTS[variant]
        self.variant = variant
        self.alpha = da if alpha is None else float(alpha)
        self.beta = db if beta is None else float(beta)
        if variant == 'groups':
            if rates is None or len(rates) != 3:
                raise ConfigError('--l2sp-variant groups needs --l2sp-rates head,upper,lower')
            self.rates = tuple(float(r) for r in rates)
        elif rates is not None:
            raise ConfigError('--l2sp-rates applies to --l2sp-variant groups only')

    def param_rates(self, rows):
        table = {}
        trainable = [r for r in rows if r.kind != 'stat']
        for r in trainable:
            newish = r.new          # classifier or re-initialised group
            if self.variant == 'official':
                if r.kind == 'weight':
                    table[r.key] = (self.beta, '0') if newish else (self.alpha, 'w0')
            elif self.variant == 'all':
                table[r.key] = (self.beta, '0') if newish else (self.alpha, 'w0')
            elif self.variant == 'nonbinary':
                if r.kind != 'norm':
                    table[r.key] = (self.alpha, 'w0') if (r.section == 'lower' and not newish) else (self.beta, '0')
            else:
                head, upper, lower = self.rates
                if r.kind != 'norm':
                    if newish:
                        table[r.key] = (head, '0')
                    else:
                        table[r.key] = (lower if r.section == 'lower' else upper, 'w0')
        return table
