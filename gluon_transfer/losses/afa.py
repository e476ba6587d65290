"""AFA: attentive feature alignment (Xie et al., Neural Networks 2021), two regularizers.

Math as xiezheng-cs/AFA ``models/regularizer.py`` computes it.
``s``/``t``: the frozen source's and the target's raw conv outputs at tap ``l``, shape
(N, C, H, W), ``HW = H * W``; ``s`` is detached (no gradient ever reaches the source).
The attention modules read ``s`` only.

**AST** (attentive spatial transfer, stage 1, reference ``pixel_att_fea_map_learn``)::

    p   = mean_c s                                     (N, HW)
    a   = softmax_HW( fc2( relu( fc1(p) ) ) )          fc1: HW -> Hd, no bias; fc2: Hd -> HW, bias
    L_l = 0.5 / N * sum_{n,pos} sum_c ( (t - s)[n,c,pos] * a[n,pos] * HW )^2

The weight sits inside the square (enters squared); ``* HW`` makes uniform weights equal 1,
so uniform attention gives the plain feature distance ``0.5/N * ||t - s||^2``.

**ACT** (attentive channel transfer, stage 2, reference ``channel_att_fea_map_learn``)::

    e   = fc2( relu( fc1( s.view(N, C, HW) ) ) )       (N, C); fc1: HW -> Hd, fc2: Hd -> 1, no biases
    a   = softmax_C( e + bias )                        bias: (C,), zeros at start
    L_l = 0.5 / N * sum_{n,c} C * a[n,c] * ||(t - s)[n,c,:]||^2

Linear in ``a``, times ``C``: uniform attention gives ``0.5/N * sum ||t - s||^2`` again.

Hidden size ``Hd``: the reference builds both modules with ``feature_size`` = the map's
spatial height (``Linear(fs*fs, fs)``), i.e. 56/28/14/7 for ResNet at 224 px and 28/14/14/7
for MobileNetV2; :func:`attention_hidden` returns ``H``. Initialisation follows PyTorch's
``nn.Linear`` default (weights and biases uniform in ``+-1/sqrt(fan_in)``); the ACT bias
starts at zero as in the reference.

Objective (reference ``framework.py::train``)::

    loss = mean CE + alpha * sum_l L_l + beta * sum_{classifier params} 0.5 * ||theta||^2

(the classifier term includes its bias; the optimizer's weight decay is 0.) The attention
modules are trained by the same optimizer on the same loss (no adversarial step, no weight
decay: ``wd_mult = 0``) and are never exported with the network.

Reference settings (:data:`PRESETS`, from the hocon files the AFA repository ships):
batch 64, 4500 iterations, SGD momentum 0.9, weight decay 0, one x0.1 step at 0.67 of
training, beta 0.01, 224 px; ResNet-101 lr 0.01 / 0.001 and alpha 0.1 / 0.15 (stage 1 /
stage 2), MobileNetV2 lr 0.01 / 0.001 and alpha 0.09 / 0.04. Taps (:func:`default_taps`):
ResNet stage ends, MobileNetV2's projection convs of blocks 5/9/13/17, shapes checked
(:func:`check_taps`). The two-stage procedure is :mod:`gluon_transfer.methods.afa`.

Engine units (``gluon_transfer.engine.tasks``): ``L_l`` is a batch MEAN of per-sample terms
``omega_n = 0.5 * sum_{c,pos}(...)`` -- the softmaxes are per sample, so the split is exact.
A device slice of ``n`` samples therefore contributes ``n * (slice mean) = alpha * sum_{i in
slice} omega_i`` and the classifier term ``n * beta * 0.5 ||theta||^2``; after
``trainer.step(B)`` the gradient is the global-batch reference gradient however the batch
is split over devices. Unlike DELTA (which sums over the batch), nothing here grows with B.
"""
import mxnet as mx
from mxnet import gluon

from ..errors import ConfigError
from ..registry import REGULARIZERS
from .l2sp import ParamPenalty
from .taps import (check_tap_shapes, conv_paths, is_mobilenetv2, mobilenetv2_taps, stage_end_taps,
                   MOBILENETV2_TAP_CHANNELS, MOBILENETV2_TAP_STRIDES, STAGE_END_STRIDES)
