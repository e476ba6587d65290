"""ImageNet AFF/iAFF ResNet-50-D and ResNeXt-50-32x4d with the open-aff checkpoint layout.

Reference: YimianDai/open-aff ``model/classification.py`` (``AFFResNet``, ``AFFResNeXt``) and
``model/block.py`` (``AFFBottleneck``, ``AFFResNeXtBlock``) at commit 0bcfd8a. Attribute names
and child order reproduce the ``save_parameters`` keys of the published ImageNet files.

Every residual addition ``relu(x + y)`` of stage ``s >= start_layer`` becomes
``relu(fusion(x, y))`` (x = block body, y = shortcut), including each stage's first
(projection) block; stages ``s < start_layer`` keep the plain add. ``start_layer`` defaults to
3 (fusion in stages 3 and 4, as the published runs). The fusion reduction is r = 16.
With ``fusion='add'`` (or ``start_layer=5``) the networks equal GluonCV's ``resnet50_v1d`` /
``ResNext(..., deep_stem=True, avg_down=True, stem_width=64)`` key for key and output for output.
"""
import math

from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ..errors import ConfigError
from ..nn.fusion import canonical_fusion, create_fusion
from .common import TapMixin, register_preset

__all__ = ['AFFBottleneck', 'AFFResNeXtBlock', 'AFFResNet', 'AFFResNeXt', 'aff_resnet', 'aff_resnext']

_SPECS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _layers_for(num_layers):
    if num_layers not in _SPECS:
        raise ConfigError('num_layers must be one of %s; got %r' % (', '.join(map(str, sorted(_SPECS))), num_layers))
    return list(_SPECS[num_layers])


def _stage_fusion(fusion, stage_index, start_layer):
    """The reference's ``if stage_index < start_layer: askc_type = 'DirectAdd'``."""
    return fusion if stage_index >= start_layer else 'add'


def _check_start_layer(start_layer):
    if not isinstance(start_layer, int) or start_layer < 1:
        raise ConfigError('start_layer must be an integer >= 1 (stages are numbered from 1); got %r' % (start_layer,))


