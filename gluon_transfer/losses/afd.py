"""AFD: attentive feature distillation (AFDS, Wang et al., ICLR 2020), ``--reg afd``.

Math (the paper's form, squared)::

    rho_l[n, :] = softmax_c( fc2( relu( fc1( s_l[n, c, :, :].flatten() ) ) ) )   (N, C_l)
    D_l[n, c]   = || t_l[n, c] - s_l[n, c] ||_2^2        ('l2sq', default; the paper)
                  || t_l[n, c] - s_l[n, c] ||_2          ('l2', the reproduction's code)
    R           = (1/N) sum_l sum_{n,c} rho_l[n, c] * D_l[n, c]
    loss        = mean CE + lambda * R                   lambda = 0.01 (--afd-lambda)

* ``s_l``/``t_l``: the frozen source's and the target's raw conv3 outputs (before bn3, the
  gate and the residual add) of the last bottleneck of each stage (``layer1.2.conv3``,
  ``layer2.3.conv3``, ``layer3.5.conv3``/``layer3.22.conv3``, ``layer4.2.conv3`` for
  ResNet-50/101-v1b; §3.1, §4.1), ``s`` detached (source in inference mode).
* One predictor per layer reads the **source** map: ``fc1: Dense(H_l W_l -> hidden)``
  (``hidden`` default ``H_l``, the reproduction's ``AFDNet(HW, H, 1)``), ReLU,
  ``fc2: Dense(hidden -> 1)``, both with bias, shared over the channels; optional
  per-channel bias (``channel_bias``, as AFA's ACT) before the softmax over channels.
* Batch normalisation: ``R`` is divided by the batch size ``N`` (the reproduction's
  ``/ N``; unlike DELTA's batch sum). In engine units a slice contributes
  ``lambda * sum_{i in slice} r_i`` with ``r_i = sum_l sum_c rho D`` (the engine divides
  by the global batch), so the step's gradient is the reference's.
* ``'l2'`` uses ``sqrt(sum (t - s)^2 + 1e-12)``: the fine-tuned target starts at the source,
  where an exact zero distance would give a NaN gradient.

What the predictor optimises (``afd_predictor``):

* ``'joint'`` -- the reproduction: the predictor's parameters are in the same optimiser
  and minimise the same ``lambda * R``. Because ``rho`` is a softmax, ``min_rho sum_c
  rho_c D_c`` is reached by putting all weight on the channel with the smallest distance:
  ``rho`` drifts to a one-hot on the easiest channel (a collapse) and AFD degenerates to
  distilling one channel per layer (tests/test_afd.py shows it on a fixed problem).
* ``'frozen'`` -- the predictor keeps its initial weights (``grad_req='null'``): ``rho`` is
  a fixed function of the source map (near uniform at init), i.e. a static per-sample
  channel weighting.
* ``'entropy'`` (default) -- the predictor is trained on its own objective with the
  distances stop-gradiented, plus an entropy floor::

      P = sum_l mean_n [ sum_c rho_l[n,c] * sg(D_l[n,c] / mean_c D_l[n,c]) + tau * sum_c rho log rho ]

  whose per-sample minimiser over the simplex is ``rho = softmax(-D_hat / tau)``: channels
  the target keeps close to the source (the transferable ones) get more weight, but every
  channel keeps a share (``tau = 1`` default; ``tau -> 0`` is the collapse, ``tau -> inf``
  the uniform feature-map distance). Normalising ``D`` by its channel mean makes ``tau``
  scale-free. The target still receives exactly ``lambda * rho * dD/dt`` (``rho`` is
  stop-gradiented in the target's term), and ``P`` enters the total with value 0
  (``P - sg(P)``), so the logged loss is ``CE + lambda R``. ``P`` is weighted by
  ``predictor_weight`` (1.0) rather than ``lambda``: its scale is independent of the
  task loss, so the predictor learns at the network's learning rate.

How the paper trains the predictor could not be checked against any code (the only public
code is an unofficial reproduction); ``'joint'`` reproduces that code.
"""
import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .taps import conv_output_shapes, stage_end_taps
from .transfer_common import torch_linear_init

__all__ = ['TransferabilityPredictor', 'AFDPredictors', 'afd_distances', 'afd_per_sample', 'AFD',
           'conv_output_shapes', 'AFD_NORMS', 'AFD_PREDICTORS']

AFD_NORMS = ('l2sq', 'l2')
AFD_PREDICTORS = ('entropy', 'joint', 'frozen')
_SQRT_EPS = 1e-12
_MEAN_EPS = 1e-12