from .transfer_common import head_keys, torch_linear_init

__all__ = ['SpatialAttention', 'ChannelAttention', 'attention_hidden', 'afa_ast_per_sample',
           'afa_act_per_sample', 'afa_ast_loss', 'afa_act_loss', 'AFARegularizer', 'AFASpatial',
           'AFAChannel', 'COMMON', 'PRESETS', 'preset_for', 'default_taps', 'resnet_stage_end_taps', 'check_taps']


# ------------------------------------------------------------------ reference settings
# Settings every hocon file of the AFA repository shares.
COMMON = {'batch_size': 64, 'max_iter': 4500, 'momentum': 0.9, 'wd': 0.0, 'lr_decay': 0.1,
          'decay_at': 0.67, 'beta': 0.01, 'input_size': 224}
PRESETS = {
    'resnet101': {'ast': dict(COMMON, name='ResNet-101', lr=0.01, alpha=0.1, seed=1),
                  'act': dict(COMMON, name='ResNet-101', lr=0.001, alpha=0.15, seed=2)},
    'mobilenetv2': {'ast': dict(COMMON, name='MobileNetV2', lr=0.01, alpha=0.09, seed=1),
                    'act': dict(COMMON, name='MobileNetV2', lr=0.001, alpha=0.04, seed=5)},
}


def preset_for(model):
    """The reference settings for ``model``: ``{'ast': {...}, 'act': {...}}``. MobileNetV2
    names get the MobileNetV2 hocons, every other network the ResNet-101 ones (the only
    other configuration shipped)."""
    name = str(model).lower().replace('_', '').replace('-', '')
    return PRESETS['mobilenetv2' if 'mobilenetv2' in name else 'resnet101']


# ------------------------------------------------------------------ taps
def resnet_stage_end_taps(net):
    """The last convolution of the main path of the last block of every residual stage
    (``conv3`` of a bottleneck, ``conv2`` of a basic block, ``body.3`` of a CIFAR ResNet-v1
    block): DELTA's taps (:func:`gluon_transfer.losses.taps.stage_end_taps`)."""
    try:
        return stage_end_taps(net)
    except ConfigError:
        raise ConfigError('%s has neither residual stages (layer1..layerN, or stage<K> blocks inside features) nor '
                          'MobileNetV2 blocks: name the feature taps explicitly' % type(net).__name__) from None


def default_taps(net):
    """AFA's hooked layers for ``net``: ResNets -- the last convolution of the last block
    of each stage (raw output, before BN and the residual add: ``layer1.2.conv3``,
    ``layer2.3.conv3``, ``layer3.22.conv3``, ``layer4.2.conv3`` for ``resnet101_v1b``;
    ``features.{2,3,4}.2.body.3`` for ``cifar_resnet20_v1``);
    MobileNetV2 -- the projection convs of blocks 5/9/13/17
    (:func:`gluon_transfer.losses.taps.mobilenetv2_taps`)."""
    return mobilenetv2_taps(net) if is_mobilenetv2(net) else resnet_stage_end_taps(net)


def check_taps(net, taps, input_size):
    """``[(C, H, W)]`` of ``taps`` at ``input_size``, checked: AFA's MobileNetV2 taps must
    have 32/64/96/320 channels (width 1.0) at strides 8/16/16/32, ResNet stage ends strides
    4/8/16/32 (ImageNet ResNets, 4 stages) or 1/2/4 (CIFAR ResNets, 3 stages). Other tap
    lists are only checked to be square maps."""
    taps = list(taps)
    if is_mobilenetv2(net) and taps == mobilenetv2_taps(net):
        widths = [conv_paths(net)[t]._channels for t in taps]
        channels = MOBILENETV2_TAP_CHANNELS if widths[-1] == 320 else None   # other multipliers: strides only
        return check_tap_shapes(net, taps, input_size, channels, MOBILENETV2_TAP_STRIDES)
    if not is_mobilenetv2(net) and len(taps) in STAGE_END_STRIDES and taps == resnet_stage_end_taps(net):
        return check_tap_shapes(net, taps, input_size, None, STAGE_END_STRIDES[len(taps)])
    shapes = check_tap_shapes(net, taps, input_size)
    for t, (c, h, w) in zip(taps, shapes):
        if h != w:
            raise ConfigError('feature tap %s is %dx%d: AFA attention needs square maps' % (t, h, w))
    return shapes


