"""Wide residual networks for CIFAR, as ``szagoruyko/attention-transfer`` (``cifar.py::resnet``)
defines them.

WRN-depth-k: stem ``conv3x3(3 -> 16)`` (not multiplied by k), then three groups of
``n = (depth - 4) / 6`` pre-activation blocks with widths ``16k, 32k, 64k`` and strides
1, 2, 2, then BN-ReLU, global average pooling (the reference's ``avg_pool2d(8)`` on the
8x8 map) and a linear classifier. A block is::

    o1 = relu(bn0(x));  z = conv1(relu(bn1(conv0(o1))))      # conv0 3x3 carries the stride
    out = z + convdim(o1)   if in != out channels (1x1 conv, stride, on the pre-activated input)
    out = z + x             otherwise

All convolutions are bias-free. Initialisation follows the reference (``utils.py``):
conv and linear weights Kaiming-normal (fan-in, gain sqrt 2), linear bias 0, BN gamma
~ U[0, 1), BN beta 0; these per-parameter initialisers take precedence over the one given
to ``initialize()`` (pass ``reference_init=False`` to use that one instead).

Feature taps (the attention-transfer groups): ``'stage1'``, ``'stage2'``, ``'stage3'`` are
the outputs of the reference's groups ``g0``, ``g1``, ``g2`` -- the raw residual sums, before
the final BN-ReLU -- at strides 1, 2, 4 (32x32, 16x16, 8x8 for CIFAR inputs). The child
blocks carry the same names, so structural taps (:mod:`gluon_transfer.nn.feature`) and the
feature API agree. Parameter counts (10 classes): WRN-16-1 175,066; WRN-16-2 691,674;
WRN-40-1 563,930; WRN-40-2 2,243,546 (trainable; BN running statistics excluded).
"""
import mxnet as mx
from mxnet.gluon import nn

from ..errors import ConfigError
from ..registry import MODELS

__all__ = ['WideResNet', 'wrn', 'wrn16_1', 'wrn16_2', 'wrn40_1', 'wrn40_2', 'UnitUniform']


@mx.init.register
class UnitUniform(mx.init.Initializer):
    """U[0, 1) -- PyTorch's ``torch.rand``, the reference's BN-weight initialisation."""

    def _init_weight(self, _, arr):
        mx.nd.random.uniform(0.0, 1.0, out=arr)


def _kaiming():
    # torch.nn.init.kaiming_normal_ defaults: fan_in, gain sqrt(2) -> N(0, 2 / fan_in).
    return mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2.0)


class _Block(nn.HybridBlock):
    def __init__(self, in_channels, channels, stride, ref_init, **kwargs):
        super().__init__(**kwargs)
        winit = _kaiming() if ref_init else None
        ginit = UnitUniform() if ref_init else 'ones'
        with self.name_scope():
            self.bn0 = nn.BatchNorm(in_channels=in_channels, gamma_initializer=ginit)
            self.conv0 = nn.Conv2D(channels, 3, stride, 1, use_bias=False, in_channels=in_channels,
                                   weight_initializer=winit)
            self.bn1 = nn.BatchNorm(in_channels=channels, gamma_initializer=ginit)
            self.conv1 = nn.Conv2D(channels, 3, 1, 1, use_bias=False, in_channels=channels, weight_initializer=winit)
            self.convdim = None
            if in_channels != channels:
                self.convdim = nn.Conv2D(channels, 1, stride, 0, use_bias=False, in_channels=in_channels,
                                         weight_initializer=winit)

    def hybrid_forward(self, F, x):
        o1 = F.Activation(self.bn0(x), act_type='relu')
        z = self.conv1(F.Activation(self.bn1(self.conv0(o1)), act_type='relu'))
        return z + (self.convdim(o1) if self.convdim is not None else x)


class WideResNet(nn.HybridBlock):
    """WRN-``depth``-``width`` for 32x32 inputs (see the module docstring).

    ``features``: tuple of tap names from ``feature_info`` ('stage1'..'stage3'); when given,
    ``hybrid_forward`` returns ``(logits, [maps in the requested order])``.
    """

    def __init__(self, depth=16, width=1, classes=10, features=(), reference_init=True, **kwargs):
        super().__init__(**kwargs)
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError('WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40...), got %r' % (depth,))
        if width <= 0:
            raise ConfigError('WRN width must be positive, got %r' % (width,))
        n = (depth - 4) // 6
        widths = [int(16 * width), int(32 * width), int(64 * width)]
        self.depth, self.width, self.classes = depth, width, classes
        self.feature_info = [{'name': 'stage%d' % (i + 1), 'channels': c, 'stride': s}
                             for i, (c, s) in enumerate(zip(widths, (1, 2, 4)))]
        valid = [f['name'] for f in self.feature_info]
        if isinstance(features, str):
            features = (features,)
        for name in features:
            if name not in valid:
                raise ConfigError('unknown feature tap %r for WRN-%d-%g; valid: %s'
                                  % (name, depth, width, ', '.join(valid)))
        self.feature_names = tuple(features)
        winit = _kaiming() if reference_init else None
        with self.name_scope():
            self.conv0 = nn.Conv2D(16, 3, 1, 1, use_bias=False, in_channels=3, weight_initializer=winit)
            cin = 16
            for g, (c, stride) in enumerate(zip(widths, (1, 2, 2))):
                stage = nn.HybridSequential(prefix='stage%d_' % (g + 1))
                with stage.name_scope():
                    for b in range(n):
                        stage.add(_Block(cin if b == 0 else c, c, stride if b == 0 else 1, reference_init))
                setattr(self, 'stage%d' % (g + 1), stage)
                cin = c
            self.bn = nn.BatchNorm(in_channels=cin, gamma_initializer=UnitUniform() if reference_init else 'ones')
            self.pool = nn.GlobalAvgPool2D()
            self.fc = nn.Dense(classes, in_units=cin, weight_initializer=winit)

    def hybrid_forward(self, F, x):
        x = self.conv0(x)
        taps = {}
        for name in ('stage1', 'stage2', 'stage3'):
            x = getattr(self, name)(x)
            taps[name] = x
        x = F.Activation(self.bn(x), act_type='relu')
        logits = self.fc(F.flatten(self.pool(x)))
        if not self.feature_names:
            return logits
        return logits, [taps[name] for name in self.feature_names]


@MODELS.register('wrn')
def wrn(depth=16, width=1, classes=10, **kwargs):
    """Generic WRN-``depth``-``width`` (``get_model('wrn', depth=40, width=2)``)."""
    return WideResNet(depth=depth, width=width, classes=classes, **kwargs)


def _fixed(depth, width):
    def factory(classes=10, **kwargs):
        return WideResNet(depth=depth, width=width, classes=classes, **kwargs)
    factory.__name__ = 'wrn%d_%d' % (depth, width)
    factory.__doc__ = 'WRN-%d-%d for CIFAR (attention-transfer reference architecture).' % (depth, width)
    return MODELS.register(factory.__name__, factory)


wrn16_1 = _fixed(16, 1)
wrn16_2 = _fixed(16, 2)
wrn40_1 = _fixed(40, 1)
wrn40_2 = _fixed(40, 2)
