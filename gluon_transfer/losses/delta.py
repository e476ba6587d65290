"""DELTA: DEep Learning Transfer using feature map with Attention (Li et al., ICLR 2019).

Math as lixingjian/DELTA ``train.py`` computes it::

    Omega = sum_l 0.5 * sum_{n,c} C_l * w_l[c] * ||t_l[n,c,:,:] - s_l[n,c,:,:]||_2^2 / (H_l * W_l)
    loss  = mean CE + alpha * Omega + beta * sum_{fc params} 0.5 * ||theta||^2

* ``t_l``/``s_l``: raw conv outputs (before BN and the residual add) of the last block
  of each stage of the target and of the frozen source (inference mode, ``s`` detached);
  ``C_l``, ``H_l``, ``W_l`` the tap's channels and size. ``C_l * w_l`` has mean 1 over
  channels, so uniform weights give ``0.5 * sum ||t - s||^2 / (H W)``.
* **No division by the batch size**: Omega sums over the batch and grows with it
  (batch 64 in the reference). alpha 0.01 (0.1 for Stanford Dogs), beta 0.01; optimizer
  weight decay 0.
* Channel weights ``w_l = softmax(zscore(r_l) / 5)`` with ``zscore(r) = (r - mean r) /
  std r`` (population std, numpy's default ddof 0), softmax over the channels; ``r_l[j]``
  is the increase of the cross-entropy when filter ``j`` of the tapped convolution is
  zeroed, measured after training only the classifier (see :func:`filter_importance`
  and ``tools/delta_channel_weights.py``).

Engine units (see ``feature_distance.py``): a slice contributes
``B * alpha * sum_{i in slice} omega_i`` with ``B`` the global batch of one optimizer step,
so the gradient after ``trainer.step(B)`` is ``grad(mean CE) + alpha * grad(Omega)``,
exactly the reference's; the classifier term is ``n * beta * 0.5 ||fc||^2`` per slice.
The logged ``delta`` term is ``B * alpha * mean_i omega_i`` = alpha * Omega of a batch.

Where this port differs: the weights are computed on GluonCV networks (the reference's
JSONs are for torchvision ResNet-101 and can be loaded, but only match a network with the
same filters); the reference tests on a squashed 224 x 224 image, our evaluation is the
preset's (shorter side 256, centre crop 224).
"""
import json
import os

import numpy as np
import mxnet as mx

from ..errors import ConfigError, DataError
from ..registry import REGULARIZERS, unknown_name_message
from .feature_distance import FeaturePenalty, _check_pairs
from .taps import conv_paths

__all__ = ['delta_channel_weights', 'delta_per_sample', 'delta_penalty', 'DELTA', 'load_channel_weights',
           'filter_importance']


def delta_channel_weights(raw_importance):
    """``softmax(zscore(r) / 5)`` of a 1-D importance vector ``r`` (numpy, list or NDArray;
    the result has the same kind, float32). A list of vectors gives a list. Population
    std; a constant ``r`` (std 0) gives uniform weights."""
    if isinstance(raw_importance, (list, tuple)) and raw_importance and \
            isinstance(raw_importance[0], (list, tuple, np.ndarray, mx.nd.NDArray)):
        return [delta_channel_weights(r) for r in raw_importance]
    is_nd = isinstance(raw_importance, mx.nd.NDArray)
    r = raw_importance.asnumpy() if is_nd else np.asarray(raw_importance)
    r = r.astype(np.float64).ravel()
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ConfigError('DELTA channel importances must be a non-empty finite vector')
    std = r.std()
    z = (r - r.mean()) / std if std > 0 else np.zeros_like(r)
    e = np.exp(z / 5.0 - np.max(z / 5.0))
    w = (e / e.sum()).astype(np.float32)
    return mx.nd.array(w, ctx=raw_importance.context) if is_nd else w


def delta_per_sample(sources, targets, channel_weights):
    """``omega_n = sum_l 0.5 * sum_c C_l w_l[c] ||t_l[n,c] - s_l[n,c]||^2 / (H_l W_l)``: (N,) NDArray.
    ``channel_weights``: one (C_l,) array (NDArray or numpy) per layer."""
    sources, targets = _check_pairs(sources, targets)
    weights = list(channel_weights)
    if len(weights) != len(sources):
        raise ConfigError('delta: %d channel-weight vectors for %d layers' % (len(weights), len(sources)))
    parts = []
    for i, (s, t, w) in enumerate(zip(sources, targets, weights)):
        _, c, h, wd = t.shape
        if not isinstance(w, mx.nd.NDArray):
            w = mx.nd.array(np.asarray(w, np.float32), ctx=t.context)
        if w.size != c:
            raise ConfigError('delta: layer %d has %d channels but %d channel weights' % (i, c, w.size))
        d = t.astype('float32', copy=False) - s.astype('float32', copy=False)
        per_channel = mx.nd.sum(mx.nd.square(d), axis=(2, 3))                 # (N, C)
        scale = w.astype('float32', copy=False).reshape((1, c)) * (0.5 * c / float(h * wd))
        parts.append(mx.nd.sum(mx.nd.broadcast_mul(per_channel, scale), axis=1))
    return mx.nd.add_n(*parts) if len(parts) > 1 else parts[0]


def delta_penalty(sources, targets, channel_weights):
    """DELTA's Omega over lists of (N, C, H, W) source and target maps: a (1,) NDArray
    (summed over the batch, not averaged)."""
    return mx.nd.sum(delta_per_sample(sources, targets, channel_weights)).reshape((1,))


