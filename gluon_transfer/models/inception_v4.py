"""Inception-v4 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", 2016), laid out as timm's ``inception_v4`` so its checkpoints map
key for key (:mod:`gluon_transfer.convert_torch`); the network of non-binary transfer.

Every convolution is a *basic conv*: ``relu(BN(conv(x)))``, the convolution bias-free, the
BatchNorm with ``eps = 1e-3`` (timm's value; it must match or the converted outputs drift).
Shapes below are ``channels @ spatial`` for a 299 x 299 input; ``kxk/s`` is a kernel and
stride, ``p`` a zero padding, and a convolution without ``p`` is unpadded ("valid").

``features`` (22 children, the layer groups of non-binary transfer):

====  ===========  ==========================================================  ============
idx   block        computation                                                 output
====  ===========  ==========================================================  ============
0-2   stem convs   3x3/2 -> 32;  3x3 -> 32;  3x3 p1 -> 64                      64 @ 147
3     Mixed3a      concat(maxpool 3x3/2,  3x3/2 conv -> 96)                     160 @ 73
4     Mixed4a      concat(1x1 64, 3x3 96;  1x1 64, 1x7 64, 7x1 64, 3x3 96)       192 @ 71
5     Mixed5a      concat(3x3/2 conv -> 192,  maxpool 3x3/2)                    384 @ 35
6-9   Inception-A  concat(1x1 96;  1x1 64, 3x3 96;  1x1 64, 3x3 96, 3x3 96;     384 @ 35
                   avgpool 3x3 p1 (padding excluded from the mean), 1x1 96)
10    Reduction-A  concat(3x3/2 384;  1x1 192, 3x3 224, 3x3/2 256;  maxpool)    1024 @ 17
11-17 Inception-B  concat(1x1 384;  1x1 192, 1x7 224, 7x1 256;                  1024 @ 17
                   1x1 192, 7x1 192, 1x7 224, 7x1 224, 1x7 256;  avgpool, 1x1 128)
18    Reduction-B  concat(1x1 192, 3x3/2 192;  1x1 256, 1x7 256, 7x1 320,       1536 @ 8
                   3x3/2 320;  maxpool 3x3/2)
19-21 Inception-C  concat(1x1 256;  1x1 384 -> [1x3 256, 3x1 256];               1536 @ 8
                   1x1 384, 3x1 448, 1x3 512 -> [1x3 256, 3x1 256];  avgpool, 1x1 256)
====  ===========  ==========================================================  ============

(``1x7`` is one row by seven columns, padded (0, 3); ``7x1`` is padded (3, 0); the 1x3/3x1
pairs likewise.) Then global average pooling, optional dropout and the classifier
``output`` (timm: ``last_linear``), 1536 -> ``classes``. All max/avg pools are 3x3; the
average pools of the Inception blocks are stride 1, padding 1, *not* counting the padding
(``count_include_pad=False``); pooling rounds down. The smallest valid input is 75 x 75
(spatial sizes 37, 35, 35, 17, 15, 7, 3, 1 after the stride/valid stages). About 42.7 M
parameters for 1000 classes.

Feature taps (``features=(...)``, returned after the logits): ``stem`` (features.2, 64
channels, stride 2), ``mixed3a`` (160, 4), ``inception_a`` (features.9, 384, 8),
``inception_b`` (features.17, 1024, 16), ``inception_c`` (features.21, 1536, 32).
"""
from mxnet.gluon import nn

from ..errors import ConfigError
from ..registry import MODELS

__all__ = ['InceptionV4', 'inception_v4', 'BasicConv']

BN_EPS = 1e-3


