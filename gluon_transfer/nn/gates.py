"""AFS channel gates (attentive feature selection, AFDS: Wang et al., ICLR 2020).

One :class:`AFSGate` follows one ConvBN of a residual bottleneck and rescales each output
channel of ``BN(conv(x))`` by a per-sample multiplier (the AFDS paper, section 3.2)::

    h      = relu(W · GAP(x) + b)                      (N, C_out); x = the conv's INPUT
    pi     = WTA_d(h)                                  keep the top-k dynamic channels per sample
    mult_c = m_c * ( s_c * pi_c + (1 - s_c) * gamma_c )
    out    = mult[:, :, None, None] * BN(conv(x))

* ``m`` (keep mask) and ``s`` (dynamic mask) are per-channel 0/1 vectors stored as
  parameters with ``grad_req='null'``, so checkpoints carry them. ``m_c = 0``: the channel is
  always zero (statically pruned: its row of the producing conv and its column of the
  consuming conv can be removed). ``s_c = 0``: the channel is static, its multiplier is
  the learned constant ``gamma_c`` (foldable into the BatchNorm scale/shift). Otherwise the
  channel is dynamic and takes the gate value ``pi_c``.
* Winner-take-all ``WTA_d``: among the *dynamic* channels (``m_c = s_c = 1``) each sample
  keeps the ``k`` largest gate values and zeroes the others (``n_dyn`` = number of dynamic
  channels, :func:`wta_keep_count`): ``wta_round='ceil'`` (default) ``k = ceil(d * n_dyn -
  1e-3)`` (the ``-1e-3`` makes float rounding of ``d * n_dyn`` harmless, so ``d = 0.9,
  n_dyn = 10`` gives ``k = 9``; never 0 for ``n_dyn >= 1``), ``wta_round='round'`` the
  reproduction's ``k = round(d * n_dyn)`` (Python's ``round``: halves to even, a half within
  1e-3 counts as a half; ``d = 0.9, n_dyn = 16`` gives 14 where ``ceil`` gives 15).
  Ties are broken toward the lower channel index (the ranking key adds an index term far
  below float32 resolution, see :func:`wta_mask`), so exactly ``k`` channels are kept per
  sample, deterministically. ``d`` is stored like the masks
  (a (1,) parameter ``density``, ``grad_req='null'``), so it can change between training
  phases without rebuilding a hybridized graph, and checkpoints carry it.
* The reproduction (uhomelee, ``afsnet.py``) differs: ``m``/``s`` are per-layer scalars
  (the paper: per channel), the WTA count for conv3 uses the wrong width, gamma is
  ``U[0,1)`` and multiplies the *WTA-masked* BN output, and it adds a ReLU after conv3
  before the residual add (``relu_before_add`` in :mod:`gluon_transfer.models.afs_resnet`
  keeps that option). Here WTA acts on ``pi`` only; static channels are never WTA-dropped,
  because a channel that is always on is exactly what folding into BN assumes.

Gate input (``input_norm``): ``'none'`` (default, the reproduction) feeds ``GAP(x)`` to
the FC; ``'l2'`` feeds ``GAP(x) / (||GAP(x)||_2 + 1e-6)`` (per sample, over the input
channels). Why: with ``'none'`` the gate value grows linearly with the scale of ``x``
and multiplies ``BN(conv(x))``, which in inference mode (running statistics, an affine
map) grows linearly too, so every gated layer answers **quadratically** to the scale of
its input and 48 gates in series turn an input with atypically large activations into
float32 overflow (measured: 10 of 1,000 val images of the CIFAR transfer task, whose
plain logits are 30-150x the median, give |logits| > 1e6 or inf with gate weights
|W| <= 0.02; docs/transfer_results.md). ``'l2'`` makes ``h`` independent of the scale
of ``x`` (bounded by ``||W_c|| + b_c``), so a gated layer is linear in its input again.
The L2 norm (not an RMS) keeps pruning exact: removed input channels are exactly 0 and
do not change it. The class default is the reproduction's ``'none'``; ``train_transfer.py
--afs`` uses ``'l2'`` unless ``--afs-gate-norm none``.

Initialisation (``init``): ``'identity'`` (default) sets ``W = 0, b = 1, gamma = 1`` so
that with ``d = 1`` and all masks 1 the multiplier is exactly 1 and a pretrained network
is unchanged at step 0; ``'random'`` is the reproduction's (PyTorch ``Linear`` default
``U(-1/sqrt(C_in), 1/sqrt(C_in))`` for ``W`` and ``b``, ``gamma ~ U[0, 1)``), which
alters the pretrained function from the start.
"""
import math