class AFFBottleneck(HybridBlock):
    """ResNet-v1b bottleneck with the residual addition replaced by a fusion::

        x1  = relu(bn1(conv1_1x1(x)))
        x2  = relu(bn2(conv2_3x3_stride(x1)))
        b   = bn3(conv3_1x1(x2))                    (gamma zero-initialised if last_gamma)
        out = relu(fusion(b, downsample(x) or x))

    Same attribute names as GluonCV ``BottleneckV1b`` plus ``attention`` (keys
    ``conv{1,2,3}.weight``, ``bn{1,2,3}.*``, ``downsample.*``, ``attention.*``).
    """

    def __init__(self, planes, in_channels, strides=1, downsample=None, fusion='add', r=16,
                 last_gamma=False, **kwargs):
        super().__init__(**kwargs)
        out_ch = planes * 4
        with self.name_scope():
            self.conv1 = nn.Conv2D(planes, 1, use_bias=False, in_channels=in_channels)
            self.bn1 = nn.BatchNorm(in_channels=planes)
            self.relu1 = nn.Activation('relu')
            self.conv2 = nn.Conv2D(planes, 3, strides, 1, use_bias=False, in_channels=planes)
            self.bn2 = nn.BatchNorm(in_channels=planes)
            self.relu2 = nn.Activation('relu')
            self.conv3 = nn.Conv2D(out_ch, 1, use_bias=False, in_channels=planes)
            if last_gamma:
                self.bn3 = nn.BatchNorm(in_channels=out_ch, gamma_initializer='zeros')
            else:
                self.bn3 = nn.BatchNorm(in_channels=out_ch)
            self.relu3 = nn.Activation('relu')
            self.downsample = downsample
            self.attention = create_fusion(fusion, out_ch, r)

    def hybrid_forward(self, F, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu3(self.attention(out, residual))


class AFFResNeXtBlock(HybridBlock):
    """ResNeXt bottleneck (GluonCV ``resnext.Block`` layout) with fusion::

        g    = cardinality * floor(channels * bottleneck_width / 64)
        body = Conv1x1(g)-BN-ReLU-GConv3x3(g, groups=cardinality, stride)-BN-ReLU-Conv1x1(4c)-BN
        out  = relu(fusion(body(x), downsample(x) or x))

    ``downsample`` (if requested) is ``[AvgPool(stride, ceil_mode, count_include_pad=False),
    Conv1x1, BN]`` when ``avg_down`` else ``[Conv1x1(stride), BN]``.

    ``last_gamma`` here has the ordinary meaning (True zero-initialises the last BN's gamma).
    The reference inherits GluonCV's *inverted* flag (``last_gamma=False`` zero-initialises it)
    and never passes it, so every reference ResNeXt run started from a zero last gamma; our
    ResNeXt factories therefore default to ``last_gamma=True``, which reproduces that init.
    Keys are unaffected.
    """

    def __init__(self, channels, in_channels, cardinality, bottleneck_width, stride=1, downsample=False,
                 avg_down=True, fusion='add', r=16, last_gamma=True, **kwargs):
        super().__init__(**kwargs)
        group_width = cardinality * int(math.floor(channels * (bottleneck_width / 64.0)))
        out_ch = channels * 4
        with self.name_scope():
            self.body = nn.HybridSequential(prefix='body_')
            with self.body.name_scope():
                self.body.add(nn.Conv2D(group_width, 1, use_bias=False, in_channels=in_channels))
                self.body.add(nn.BatchNorm(in_channels=group_width))
                self.body.add(nn.Activation('relu'))
                self.body.add(nn.Conv2D(group_width, 3, stride, 1, groups=cardinality, use_bias=False,
                                        in_channels=group_width))
                self.body.add(nn.BatchNorm(in_channels=group_width))
                self.body.add(nn.Activation('relu'))
                self.body.add(nn.Conv2D(out_ch, 1, use_bias=False, in_channels=group_width))
                if last_gamma:
                    self.body.add(nn.BatchNorm(in_channels=out_ch, gamma_initializer='zeros'))
                else:
                    self.body.add(nn.BatchNorm(in_channels=out_ch))
            if downsample:
                self.downsample = nn.HybridSequential(prefix='down_')
                with self.downsample.name_scope():
                    if avg_down:
                        self.downsample.add(nn.AvgPool2D(stride, stride, ceil_mode=True, count_include_pad=False))
                        self.downsample.add(nn.Conv2D(out_ch, 1, use_bias=False, in_channels=in_channels))
                    else:
                        self.downsample.add(nn.Conv2D(out_ch, 1, stride, use_bias=False, in_channels=in_channels))
                    self.downsample.add(nn.BatchNorm(in_channels=out_ch))
            else:
                self.downsample = None
            self.attention = create_fusion(fusion, out_ch, r)

    def hybrid_forward(self, F, x):
        residual = x if self.downsample is None else self.downsample(x)
        return F.Activation(self.attention(self.body(x), residual), act_type='relu')


class AFFResNet(TapMixin, HybridBlock):
    """AFF/iAFF ResNet-D (reference ``AFFResNet``; GluonCV ``ResNetV1b`` with deep stem and avg-down).

    Layout (keys): ``conv1`` = [Conv3x3(w, s2), BN, ReLU, Conv3x3(w), BN, ReLU, Conv3x3(2w)]
    (w = stem_width = 32), ``bn1``, ``relu``, ``maxpool`` (3x3, s2), ``layer1..4`` of
    :class:`AFFBottleneck` (planes 64, 128, 256, 512; strides 1, 2, 2, 2), ``avgpool``,
    ``flat``, ``fc``. The first block of every stage has ``downsample`` =
    [AvgPool(stride) (a 1x1 pool in layer1), Conv1x1, BN] (``avg_down``) or [Conv1x1(stride), BN].

    Feature taps ``stage1..stage4``: outputs of ``layer1..4`` (channels 256..2048, strides 4..32).
    """

    def __init__(self, layers=(3, 4, 6, 3), fusion='aff', start_layer=3, classes=1000, last_gamma=False,
                 deep_stem=True, stem_width=32, avg_down=True, r=16, features=(), **kwargs):
        super().__init__(prefix=kwargs.pop('prefix', None), params=kwargs.pop('params', None))
        if kwargs:
            raise ConfigError('AFFResNet got unknown options: %s' % ', '.join(sorted(kwargs)))
        fusion = canonical_fusion(fusion)
        _check_start_layer(start_layer)
        layers = list(layers)
        if len(layers) != 4:
            raise ConfigError('AFFResNet needs 4 stage depths in layers; got %r' % (layers,))
        info = [{'name': 'stage%d' % (i + 1), 'channels': 256 * 2 ** i, 'stride': 4 * 2 ** i} for i in range(4)]
        self._init_taps(features, info, dict(layers=layers, fusion=fusion, start_layer=start_layer,
                                             classes=classes, last_gamma=last_gamma, deep_stem=deep_stem,
                                             stem_width=stem_width, avg_down=avg_down, r=r))
        inplanes = stem_width * 2 if deep_stem else 64
        with self.name_scope():
            if deep_stem:
                self.conv1 = nn.HybridSequential(prefix='conv1_')
                with self.conv1.name_scope():
                    self.conv1.add(nn.Conv2D(stem_width, 3, 2, 1, use_bias=False, in_channels=3))
                    self.conv1.add(nn.BatchNorm(in_channels=stem_width))
                    self.conv1.add(nn.Activation('relu'))
                    self.conv1.add(nn.Conv2D(stem_width, 3, 1, 1, use_bias=False, in_channels=stem_width))
                    self.conv1.add(nn.BatchNorm(in_channels=stem_width))
                    self.conv1.add(nn.Activation('relu'))
                    self.conv1.add(nn.Conv2D(stem_width * 2, 3, 1, 1, use_bias=False, in_channels=stem_width))
            else:
                self.conv1 = nn.Conv2D(64, 7, 2, 3, use_bias=False, in_channels=3)
            self.bn1 = nn.BatchNorm(in_channels=inplanes)
            self.relu = nn.Activation('relu')
            self.maxpool = nn.MaxPool2D(3, 2, 1)
            for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
                stage = i + 1
                strides = 1 if stage == 1 else 2
                layer = nn.HybridSequential(prefix='layers%d_' % stage)
                with layer.name_scope():
                    fus = _stage_fusion(fusion, stage, start_layer)
                    down = None
                    if strides != 1 or inplanes != planes * 4:
                        down = nn.HybridSequential(prefix='down%d_' % stage)
                        with down.name_scope():
                            if avg_down:
                                down.add(nn.AvgPool2D(strides, strides, ceil_mode=True, count_include_pad=False))
                                down.add(nn.Conv2D(planes * 4, 1, use_bias=False, in_channels=inplanes))
                            else:
                                down.add(nn.Conv2D(planes * 4, 1, strides, use_bias=False, in_channels=inplanes))
                            down.add(nn.BatchNorm(in_channels=planes * 4))
                    layer.add(AFFBottleneck(planes, inplanes, strides, down, fus, r, last_gamma))
                    inplanes = planes * 4
                    for _ in range(1, blocks):
                        layer.add(AFFBottleneck(planes, inplanes, 1, None, fus, r, last_gamma))
                setattr(self, 'layer%d' % stage, layer)
            self.avgpool = nn.GlobalAvgPool2D()
            self.flat = nn.Flatten()
            self.fc = nn.Dense(classes, in_units=inplanes)

    def hybrid_forward(self, F, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = {}
        for stage, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), 1):
            x = layer(x)
            if self._want('stage%d' % stage):
                taps['stage%d' % stage] = x
        logits = self.fc(self.flat(self.avgpool(x)))
        return self._tap_output(logits, taps)