# ------------------------------------------------------------------ attention modules
def attention_hidden(shape):
    """Hidden width of an AFA attention module for a ``(C, H, W)`` map: ``H`` (the
    reference's ``feature_size``; its maps are square)."""
    return int(shape[1])


class SpatialAttention(gluon.HybridBlock):
    """AST attention: ``(N, C, H, W)`` source map -> ``(N, HW)`` softmax weights over positions.

    ``fc1``: Dense ``hw -> hidden`` without bias; ``fc2``: Dense ``hidden -> hw`` with bias."""

    def __init__(self, hw, hidden, **kwargs):
        super().__init__(**kwargs)
        self.hw, self.hidden = int(hw), int(hidden)
        with self.name_scope():
            self.fc1 = gluon.nn.Dense(self.hidden, in_units=self.hw, use_bias=False,
                                      weight_initializer=torch_linear_init(self.hw))
            self.fc2 = gluon.nn.Dense(self.hw, in_units=self.hidden, use_bias=True,
                                      weight_initializer=torch_linear_init(self.hidden),
                                      bias_initializer=torch_linear_init(self.hidden))

    def hybrid_forward(self, F, s):
        x = s.reshape((0, 0, -1))                                      # (N, C, HW)
        # mean over channels as a (C x HW)^T (C x 1) product: MXNet's CPU reduction over a
        # middle axis is several times slower than this GEMM (bench/bench_afa.py).
        ones = F.ones_like(F.slice_axis(x, axis=2, begin=0, end=1))   # (N, C, 1)
        total = F.batch_dot(x, ones, transpose_a=True)                # (N, HW, 1)
        p = F.broadcast_div(total, F.sum(ones, axis=1, keepdims=True)).reshape((0, -1))
        return F.softmax(self.fc2(F.relu(self.fc1(p))), axis=-1)


class ChannelAttention(gluon.HybridBlock):
    """ACT attention: ``(N, C, H, W)`` source map -> ``(N, C)`` softmax weights over channels.

    ``fc1``: Dense ``hw -> hidden``, ``fc2``: Dense ``hidden -> 1`` (both without bias, applied
    to every channel's flattened map); ``bias``: a ``(C,)`` parameter added before the softmax."""

    def __init__(self, hw, hidden, channels, **kwargs):
        super().__init__(**kwargs)
        self.hw, self.hidden, self.channels = int(hw), int(hidden), int(channels)
        with self.name_scope():
            self.fc1 = gluon.nn.Dense(self.hidden, in_units=self.hw, use_bias=False, flatten=False,
                                      weight_initializer=torch_linear_init(self.hw))
            self.fc2 = gluon.nn.Dense(1, in_units=self.hidden, use_bias=False, flatten=False,
                                      weight_initializer=torch_linear_init(self.hidden))
            self.bias = self.params.get('bias', shape=(self.channels,), init='zeros')

    def hybrid_forward(self, F, s, bias):
        x = s.reshape((0, 0, -1))                              # (N, C, HW)
        e = self.fc2(F.relu(self.fc1(x))).reshape((0, -1))     # (N, C)
        return F.softmax(F.broadcast_add(e, bias.reshape((1, -1))), axis=-1)


def _pair(source, target):
    if source.shape != target.shape or len(source.shape) != 4:
        raise ConfigError('AFA: source map %s and target map %s must be equal (N, C, H, W) shapes'
                          % (source.shape, target.shape))
    # Stop-gradient on the source whatever the caller did (the reference's s.detach()).
    return source.detach().astype('float32', copy=False), target.astype('float32', copy=False)


def _weights(attention, s, want):
    a = attention(s) if isinstance(attention, gluon.Block) else attention
    a = a.astype('float32', copy=False)
    if a.shape != want:
        raise ConfigError('AFA: attention weights of shape %s, expected %s' % (a.shape, want))
    return a