class TransferabilityPredictor(HybridBlock):
    """``rho = softmax_c(fc2(relu(fc1(s.reshape(N, C, H*W)))) [+ bias_c])`` for one layer:
    (N, C, H, W) -> (N, C). ``fc1``/``fc2`` are shared over channels (``flatten=False``);
    initialised like PyTorch's ``Linear`` (``U(-1/sqrt(in), 1/sqrt(in))``)."""

    def __init__(self, channels, spatial, hidden, channel_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.spatial, self.hidden = int(channels), int(spatial), int(hidden)
        self.channel_bias = bool(channel_bias)
        with self.name_scope():
            self.fc1 = nn.Dense(self.hidden, in_units=self.spatial, flatten=False,
                                weight_initializer=torch_linear_init(self.spatial),
                                bias_initializer=torch_linear_init(self.spatial))
            self.fc2 = nn.Dense(1, in_units=self.hidden, flatten=False,
                                weight_initializer=torch_linear_init(self.hidden),
                                bias_initializer=torch_linear_init(self.hidden))
            if self.channel_bias:
                self.cbias = self.params.get('channel_bias', shape=(self.channels,), init=mx.init.Zero())

    def logits(self, F, s, cbias=None):
        e = self.fc2(F.relu(self.fc1(F.reshape(s, (0, 0, -1)))))          # (N, C, 1)
        e = F.reshape(e, (0, -1))
        if cbias is not None:
            e = F.broadcast_add(e, cbias.reshape((1, -1)))
        return e

    def hybrid_forward(self, F, s, cbias=None):
        return F.softmax(self.logits(F, s, cbias), axis=1)


class AFDPredictors(HybridBlock):
    """One :class:`TransferabilityPredictor` per tapped layer (children ``layer0``, ...)."""

    def __init__(self, shapes, hidden=None, channel_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        with self.name_scope():
            self.layers = nn.HybridSequential(prefix='')
            for c, h, w in self.shapes:
                self.layers.add(TransferabilityPredictor(c, h * w, h if hidden is None else hidden, channel_bias))

    def hybrid_forward(self, F, *maps):
        return [p(s) for p, s in zip(self.layers, maps)]


def afd_distances(source, target, norm='l2sq'):
    """``D[n, c]`` (N, C) float32: squared L2 (``'l2sq'``) or L2 (``'l2'``) distance of each
    channel's map. ``source`` should be detached."""
    if norm not in AFD_NORMS:
        raise ConfigError("afd_norm must be one of %s, got %r" % (', '.join(AFD_NORMS), norm))
    d = target.astype('float32', copy=False) - source.astype('float32', copy=False)
    sq = mx.nd.sum(mx.nd.square(d), axis=(2, 3))
    return sq if norm == 'l2sq' else mx.nd.sqrt(sq + _SQRT_EPS)


def afd_per_sample(sources, targets, rhos, norm='l2sq'):
    """``r_n = sum_l sum_c rho_l[n, c] D_l[n, c]``: (N,) NDArray (``R = mean_n r_n``)."""
    parts = [mx.nd.sum(rho * afd_distances(s, t, norm), axis=1) for s, t, rho in zip(sources, targets, rhos)]
    return mx.nd.add_n(*parts) if len(parts) > 1 else parts[0]


@REGULARIZERS.register('afd')
class AFD:
    """``--reg afd`` (see the module docstring). Follows the transfer regularizer interface
    (``name``, ``needs_features``, ``setup(net, ctx, source_weights)``, ``terms(ctx, n,
    feats_t, feats_s)``, ``param_rates``) and adds ``blocks()`` (the predictors: trained
    with the network unless frozen, saved in checkpoints, never exported) and
    ``set_shapes([(C, H, W)])`` (the tapped maps' shapes; the predictors' input size).

    Parameters: ``lambda_afd`` (default 0.01), ``afd_norm`` ('l2sq' |
    'l2'), ``afd_predictor`` ('entropy' | 'joint' | 'frozen'), ``tau`` (entropy floor, 1.0),
    ``predictor_weight`` (1.0), ``hidden`` (default: the map height ``H``),
    ``channel_bias`` (False), ``input_size`` and ``taps`` (to infer the shapes in
    :meth:`setup` when :meth:`set_shapes` was not called).
    """
    name = 'afd'
    needs_features = True
    needs_source_weights = False
    uses_w0 = False

    def __init__(self, lambda_afd=None, afd_norm='l2sq', afd_predictor='entropy', tau=1.0,
                 predictor_weight=1.0, hidden=None, channel_bias=False, input_size=None, taps=None,
                 shapes=None):
        self.lam = 0.01 if lambda_afd is None else float(lambda_afd)
        if afd_norm not in AFD_NORMS:
            raise ConfigError("afd_norm must be one of %s, got %r" % (', '.join(AFD_NORMS), afd_norm))
        if afd_predictor not in AFD_PREDICTORS:
            raise ConfigError("afd_predictor must be one of %s, got %r" % (', '.join(AFD_PREDICTORS), afd_predictor))
        if float(tau) <= 0:
            raise ConfigError('afd tau must be > 0, got %r' % (tau,))
        self.norm, self.mode, self.tau = afd_norm, afd_predictor, float(tau)
        self.predictor_weight = float(predictor_weight)
        self.hidden, self.channel_bias = hidden, bool(channel_bias)
        self.input_size, self.taps = input_size, taps
        self.predictors = None
        self.channels = None
        if shapes is not None:
            self.set_shapes(shapes)

    # ------------------------------------------------------------------ set-up
    def set_shapes(self, shapes):
        shapes = [tuple(int(v) for v in s) for s in shapes]
        if not shapes or any(len(s) != 3 for s in shapes):
            raise ConfigError('afd: shapes must be a non-empty list of (C, H, W), got %r' % (shapes,))
        if self.channels is not None and [s[0] for s in shapes] != list(self.channels):
            raise ConfigError('afd: tap channels %s do not match shapes %s' % (self.channels, shapes))
        self.predictors = AFDPredictors(shapes, self.hidden, self.channel_bias, prefix='afd_')
        if self.mode == 'frozen':
            self.predictors.collect_params().setattr('grad_req', 'null')
        return self

    def set_feature_shapes(self, shapes):
        """The transfer task's hook (:meth:`Transfer.setup`): same as :meth:`set_shapes`."""
        return self.set_shapes(shapes)

    def set_channels(self, channels):
        self.channels = [int(c) for c in channels]
        if self.predictors is not None and [s[0] for s in self.predictors.shapes] != self.channels:
            raise ConfigError('afd: tap channels %s do not match predictor shapes %s'
                              % (self.channels, self.predictors.shapes))

    def setup(self, net, ctx, source_weights=None):
        ctx = ctx if isinstance(ctx, (list, tuple)) else [ctx]
        if self.predictors is None:
            if not self.input_size:
                raise ConfigError('afd: the tapped maps\' shapes are unknown: call set_shapes() or pass input_size')
            taps = stage_end_taps(net) if self.taps is None else self.taps
            size = int(self.input_size)
            self.set_shapes(conv_output_shapes(net, taps, (1, 3, size, size)))
        params = self.predictors.collect_params()
        if any(p._data is None and not p._deferred_init for p in params.values()):
            self.predictors.initialize(ctx=list(ctx))
        else:
            params.reset_ctx(list(ctx))
        self.predictors.hybridize(static_alloc=True, static_shape=True)

    def blocks(self):
        return {'afd_predictor': self.predictors} if self.predictors is not None else {}

    def param_rates(self, rows=None):
        return {}

    def bind(self, rows):
        """Parameter-group rows (the transfer branch's interface): AFD has no parameter term."""
        return self

    # ------------------------------------------------------------------ loss
    def per_sample(self, feats_t, feats_s):
        """``(r, p)``: ``r`` (N,) the regulariser per sample (value and target gradient),
        ``p`` (N,) the predictor objective per sample (``'entropy'`` only, else None)."""
        if self.predictors is None:
            raise ConfigError('afd: predictors not built (setup was not called)')
        feats_t, feats_s = list(feats_t), list(feats_s)
        if len(feats_t) != len(feats_s) or len(feats_s) != len(self.predictors.shapes):
            raise ConfigError('afd: %d target maps, %d source maps, %d predictors'
                              % (len(feats_t), len(feats_s), len(self.predictors.shapes)))
        src = [mx.nd.stop_gradient(s.astype('float32', copy=False)) for s in feats_s]
        for i, (s, t, shp) in enumerate(zip(src, feats_t, self.predictors.shapes)):
            if tuple(s.shape[1:]) != shp or tuple(t.shape) != tuple(s.shape):
                raise ConfigError('afd: layer %d maps %s (source) / %s (target) but the predictor expects (N,)+%s'
                                  % (i, s.shape, t.shape, shp))
        rhos = self.predictors(*src)
        rhos = rhos if isinstance(rhos, (list, tuple)) else [rhos]
        dists = [afd_distances(s, t, self.norm) for s, t in zip(src, feats_t)]
        if self.mode != 'entropy':
            parts = [mx.nd.sum(rho * d, axis=1) for rho, d in zip(rhos, dists)]
            return mx.nd.add_n(*parts) if len(parts) > 1 else parts[0], None
        r_parts, p_parts = [], []
        for rho, d in zip(rhos, dists):
            r_parts.append(mx.nd.sum(mx.nd.stop_gradient(rho) * d, axis=1))
            dg = mx.nd.stop_gradient(d)
            d_hat = mx.nd.broadcast_div(dg, mx.nd.mean(dg, axis=1, keepdims=True) + _MEAN_EPS)
            ent = rho * mx.nd.log(mx.nd.maximum(rho, 1e-30))
            p_parts.append(mx.nd.sum(rho * d_hat + self.tau * ent, axis=1))
        add = (lambda xs: mx.nd.add_n(*xs) if len(xs) > 1 else xs[0])
        return add(r_parts), add(p_parts)

    def terms(self, ctx, n, feats_t, feats_s):
        r, p = self.per_sample(feats_t, feats_s)
        contrib = mx.nd.sum(r).reshape((1,)) * self.lam
        if p is not None:
            ps = mx.nd.sum(p).reshape((1,)) * self.predictor_weight
            contrib = contrib + (ps - mx.nd.stop_gradient(ps))      # value 0, gradient to the predictor only
        return [(self.name, contrib)]

    def transferability(self, feats_s):
        """The predicted ``rho`` per layer (numpy (N, C) arrays), for inspection."""
        with mx.autograd.pause():
            rhos = self.predictors(*[s.astype('float32', copy=False) for s in feats_s])
        rhos = rhos if isinstance(rhos, (list, tuple)) else [rhos]
        return [r.asnumpy() for r in rhos]