import numpy as np
import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from ..errors import ConfigError

__all__ = ['AFSGate', 'wta_keep_count', 'wta_mask', 'WTA_TOL', 'WTA_ROUNDINGS', 'check_density', 'check_wta_round',
           'GATE_INPUT_NORMS']

WTA_TOL = 1e-3
WTA_ROUNDINGS = ('ceil', 'round')
GATE_INPUT_NORMS = ('none', 'l2')
GATE_NORM_EPS = 1e-6
# Tie-break terms of the ranking key (float64): a relative one far below float32 resolution
# (2^-40 * C <= 2^-28 for C <= 4096) and an absolute one below any float32/16 subnormal.
_REL_TIE = 2.0 ** -40
_ABS_TIE = 2.0 ** -200


def check_density(density):
    d = float(density)
    if not 0.0 < d <= 1.0:
        raise ConfigError('AFS density d must be in (0, 1], got %r' % (density,))
    return d


def check_wta_round(rounding):
    if rounding not in WTA_ROUNDINGS:
        raise ConfigError('AFS WTA rounding must be one of %s, got %r' % (', '.join(WTA_ROUNDINGS), rounding))
    return rounding


def wta_keep_count(density, n_dynamic, rounding='ceil'):
    """Channels WTA keeps per sample: ``ceil(d * n - 1e-3)`` (``rounding='ceil'``) or
    ``round(d * n)`` halves to even, a half within 1e-3 counting as a half (``'round'``, the
    reproduction's Python ``round``); 0 when ``n = 0``."""
    d = check_density(density)
    n = int(n_dynamic)
    if check_wta_round(rounding) == 'ceil':
        return max(0, int(math.ceil(d * n - WTA_TOL)))
    x = d * n
    f = math.floor(x)
    r = x - f
    if abs(r - 0.5) <= WTA_TOL:
        return int(f + (f % 2))                   # a half: to the even neighbour
    return int(f + (r > 0.5))


def _keep_k(F, n_dyn, density, rounding):
    """:func:`wta_keep_count` as graph operations on float32 (1,) arrays."""
    x = n_dyn * density
    if rounding == 'ceil':
        return F.ceil(x - WTA_TOL)
    f = F.floor(x)
    r = x - f
    tie = F.abs(r - 0.5) <= WTA_TOL
    odd = f - 2 * F.floor(f * 0.5)
    return f + (r > 0.5 + WTA_TOL) + tie * odd