def afa_ast_per_sample(source, target, attention):
    """``omega_n = 0.5 * HW^2 * sum_pos a[n,pos]^2 * sum_c (t - s)[n,c,pos]^2``: (N,) NDArray.
    ``attention``: a :class:`SpatialAttention` (called on the detached source) or the
    ``(N, HW)`` weights themselves."""
    s, t = _pair(source, target)
    n, _, h, w = s.shape
    a = _weights(attention, s, (n, h * w))
    # sum over channels as a GEMM with a ones vector (faster than a middle-axis reduction on CPU)
    sq = mx.nd.square(t - s).reshape((0, 0, -1))                       # (N, C, HW)
    d2 = mx.nd.batch_dot(sq, mx.nd.ones((n, sq.shape[1], 1), ctx=sq.context), transpose_a=True).reshape((0, -1))
    return mx.nd.sum(mx.nd.square(a) * d2, axis=1) * (0.5 * float(h * w) ** 2)


def afa_act_per_sample(source, target, attention):
    """``omega_n = 0.5 * C * sum_c a[n,c] * ||(t - s)[n,c,:]||^2``: (N,) NDArray.
    ``attention``: a :class:`ChannelAttention` or the ``(N, C)`` weights."""
    s, t = _pair(source, target)
    n, c, _, _ = s.shape
    a = _weights(attention, s, (n, c))
    d2 = mx.nd.sum(mx.nd.square(t - s), axis=(2, 3))                   # (N, C)
    return mx.nd.sum(a * d2, axis=1) * (0.5 * c)


def afa_ast_loss(source, target, attention):
    """One layer's AST loss ``0.5/N * sum ((t - s) * a * HW)^2``: a (1,) NDArray."""
    return mx.nd.mean(afa_ast_per_sample(source, target, attention)).reshape((1,))


def afa_act_loss(source, target, attention):
    """One layer's ACT loss ``0.5/N * sum_{n,c} C * a * ||t - s||^2``: a (1,) NDArray."""
    return mx.nd.mean(afa_act_per_sample(source, target, attention)).reshape((1,))