class AFFResNeXt(TapMixin, HybridBlock):
    """AFF/iAFF ResNeXt (reference ``AFFResNeXt``; GluonCV ``ResNext`` with deep stem and avg-down).

    ``features`` = [Conv3x3(w, s2), BN, ReLU, Conv3x3(w), BN, ReLU, Conv3x3(2w), BN, ReLU,
    MaxPool(3, s2), stage1..stage4 (indices 10..13), GlobalAvgPool], w = stem_width = 64;
    ``output`` = Dense. Stages have widths 64, 128, 256, 512 (outputs x4), strides 1, 2, 2, 2;
    each stage's first :class:`AFFResNeXtBlock` projects the shortcut: stage 1 with a strided
    Conv1x1+BN (no avg-down, as GluonCV), stages 2-4 with AvgPool+Conv1x1+BN.

    ``last_gamma=True`` (default) zero-initialises each block's last BN gamma, which is what the
    reference's inverted flag did in every published run (see :class:`AFFResNeXtBlock`).
    Feature taps ``stage1..stage4`` (channels 256..2048, strides 4..32).
    """

    def __init__(self, layers=(3, 4, 6, 3), cardinality=32, bottleneck_width=4, fusion='aff', start_layer=3,
                 classes=1000, last_gamma=True, deep_stem=True, stem_width=64, avg_down=True, r=16,
                 features=(), **kwargs):
        super().__init__(prefix=kwargs.pop('prefix', None), params=kwargs.pop('params', None))
        if kwargs:
            raise ConfigError('AFFResNeXt got unknown options: %s' % ', '.join(sorted(kwargs)))
        fusion = canonical_fusion(fusion)
        _check_start_layer(start_layer)
        layers = list(layers)
        if len(layers) != 4:
            raise ConfigError('AFFResNeXt needs 4 stage depths in layers; got %r' % (layers,))
        info = [{'name': 'stage%d' % (i + 1), 'channels': 256 * 2 ** i, 'stride': 4 * 2 ** i} for i in range(4)]
        self._init_taps(features, info, dict(layers=layers, cardinality=cardinality,
                                             bottleneck_width=bottleneck_width, fusion=fusion,
                                             start_layer=start_layer, classes=classes, last_gamma=last_gamma,
                                             deep_stem=deep_stem, stem_width=stem_width, avg_down=avg_down, r=r))
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                if deep_stem:
                    self.features.add(nn.Conv2D(stem_width, 3, 2, 1, use_bias=False, in_channels=3))
                    self.features.add(nn.BatchNorm(in_channels=stem_width))
                    self.features.add(nn.Activation('relu'))
                    self.features.add(nn.Conv2D(stem_width, 3, 1, 1, use_bias=False, in_channels=stem_width))
                    self.features.add(nn.BatchNorm(in_channels=stem_width))
                    self.features.add(nn.Activation('relu'))
                    self.features.add(nn.Conv2D(stem_width * 2, 3, 1, 1, use_bias=False, in_channels=stem_width))
                    in_ch = stem_width * 2
                else:
                    self.features.add(nn.Conv2D(64, 7, 2, 3, use_bias=False, in_channels=3))
                    in_ch = 64
                self.features.add(nn.BatchNorm(in_channels=in_ch))
                self.features.add(nn.Activation('relu'))
                self.features.add(nn.MaxPool2D(3, 2, 1))
                self._stage_index = {}
                channels = 64
                for i, blocks in enumerate(layers):
                    stage = i + 1
                    stride = 1 if i == 0 else 2
                    fus = _stage_fusion(fusion, stage, start_layer)
                    layer = nn.HybridSequential(prefix='stage%d_' % stage)
                    with layer.name_scope():
                        layer.add(AFFResNeXtBlock(channels, in_ch, cardinality, bottleneck_width, stride, True,
                                                  avg_down and i > 0, fus, r, last_gamma))
                        in_ch = channels * 4
                        for _ in range(blocks - 1):
                            layer.add(AFFResNeXtBlock(channels, in_ch, cardinality, bottleneck_width, 1, False,
                                                      avg_down, fus, r, last_gamma))
                    self._stage_index[len(self.features)] = 'stage%d' % stage
                    self.features.add(layer)
                    channels *= 2
                self.features.add(nn.GlobalAvgPool2D())
            self.output = nn.Dense(classes, in_units=in_ch)

    def hybrid_forward(self, F, x):
        return self._forward_features(x)