def wta_mask(F, h, dyn, density, rounding='ceil'):
    """0/1 mask (same shape and dtype as ``h``, (N, C)) keeping per row the
    ``k = wta_keep_count(d, n_dyn, rounding)`` largest entries of ``h`` among the columns where
    ``dyn`` (a (C,) 0/1 vector) is 1.

    ``h`` must be >= 0 (a ReLU output): excluded columns get the key -1 and so rank last.
    The float64 key ``v * (1 + (C-1-c) 2^-40) + (C-1-c) 2^-200`` orders equal values by
    lower index ``c``, keeps the order of distinct float32 values and makes every key
    distinct, so "key >= the k-th largest key" (one sort and a pick) keeps exactly ``k``
    entries per row whatever the ties (``density``: a float or a (1,) array). ``k`` is
    computed in float32 and the key in float64 whatever the dtype of ``h`` and ``dyn``
    (float16 included), so a float16 network keeps the same channels as a float32 one
    with the same gate values. Works on NDArray and Symbol; the mask carries no gradient."""
    v = F.broadcast_add(F.broadcast_mul(h, dyn.reshape((1, -1))), (dyn - 1).reshape((1, -1)))
    v64 = F.cast(v, dtype='float64')
    idx = F.contrib.arange_like(v64, axis=1)                     # (C,) 0..C-1, float64
    rev = F.broadcast_sub(F.max(idx).reshape((1,)), idx)          # C-1-c
    key = F.broadcast_add(F.broadcast_mul(v64, (1.0 + rev * _REL_TIE).reshape((1, -1))),
                          (rev * _ABS_TIE).reshape((1, -1)))
    # k in float32 whatever the dtype of h: float16 cannot hold every count above 2048 nor
    # d * n to the 1e-3 the tolerance needs (0.9 * 2048 = 1843.2 would become 1843).
    n_dyn = F.sum(F.cast(dyn, dtype='float32'))
    check_wta_round(rounding)
    if isinstance(density, (int, float)):
        k = _keep_k(F, n_dyn, float(density), rounding)
    else:                                             # a (1,) array/symbol (the gate's parameter)
        k = _keep_k(F, n_dyn, F.cast(density, dtype='float32'), rounding)   # (1,) float32: channels to keep
    # Keys are distinct, so "key >= the k-th largest key" keeps exactly k per row.
    ranked = F.sort(key, axis=1, is_ascend=False)
    col = F.slice_axis(key, axis=1, begin=0, end=1).reshape((-1,))        # (N,) shape donor
    idx = F.broadcast_add(F.zeros_like(F.cast(col, dtype='float32')), F.maximum(k - 1, 0))
    thr = F.pick(ranked, idx, axis=1, keepdims=True)                       # (N, 1)
    keep = F.broadcast_logical_and(F.broadcast_greater_equal(key, thr),    # (N, C) float64 0/1
                                   F.cast(k >= 1, dtype='float64').reshape((1, 1)))
    # 0/1 in the dtype of h (where's condition may have any dtype), so h * mask needs no cast
    return F.BlockGrad(F.where(keep, F.ones_like(h), F.zeros_like(h)))