# ------------------------------------------------------------------ regularizers
class AFARegularizer(ParamPenalty):
    """A transfer regularizer (the ``Regularizer`` interface of the
    :class:`~gluon_transfer.engine.tasks.Transfer` task): ``alpha * sum_l L_l`` with learned
    attention per tap, plus ``beta * 0.5 * ||classifier||^2`` (:class:`ParamPenalty`'s
    ``<name>_new`` term).

    Lifecycle: the task asks :meth:`default_taps` (AFA's hooked layers, shapes checked at
    ``input_size``) unless ``--taps`` names others, calls ``set_feature_shapes([(C, H, W),
    ...])`` with the taps' shapes at the training crop (one attention module per tap), then
    ``setup(net, ctx)`` (initialises the modules on ``ctx`` with ``wd_mult = 0``; the
    classifier term covers the rows bound by ``bind`` or, unbound, the network's classifier
    child), then per device slice ``terms(ctx, n, feats_t, feats_s)`` ->
    ``[(name, contribution)]`` in the engine's "sum over the slice" units (module
    docstring). :meth:`blocks` returns the attention modules for the trainer and the
    checkpoints (never exported).

    ``alpha`` default: ``model``'s reference value (:data:`PRESETS`:
    ResNet-101 0.1 / 0.15, MobileNetV2 0.09 / 0.04 for AST / ACT); ``beta`` 0.01.
    """
    name = 'afa'
    stage = None
    needs_features = True

    def __init__(self, alpha=None, beta=None, model=None, seed=0, input_size=None):
        super().__init__()
        ref = preset_for(model or 'resnet101_v1b')[self.stage]
        self.alpha = float(ref['alpha'] if alpha is None else alpha)
        self.beta = float(ref['beta'] if beta is None else beta)
        self.seed = int(seed)
        self.input_size = int(input_size) if input_size else None
        self.shapes = None
        self.modules = None

    def param_rates(self, rows):
        """Dry-run listing rows: the classifier at ``beta`` toward 0."""
        return self.classifier_rates(rows)

    def default_taps(self, net):
        """AFA's hooked layers of ``net`` (:func:`default_taps`), their channels/strides
        checked at ``input_size`` when known (:func:`check_taps`)."""
        taps = default_taps(net)
        if self.input_size:
            check_taps(net, taps, self.input_size)
        return taps

    def set_channels(self, channels):
        if self.shapes is not None and [s[0] for s in self.shapes] != list(channels):
            raise ConfigError('%s: taps have channels %s but the feature shapes say %s'
                              % (self.name, list(channels), [s[0] for s in self.shapes]))

    # AFA specifics -----------------------------------------------------------
    def make_module(self, shape):
        raise NotImplementedError

    def set_feature_shapes(self, shapes):
        """Build the attention modules for taps of shapes ``[(C, H, W)]``."""
        shapes = [tuple(int(v) for v in s) for s in shapes]
        if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
            raise ConfigError('%s: feature shapes must be a non-empty list of (C, H, W), got %r' % (self.name, shapes))
        self.shapes = shapes
        self.modules = gluon.nn.HybridSequential(prefix=self.name.replace('-', '_') + '_')
        with self.modules.name_scope():
            for s in shapes:
                self.modules.add(self.make_module(s))
        return self.modules

    def blocks(self):
        return {} if self.modules is None else {self.name.replace('-', '_'): self.modules}

    def setup(self, net, ctx, source_weights=None):
        if self.modules is None:
            raise ConfigError('%s: set_feature_shapes was not called before setup' % self.name)
        ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
        params = self.modules.collect_params()
        mx.random.seed(self.seed)
        params.initialize(ctx=ctx, force_reinit=True)
        params.setattr('wd_mult', 0.0)        # the reference puts them in a no-WD group
        if self.table is None:                # not bound to a parameter plan: the classifier child
            self.table = {k: (self.beta, '0') for k in head_keys(net)} if self.beta else {}
        super().setup(net, ctx, source_weights)

    def per_sample(self, feats_t, feats_s):
        """``sum_l omega_{l,n}``: (N,) float32 NDArray (the attention modules run on ``s``)."""
        if self.modules is None:
            raise ConfigError('%s: not set up' % self.name)
        feats_t, feats_s = list(feats_t), list(feats_s)
        if not (len(feats_t) == len(feats_s) == len(self.modules)):
            raise ConfigError('%s: %d target maps, %d source maps, %d attention modules'
                              % (self.name, len(feats_t), len(feats_s), len(self.modules)))
        parts = []
        for i, (t, s) in enumerate(zip(feats_t, feats_s)):
            if tuple(s.shape[1:]) != self.shapes[i]:
                raise ConfigError('%s: tap %d map is %s but the attention was built for %s (another input '
                                  'size?)' % (self.name, i, tuple(s.shape[1:]), self.shapes[i]))
            parts.append(self.layer_per_sample(s, t, self.modules[i]))
        return mx.nd.add_n(*parts) if len(parts) > 1 else parts[0]

    def terms(self, ctx, n, feats_t, feats_s):
        omega = self.per_sample(feats_t, feats_s)
        return [(self.name, mx.nd.sum(omega).reshape((1,)) * self.alpha)] + self.param_terms(ctx, n)


@REGULARIZERS.register('afa-ast')
class AFASpatial(AFARegularizer):
    """``--reg afa-ast``: stage 1 of AFA (see the module docstring)."""
    name = 'afa-ast'
    stage = 'ast'

    def make_module(self, shape):
        c, h, w = shape
        return SpatialAttention(h * w, attention_hidden(shape))

    @staticmethod
    def layer_per_sample(s, t, module):
        return afa_ast_per_sample(s, t, module)


@REGULARIZERS.register('afa-act')
class AFAChannel(AFARegularizer):
    """``--reg afa-act``: stage 2 of AFA (see the module docstring)."""
    name = 'afa-act'
    stage = 'act'

    def make_module(self, shape):
        c, h, w = shape
        return ChannelAttention(h * w, attention_hidden(shape), c)

    @staticmethod
    def layer_per_sample(s, t, module):
        return afa_act_per_sample(s, t, module)