# ---------------------------------------------------------------------- weights files
def load_channel_weights(path, channels=None):
    """Raw importances from a JSON file: the reference's shipped format (a list of L lists)
    or ours (``{"raw_importance": [...], "taps": [...], ...}``). ``channels``: the expected
    channel count per tap (checked). Returns a list of float64 numpy vectors."""
    if not os.path.isfile(path):
        raise DataError('DELTA channel weights not found: %s (compute them with tools/delta_channel_weights.py, '
                        'or pass --channel-weights uniform)' % path)
    try:
        with open(path) as f:
            obj = json.load(f)
    except ValueError as e:
        raise DataError('%s: not valid JSON (%s)' % (path, e)) from None
    raw = obj.get('raw_importance') if isinstance(obj, dict) else obj
    if not isinstance(raw, list) or not raw or not all(isinstance(r, list) and r for r in raw):
        raise DataError('%s: expected a list of per-layer lists of importances (or {"raw_importance": ...})' % path)
    try:
        raw = [np.asarray(r, dtype=np.float64) for r in raw]
    except (TypeError, ValueError):
        raise DataError('%s: importances must be numbers' % path) from None
    if channels is not None:
        channels = list(channels)
        if len(raw) != len(channels):
            raise DataError('%s holds %d layers of importances but %d feature taps are used' % (path, len(raw), len(channels)))
        for i, (r, c) in enumerate(zip(raw, channels)):
            if r.size != c:
                raise DataError('%s: layer %d has %d importances but the tap has %d channels (weights of another '
                                'model?)' % (path, i, r.size, c))
    return raw


def filter_importance(net, tap_names, batches, ctx=None, log=None):
    """DELTA's filter importances (``channel_eval.py``): for every tapped convolution and
    every output filter ``j``, zero ``weight[j]`` (the bias, if any, is kept), recompute the
    mean cross-entropy on each batch in inference mode, and return
    ``r[j] = mean over batches of (CE_zeroed - CE_full)``. ``batches``: a list of
    ``(data, label)`` NDArrays. Weights are restored afterwards. Returns one numpy vector
    per tap."""
    ctx = ctx or mx.cpu()
    convs = conv_paths(net)
    batches = [(x.as_in_context(ctx), y.as_in_context(ctx)) for x, y in batches]

    def mean_ce():
        out = []
        for x, y in batches:
            z = net(x)
            z = z[0] if isinstance(z, (list, tuple)) else z
            logp = mx.nd.log_softmax(z.astype('float32'), axis=-1)
            out.append(-mx.nd.mean(mx.nd.pick(logp, y, axis=-1)))
        return np.array([float(o.asscalar()) for o in out])

    base = mean_ce()
    result = []
    for name in tap_names:
        if name not in convs:
            raise ConfigError(unknown_name_message('feature tap', name, convs))
        weight = convs[name].weight
        orig = weight.data(ctx).copy()
        r = np.zeros(orig.shape[0])
        for j in range(orig.shape[0]):
            w = orig.copy()
            w[j] = 0
            weight.set_data(w)
            r[j] = float(np.mean(mean_ce() - base))
        weight.set_data(orig)
        if log:
            log.info('importance of %s: %d filters, mean %.3g, max %.3g', name, r.size, r.mean(), r.max())
        result.append(r)
    return result


@REGULARIZERS.register('delta')
class DELTA(FeaturePenalty):
    """DELTA (see the module docstring). ``channel_weights``: raw importances (one vector
    per tap; softmax(zscore/5) is applied here), a JSON path, or 'uniform'."""
    name = 'delta'

    def __init__(self, alpha=None, beta=None, batch_size=None, channel_weights=None):
        super().__init__(alpha, beta, batch_size)
        if isinstance(channel_weights, str) and channel_weights != 'uniform' and not os.path.isfile(channel_weights):
            load_channel_weights(channel_weights)     # the one-line "not found" error, before any training
        self.channel_source = channel_weights
        self.weights = None
        self._w = {}

    def set_channels(self, channels):
        """Resolve the weights for taps with ``channels`` (called by the task)."""
        if self.channel_source is None:
            raise ConfigError('delta needs channel weights: --channel-weights FILE (from '
                              'tools/delta_channel_weights.py) or --channel-weights uniform')
        if isinstance(self.channel_source, str) and self.channel_source == "uniform":
            self.weights = [np.full(c, 1.0 / c, np.float32) for c in channels]
            return
        raw = load_channel_weights(self.channel_source, channels) if isinstance(self.channel_source, str) else list(self.channel_source)
        if len(raw) != len(channels) or any(np.asarray(r).size != c for r, c in zip(raw, channels)):
            raise ConfigError('delta: channel importances of sizes %s do not fit taps with channels %s'
                              % ([np.asarray(r).size for r in raw], list(channels)))
        self.weights = [delta_channel_weights(np.asarray(r)) for r in raw]

    def setup(self, net, ctx, source_weights=None):
        super().setup(net, ctx, source_weights)
        if self.weights is None:
            raise ConfigError('delta: channel weights not resolved (set_channels was not called)')
        self._w = {c: [mx.nd.array(w, ctx=c) for w in self.weights] for c in ctx}

    def per_sample(self, ctx, feats_t, feats_s):
        return delta_per_sample(feats_s, feats_t, self._w[ctx])