class AFSGate(HybridBlock):
    """Per-channel AFS gate for one ConvBN (see the module docstring).

    ``gate(x, y)``: ``x`` the conv's input (N, C_in, H, W), ``y = BN(conv(x))``
    (N, C_out, H', W'); returns ``mult * y``. With ``enabled=False`` it returns ``y``
    unchanged (the plain network); flip it with :meth:`set_enabled` and hybridize again.

    Parameters: ``fc`` (Dense C_in -> C_out), ``gamma`` (C_out,), ``mask_m``, ``mask_s``
    (C_out,) and ``density`` (1,) (the last three ``grad_req='null'``). ``collecting``:
    while not None (imperative mode only) the forward pass appends ``(pi, mean_hw relu(y),
    mean_hw |y|, h)``, each (N, C_out), ``pi`` computed with all masks treated as 1 (``h``: the
    gate value before WTA) -- what
    :func:`gluon_transfer.afds.collect_gate_statistics` reads.
    """

    def __init__(self, in_channels, channels, density=0.9, enabled=True, init='identity', input_norm='none',
                 wta_round='ceil', **kwargs):
        super().__init__(**kwargs)
        if init not in ('identity', 'random'):
            raise ConfigError("AFS gate init must be 'identity' or 'random', got %r" % (init,))
        if input_norm not in GATE_INPUT_NORMS:
            raise ConfigError('AFS gate input_norm must be one of %s, got %r' % (', '.join(GATE_INPUT_NORMS),
                                                                                 input_norm))
        self.input_norm = input_norm
        self.wta_round = check_wta_round(wta_round)
        self.in_channels = int(in_channels)
        self.channels = int(channels)
        self.density = check_density(density)
        self.enabled = bool(enabled)
        self.collecting = None
        if init == 'identity':
            w_init, b_init, g_init = mx.init.Zero(), mx.init.One(), mx.init.One()
        else:
            bound = 1.0 / math.sqrt(self.in_channels)
            w_init = b_init = mx.init.Uniform(bound)
            g_init = _UniformUnit()
        with self.name_scope():
            self.fc = nn.Dense(self.channels, in_units=self.in_channels, weight_initializer=w_init,
                               bias_initializer=b_init, prefix='fc_')
            self.gamma = self.params.get('gamma', shape=(self.channels,), init=g_init)
            self.mask_m = self.params.get('mask_m', shape=(self.channels,), init=mx.init.One(),
                                          grad_req='null', differentiable=False)
            self.mask_s = self.params.get('mask_s', shape=(self.channels,), init=mx.init.One(),
                                          grad_req='null', differentiable=False)
            self.wta_density = self.params.get('density', shape=(1,), init=mx.init.Constant(self.density),
                                               grad_req='null', differentiable=False)

    def cast(self, dtype):
        """Like ``HybridBlock.cast``, but a float16 cast leaves the WTA density in float32 (as
        Gluon's BatchNorm keeps its parameters): float16's 0.9 is 0.89990, which would change
        ``k = ceil(d * n - 1e-3)`` for wide layers (n = 2048: 1843 instead of 1844). The
        density is never cast at all, so its value is not rounded on the way."""
        if np.dtype(dtype) != np.float16:
            return super().cast(dtype)
        self._clear_cached_op()
        for child in self._children.values():
            child.cast(dtype)
        for param in self.params.values():
            if param is not self.wta_density:
                param.cast(dtype)
        return None

    def set_enabled(self, flag):
        self.enabled = bool(flag)

    def current_density(self):
        """``d`` from the parameter (the constructor value before initialisation)."""
        p = self.wta_density
        if p._data is None:
            return self.density
        return float(p.data().asnumpy()[0])

    def set_density(self, density):
        self.density = check_density(density)
        if self.wta_density._data is not None:
            self.wta_density.set_data(mx.nd.full((1,), self.density))

    def gate_values(self, F, x):
        """``h = relu(fc(GAP(x)))`` (``input_norm='l2'``: ``GAP(x)`` divided by its L2
        norm per sample first), (N, C_out)."""
        g = global_avg_pool(F, x)
        if self.input_norm == 'l2':
            g = F.broadcast_div(g, F.sqrt(F.sum(F.square(g), axis=1, keepdims=True)) + GATE_NORM_EPS)
        return F.relu(self.fc(g))

    def multiplier(self, F, x, y, gamma, mask_m, mask_s, wta_density):
        """The per-sample channel multiplier (N, C_out) for conv input ``x`` and ``y = BN(conv(x))``."""
        h = self.gate_values(F, x)
        dyn = mask_m * mask_s
        if self.collecting is not None and F is mx.nd:
            pi_all = h * wta_mask(F, h, mask_m.ones_like(), wta_density, self.wta_round)
            # per sample and channel: pi, and the H x W means of relu(y) and |y| (pi >= 0, so
            # pi * mean relu(y) is the mean of the gated channel after its ReLU)
            self.collecting.append((pi_all.astype('float32'), F.mean(F.relu(y), axis=(2, 3)).astype('float32'),
                                    F.mean(F.abs(y), axis=(2, 3)).astype('float32'), h.astype('float32')))
        h = h * wta_mask(F, h, dyn, wta_density, self.wta_round)
        static = F.broadcast_mul(F.ones_like(h), (mask_m * (1 - mask_s) * gamma).reshape((1, -1)))
        return F.broadcast_add(F.broadcast_mul(h, dyn.reshape((1, -1))), static)

    def hybrid_forward(self, F, x, y, gamma, mask_m, mask_s, wta_density):
        if not self.enabled:
            return y
        mult = self.multiplier(F, x, y, gamma, mask_m, mask_s, wta_density)
        return scale_channels(F, y, mult)

    def __repr__(self):
        return '%s(%d -> %d, density=%g, wta_round=%s, enabled=%s)' % (
            type(self).__name__, self.in_channels, self.channels, self.density, self.wta_round, self.enabled)