class BasicConv(nn.HybridBlock):
    """``relu(BN(conv(x)))`` with a bias-free convolution and BatchNorm eps 1e-3."""

    def __init__(self, channels, kernel, stride=1, padding=0, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(channels, kernel, stride, padding, use_bias=False, in_channels=in_channels)
            self.bn = nn.BatchNorm(epsilon=BN_EPS, in_channels=channels)

    def hybrid_forward(self, F, x):
        return F.Activation(self.bn(self.conv(x)), act_type='relu')


def _seq(*layers):
    out = nn.HybridSequential(prefix='')
    for layer in layers:
        out.add(layer)
    return out


def _avg():
    return nn.AvgPool2D(pool_size=3, strides=1, padding=1, count_include_pad=False)


def _max(F, x):
    return F.Pooling(x, kernel=(3, 3), stride=(2, 2), pool_type='max')


class _Concat(nn.HybridBlock):
    """Runs the named branches on the same input and concatenates them on channels."""
    branches = ()

    def hybrid_forward(self, F, x):
        return F.concat(*[getattr(self, name)(x) for name in self.branches], dim=1)


class Mixed3a(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = BasicConv(96, 3, 2, in_channels=64)

    def hybrid_forward(self, F, x):
        return F.concat(_max(F, x), self.conv(x), dim=1)


class Mixed4a(_Concat):
    branches = ('branch0', 'branch1')

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branch0 = _seq(BasicConv(64, 1, in_channels=160), BasicConv(96, 3, in_channels=64))
            self.branch1 = _seq(BasicConv(64, 1, in_channels=160),
                                BasicConv(64, (1, 7), padding=(0, 3), in_channels=64),
                                BasicConv(64, (7, 1), padding=(3, 0), in_channels=64), BasicConv(96, 3, in_channels=64))


class Mixed5a(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = BasicConv(192, 3, 2, in_channels=192)

    def hybrid_forward(self, F, x):
        return F.concat(self.conv(x), _max(F, x), dim=1)


class InceptionA(_Concat):
    branches = ('branch0', 'branch1', 'branch2', 'branch3')

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branch0 = BasicConv(96, 1, in_channels=384)
            self.branch1 = _seq(BasicConv(64, 1, in_channels=384), BasicConv(96, 3, padding=1, in_channels=64))
            self.branch2 = _seq(BasicConv(64, 1, in_channels=384), BasicConv(96, 3, padding=1, in_channels=64),
                                BasicConv(96, 3, padding=1, in_channels=96))
            self.branch3 = _seq(_avg(), BasicConv(96, 1, in_channels=384))


class ReductionA(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branch0 = BasicConv(384, 3, 2, in_channels=384)
            self.branch1 = _seq(BasicConv(192, 1, in_channels=384), BasicConv(224, 3, padding=1, in_channels=192),
                                BasicConv(256, 3, 2, in_channels=224))

    def hybrid_forward(self, F, x):
        return F.concat(self.branch0(x), self.branch1(x), _max(F, x), dim=1)


class InceptionB(_Concat):
    branches = ('branch0', 'branch1', 'branch2', 'branch3')

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branch0 = BasicConv(384, 1, in_channels=1024)
            self.branch1 = _seq(BasicConv(192, 1, in_channels=1024),
                                BasicConv(224, (1, 7), padding=(0, 3), in_channels=192),
                                BasicConv(256, (7, 1), padding=(3, 0), in_channels=224))
            self.branch2 = _seq(BasicConv(192, 1, in_channels=1024),
                                BasicConv(192, (7, 1), padding=(3, 0), in_channels=192),
                                BasicConv(224, (1, 7), padding=(0, 3), in_channels=192),
                                BasicConv(224, (7, 1), padding=(3, 0), in_channels=224),
                                BasicConv(256, (1, 7), padding=(0, 3), in_channels=224))
            self.branch3 = _seq(_avg(), BasicConv(128, 1, in_channels=1024))


class ReductionB(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branch0 = _seq(BasicConv(192, 1, in_channels=1024), BasicConv(192, 3, 2, in_channels=192))
            self.branch1 = _seq(BasicConv(256, 1, in_channels=1024),
                                BasicConv(256, (1, 7), padding=(0, 3), in_channels=256),
                                BasicConv(320, (7, 1), padding=(3, 0), in_channels=256),
                                BasicConv(320, 3, 2, in_channels=320))

    def hybrid_forward(self, F, x):
        return F.concat(self.branch0(x), self.branch1(x), _max(F, x), dim=1)


class InceptionC(nn.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branch0 = BasicConv(256, 1, in_channels=1536)
            self.branch1_0 = BasicConv(384, 1, in_channels=1536)
            self.branch1_1a = BasicConv(256, (1, 3), padding=(0, 1), in_channels=384)
            self.branch1_1b = BasicConv(256, (3, 1), padding=(1, 0), in_channels=384)
            self.branch2_0 = BasicConv(384, 1, in_channels=1536)
            self.branch2_1 = BasicConv(448, (3, 1), padding=(1, 0), in_channels=384)
            self.branch2_2 = BasicConv(512, (1, 3), padding=(0, 1), in_channels=448)
            self.branch2_3a = BasicConv(256, (1, 3), padding=(0, 1), in_channels=512)
            self.branch2_3b = BasicConv(256, (3, 1), padding=(1, 0), in_channels=512)
            self.branch3 = _seq(_avg(), BasicConv(256, 1, in_channels=1536))

    def hybrid_forward(self, F, x):
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return F.concat(self.branch0(x), self.branch1_1a(b1), self.branch1_1b(b1),
                        self.branch2_3a(b2), self.branch2_3b(b2), self.branch3(x), dim=1)


_TAPS = (('stem', 2, 64, 2), ('mixed3a', 3, 160, 4), ('inception_a', 9, 384, 8),
         ('inception_b', 17, 1024, 16), ('inception_c', 21, 1536, 32))


class InceptionV4(nn.HybridBlock):
    """Inception-v4 (see the module docstring): ``features`` (22 blocks), global average
    pooling, ``dropout`` (0 = none) and the classifier ``output``.

    ``features``: tap names from ``feature_info``; when given, ``hybrid_forward`` returns
    ``(logits, [maps in the requested order])``.
    """

    def __init__(self, classes=1000, dropout=0.0, features=(), **kwargs):
        super().__init__(**kwargs)
        self.feature_info = [{'name': n, 'channels': c, 'stride': s} for n, _, c, s in _TAPS]
        if isinstance(features, str):
            features = (features,)
        valid = [n for n, _, _, _ in _TAPS]
        for name in features:
            if name not in valid:
                raise ConfigError('unknown feature tap %r for inception_v4; valid: %s' % (name, ', '.join(valid)))
        self.feature_names = tuple(features)
        self._tap_index = {i: n for n, i, _, _ in _TAPS if n in self.feature_names}
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                self.features.add(BasicConv(32, 3, 2, in_channels=3), BasicConv(32, 3, in_channels=32),
                                  BasicConv(64, 3, padding=1, in_channels=32),
                                  Mixed3a(), Mixed4a(), Mixed5a())
                self.features.add(*[InceptionA() for _ in range(4)])
                self.features.add(ReductionA())
                self.features.add(*[InceptionB() for _ in range(7)])
                self.features.add(ReductionB())
                self.features.add(*[InceptionC() for _ in range(3)])
            self.pool = nn.GlobalAvgPool2D()
            self.drop = nn.Dropout(dropout) if dropout > 0 else None
            self.output = nn.Dense(classes, in_units=1536)

    def hybrid_forward(self, F, x):
        taps = {}
        for i, block in enumerate(self.features._children.values()):
            x = block(x)
            if i in self._tap_index:
                taps[self._tap_index[i]] = x
        x = F.flatten(self.pool(x))
        if self.drop is not None:
            x = self.drop(x)
        logits = self.output(x)
        if not self.feature_names:
            return logits
        return logits, [taps[name] for name in self.feature_names]


@MODELS.register('inception_v4')
def inception_v4(classes=1000, dropout=0.0, features=(), **kwargs):
    """Inception-v4 with timm's layout (299 x 299 input; 75 x 75 at least)."""
    return InceptionV4(classes=classes, dropout=dropout, features=features, **kwargs)