def aff_resnet(num_layers=50, fusion='aff', start_layer=3, classes=1000, last_gamma=False, features=(), **kwargs):
    """AFF/iAFF ResNet-D-{50,101,152}; ``fusion`` in add/aff/iaff (or reference names).
    ``last_gamma=True`` zero-initialises each bottleneck's bn3 gamma (the published runs used it).
    Extra options: ``deep_stem``, ``stem_width``, ``avg_down``, ``r``."""
    return AFFResNet(_layers_for(num_layers), fusion=fusion, start_layer=start_layer, classes=classes,
                     last_gamma=last_gamma, features=features, **kwargs)


def aff_resnext(num_layers=50, fusion='aff', start_layer=3, classes=1000, last_gamma=True, features=(),
                cardinality=32, bottleneck_width=4, **kwargs):
    """AFF/iAFF ResNeXt-{50,101}-32x4d (deep stem 64-64-128, avg-down).
    ``last_gamma`` defaults to True = the reference's effective init (zero last gamma)."""
    if num_layers not in (50, 101):
        raise ConfigError('aff_resnext supports num_layers 50 or 101; got %r' % (num_layers,))
    return AFFResNeXt(_layers_for(num_layers), cardinality, bottleneck_width, fusion=fusion,
                      start_layer=start_layer, classes=classes, last_gamma=last_gamma, features=features, **kwargs)


def _register():
    from ..registry import MODELS
    MODELS.register('aff_resnet', obj=aff_resnet)
    MODELS.register('aff_resnext', obj=aff_resnext)
    register_preset('aff_resnet50', aff_resnet, 'AFF-ResNet-50 (open-aff, 30,373,192 trainable params)',
                    defaults={'classes': 1000}, num_layers=50, fusion='aff')
    register_preset('iaff_resnet50', aff_resnet, 'iAFF-ResNet-50 (open-aff, 35,170,120 trainable params)',
                    defaults={'classes': 1000}, num_layers=50, fusion='iaff')
    register_preset('aff_resnext50_32x4d', aff_resnext, 'AFF-ResNeXt-50-32x4d (open-aff, 29,953,704 trainable)',
                    defaults={'classes': 1000}, num_layers=50, fusion='aff')
    register_preset('iaff_resnext50_32x4d', aff_resnext, 'iAFF-ResNeXt-50-32x4d (open-aff, 34,750,632 trainable)',
                    defaults={'classes': 1000}, num_layers=50, fusion='iaff')


_register()