def _recording(F):
    """True while an imperative forward is recorded for a backward pass (training)."""
    return F is mx.nd and mx.autograd.is_recording()


def _sum_hw(x, scale=1.0):
    """``scale * sum_{h,w} x``, (N, C), of an (N, C, H, W) NDArray as one matrix product: ``x``
    as an (N*C, H*W) matrix times a column of ``scale``s."""
    n, c, h, w = x.shape
    col = mx.nd.full((1, h * w), scale, ctx=x.context, dtype=x.dtype)
    return mx.nd.FullyConnected(x.reshape((-3, -1)), col, no_bias=True, num_hidden=1, flatten=False).reshape((n, c))


def global_avg_pool(F, x):
    """``GAP(x)``: the (N, C) means of an (N, C, H, W) map over H x W.

    Two formulations of the same function, chosen by what is fast in MXNet 1.9.1 on CPU:

    * inference and hybridized graphs: oneDNN's global average ``Pooling`` (layout-native:
      in a hybridized inference graph the generic reduction ``F.mean`` over a oneDNN-blocked
      map cost as much as the convolutions; ResNet-50 with 48 gates, 224 px: the pruned
      export ran 1.45x faster with ``Pooling``);
    * recorded imperative forwards (training): one matrix product, ``x`` as an
      (N*C, H*W) matrix times the column ``1 / (H*W)``. Pooling's backward falls off
      oneDNN's fast path for some shapes: on CIFAR ResNets' 16-channel 32 x 32 maps, batch
      48, forward+backward took 73 ms with ``Pooling``, 5.7 ms with ``F.mean`` and 0.8 ms as
      a product (docs/benchmarks.md, "AFS gates in training"), which made an AFS ResNet-20
      train ~4x slower than the plain network."""
    if _recording(F):
        return _sum_hw(x, 1.0 / (x.shape[2] * x.shape[3]))
    return F.Pooling(x, global_pool=True, pool_type='avg', kernel=(1, 1)).reshape((0, -1))


class _ChannelScale(mx.autograd.Function):
    """``out = y * mult[:, :, None, None]`` with a hand-written backward:
    ``dy = dout * mult[:, :, None, None]`` and ``dmult = sum_{h,w} dout * y``, the latter
    as one element-wise product and one matrix product with a column of ones."""

    def forward(self, y, mult):
        self.save_for_backward(y, mult)
        return mx.nd.broadcast_mul(y, mult.reshape((0, 0, 1, 1)))

    def backward(self, dout):
        y, mult = self.saved_tensors
        return mx.nd.broadcast_mul(dout, mult.reshape((0, 0, 1, 1))), _sum_hw(dout * y)


def scale_channels(F, y, mult):
    """``y * mult[:, :, None, None]`` for an (N, C, H, W) map and (N, C) multipliers.

    In recorded imperative forwards (training) the backward is written by hand
    (:class:`_ChannelScale`): MXNet's ``broadcast_mul`` backward computes the multipliers'
    gradient ``sum_{h,w} dout * y`` with its generic reduction, 3-4x slower on the shapes of
    a CIFAR ResNet (48 x 16 x 32 x 32, forward+backward: 29 ms vs 9 ms). Elsewhere (inference,
    hybridized graphs) ``broadcast_mul``."""
    if _recording(F):
        return _ChannelScale()(y, mult)
    return F.broadcast_mul(y, mult.reshape((0, 0, 1, 1)))


class _UniformUnit(mx.init.Initializer):
    """``U[0, 1)`` (the reproduction's gamma)."""

    def _init_weight(self, name, arr):
        mx.random.uniform(0, 1, out=arr)

    _init_default = _init_weight
