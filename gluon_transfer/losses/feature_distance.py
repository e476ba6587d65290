"""Plain feature-map distance (DELTA's ``fea_map`` baseline, AFA's ``fea_map``).

Math (the ``fea_map`` baseline of the DELTA and AFA reference code)::

    Omega = sum_l 0.5 * ||t_l - s_l||_F^2          (sum over the batch, channels and positions)

``t_l``/``s_l``: the target's and the frozen source's raw conv outputs at tap ``l``
(:func:`~gluon_transfer.losses.transfer_common.stage_end_taps`), ``s`` detached.
Objective as in DELTA's ``train.py``: ``mean CE + alpha * Omega + beta * 0.5 * ||fc||^2``
(the classifier term for every regularizer except ``l2``); no division by the batch size,
so Omega grows with the batch.

Engine units: with ``B`` the global batch of one optimizer step and ``omega_i`` sample
``i``'s share (``Omega = sum_i omega_i``), the per-sample objective is
``CE_i + B * alpha * omega_i``; a slice contributes ``B * alpha * sum_{i in slice} omega_i``
and after ``trainer.step(B)`` the gradient is ``grad(mean CE) + alpha * grad(Omega)``,
the reference's. The classifier term is batch-level (``n * beta * 0.5 ||fc||^2``).
"""
import mxnet as mx

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .l2sp import ParamPenalty

__all__ = ['feature_map_per_sample', 'feature_map_penalty', 'FeatureMap']


def _check_pairs(sources, targets):
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets) or not sources:
        raise ConfigError('feature penalty: %d source maps but %d target maps' % (len(sources), len(targets)))
    for i, (s, t) in enumerate(zip(sources, targets)):
        if s.shape != t.shape:
            raise ConfigError('feature penalty: layer %d source map %s but target map %s' % (i, s.shape, t.shape))
    return sources, targets


def feature_map_per_sample(sources, targets):
    """``omega_i = sum_l 0.5 * ||t_l[i] - s_l[i]||^2``: an (N,) float32 NDArray."""
    sources, targets = _check_pairs(sources, targets)
    parts = []
    for s, t in zip(sources, targets):
        d = t.astype('float32', copy=False) - s.astype('float32', copy=False)
        parts.append(0.5 * mx.nd.sum(mx.nd.square(d), axis=(1, 2, 3)))
    return mx.nd.add_n(*parts) if len(parts) > 1 else parts[0]


def feature_map_penalty(sources, targets):
    """``sum_l 0.5 * ||t_l - s_l||_F^2`` over lists of (N, C, H, W) maps: a (1,) NDArray."""
    return mx.nd.sum(feature_map_per_sample(sources, targets)).reshape((1,))


class FeaturePenalty(ParamPenalty):
    """Shared by ``fea_map`` and ``delta``: ``B * alpha * sum_i omega_i`` for the slice plus
    the classifier term ``n * beta * 0.5 * ||fc||^2`` (weight and bias, as DELTA's code)."""
    needs_features = True

    def __init__(self, alpha=0.01, beta=0.01, batch_size=None):
        super().__init__()
        if batch_size is None or int(batch_size) < 1:
            raise ConfigError('%s needs the global batch size (its penalty sums over the batch)' % self.name)
        self.alpha = 0.01 if alpha is None else float(alpha)
        self.beta = 0.01 if beta is None else float(beta)
        self.batch_size = int(batch_size)

    def param_rates(self, rows):
        return self.classifier_rates(rows)

    def per_sample(self, ctx, feats_t, feats_s):
        raise NotImplementedError

    def terms(self, ctx, n, feats_t, feats_s):
        omega = self.per_sample(ctx, feats_t, feats_s)
        out = [(self.name, mx.nd.sum(omega).reshape((1,)) * (self.batch_size * self.alpha))]
        return out + self.param_terms(ctx, n)


@REGULARIZERS.register('fea_map')
class FeatureMap(FeaturePenalty):
    """``fea_map``: alpha * sum_l 0.5 ||t_l - s_l||_F^2 (see the module docstring)."""
    name = 'fea_map'

    def __init__(self, alpha=None, beta=None, batch_size=None):
        super().__init__(alpha, beta, batch_size)

    def per_sample(self, ctx, feats_t, feats_s):
        return feature_map_per_sample(feats_s, feats_t)
