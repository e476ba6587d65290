"""CIFAR AFF/iAFF ResNet (pre-activation) and ResNeXt-32x4d with the open-aff checkpoint layout.

Reference: YimianDai/open-aff ``model/classification.py`` (``CIFARAFFResNet``,
``CIFARAFFResNeXt``) and ``model/block.py`` (``AFFResBlockV2``, ``AFFResNeXtBlock``) at commit
0bcfd8a. Fusion is used in stages ``s >= start_layer`` (default 1: all three stages), in every
block including the first; earlier stages use a plain add.
"""
from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ..errors import ConfigError
from ..nn.fusion import canonical_fusion, create_fusion
from ..registry import MODELS
from .common import TapMixin, register_preset
from .imagenet_aff import AFFResNeXtBlock, _check_start_layer, _stage_fusion

__all__ = ['AFFResBlockV2', 'CIFARAFFResNet', 'CIFARAFFResNeXt', 'cifar_aff_resnet', 'cifar_aff_resnext']


class AFFResBlockV2(HybridBlock):
    """Pre-activation basic block with fusion (reference ``AFFResBlockV2``)::

        r   = Conv3x3(ReLU(BN(Conv3x3_stride(ReLU(BN(x))))))      resfwd = [BN, ReLU, Conv, BN, ReLU, Conv]
        s   = Conv1x1(AvgPool_stride(x))  if channels != in_channels else x
        out = fusion(r, s)                                        (no ReLU afterwards)

    The shortcut sees the **raw** block input ``x`` (GluonCV's ``BasicBlockV2`` projects the
    BN-ReLU'd input instead), its AvgPool uses ``ceil_mode=True, count_include_pad=False`` and
    there is no BN after the 1x1 conv. Fusion reduction r = 4.
    """

    def __init__(self, channels, in_channels, stride=1, fusion='add', r=4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.resfwd = nn.HybridSequential(prefix='resfwd_')
            with self.resfwd.name_scope():
                self.resfwd.add(nn.BatchNorm(in_channels=in_channels))
                self.resfwd.add(nn.Activation('relu'))
                self.resfwd.add(nn.Conv2D(channels, 3, stride, 1, use_bias=False, in_channels=in_channels))
                self.resfwd.add(nn.BatchNorm(in_channels=channels))
                self.resfwd.add(nn.Activation('relu'))
                self.resfwd.add(nn.Conv2D(channels, 3, 1, 1, use_bias=False, in_channels=channels))
            if channels != in_channels:
                self.downsample = nn.HybridSequential(prefix='down_')
                with self.downsample.name_scope():
                    self.downsample.add(nn.AvgPool2D(stride, stride, ceil_mode=True, count_include_pad=False))
                    self.downsample.add(nn.Conv2D(channels, 1, use_bias=False, in_channels=in_channels))
            else:
                self.downsample = None
            self.attention = create_fusion(fusion, channels, r)

    def hybrid_forward(self, F, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.attention(self.resfwd(x), shortcut)


class CIFARAFFResNet(TapMixin, HybridBlock):
    """CIFAR pre-activation AFF/iAFF ResNet, depth ``6 * blocks + 2`` (reference ``CIFARAFFResNet``).

    ``channels = [16, 16, 32, 64] * channel_times``. ``features`` = [0 BatchNorm(scale=False,
    center=False) on the input (its gamma/beta exist with grad_req 'null' and are saved),
    1 Conv3x3(c0), 2..4 stage1..stage3 (strides 1, 2, 2; ``blocks`` :class:`AFFResBlockV2` each),
    5 BN, 6 ReLU, 7 GlobalAvgPool, 8 Flatten]; ``output`` = Dense(classes).

    Feature taps ``stage1..stage3`` are the (pre-activation) stage outputs.
    """

    def __init__(self, blocks=5, channel_times=4, fusion='aff', start_layer=1, classes=10, r=4,
                 features=(), **kwargs):
        super().__init__(prefix=kwargs.pop('prefix', None), params=kwargs.pop('params', None))
        if kwargs:
            raise ConfigError('CIFARAFFResNet got unknown options: %s' % ', '.join(sorted(kwargs)))
        fusion = canonical_fusion(fusion)
        _check_start_layer(start_layer)
        if int(blocks) < 1 or int(channel_times) < 1:
            raise ConfigError('blocks and channel_times must be >= 1; got %r, %r' % (blocks, channel_times))
        channels = [c * channel_times for c in (16, 16, 32, 64)]
        info = [{'name': 'stage%d' % (i + 1), 'channels': channels[i + 1], 'stride': 2 ** i} for i in range(3)]
        self._init_taps(features, info, dict(blocks=blocks, channel_times=channel_times, fusion=fusion,
                                             start_layer=start_layer, classes=classes, r=r))
        self._stage_index = {}
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                self.features.add(nn.BatchNorm(scale=False, center=False, in_channels=3))
                self.features.add(nn.Conv2D(channels[0], 3, 1, 1, use_bias=False, in_channels=3))
                in_ch = channels[0]
                for i in range(3):
                    stage = i + 1
                    fus = _stage_fusion(fusion, stage, start_layer)
                    layer = nn.HybridSequential(prefix='stage%d_' % stage)
                    with layer.name_scope():
                        layer.add(AFFResBlockV2(channels[stage], in_ch, 1 if i == 0 else 2, fus, r))
                        in_ch = channels[stage]
                        for _ in range(blocks - 1):
                            layer.add(AFFResBlockV2(in_ch, in_ch, 1, fus, r))
                    self._stage_index[len(self.features)] = 'stage%d' % stage
                    self.features.add(layer)
                self.features.add(nn.BatchNorm(in_channels=in_ch))
                self.features.add(nn.Activation('relu'))
                self.features.add(nn.GlobalAvgPool2D())
                self.features.add(nn.Flatten())
            self.output = nn.Dense(classes, in_units=in_ch)

    def hybrid_forward(self, F, x):
        return self._forward_features(x)


class CIFARAFFResNeXt(TapMixin, HybridBlock):
    """CIFAR AFF/iAFF ResNeXt, depth ``9 * blocks + 2`` (reference ``CIFARAFFResNeXt``).

    ``features`` = [0 Conv3x3(base), 1 BN, 2 ReLU, 3..5 stage1..stage3, 6 GlobalAvgPool];
    ``output`` = Dense(classes). Stage widths base*(1, 2, 4) (base = 64; outputs x4: 256, 512,
    1024), strides 1, 2, 2, ``blocks`` :class:`AFFResNeXtBlock` each (r = 16). Every stage's first
    block projects the shortcut with AvgPool(stride)+Conv1x1+BN -- a 1x1 pool in stage 1. No final
    BN. ``last_gamma=True`` (default) zero-initialises the last BN gamma of each block, the init
    the reference's shared block gets from its inverted default.
    """

    def __init__(self, blocks=4, cardinality=32, bottleneck_width=4, base_channels=64, fusion='aff',
                 start_layer=1, classes=10, last_gamma=True, r=16, features=(), **kwargs):
        super().__init__(prefix=kwargs.pop('prefix', None), params=kwargs.pop('params', None))
        if kwargs:
            raise ConfigError('CIFARAFFResNeXt got unknown options: %s' % ', '.join(sorted(kwargs)))
        fusion = canonical_fusion(fusion)
        _check_start_layer(start_layer)
        if int(blocks) < 1:
            raise ConfigError('blocks must be >= 1; got %r' % (blocks,))
        info = [{'name': 'stage%d' % (i + 1), 'channels': base_channels * 4 * 2 ** i, 'stride': 2 ** i}
                for i in range(3)]
        self._init_taps(features, info, dict(blocks=blocks, cardinality=cardinality,
                                             bottleneck_width=bottleneck_width, base_channels=base_channels,
                                             fusion=fusion, start_layer=start_layer, classes=classes,
                                             last_gamma=last_gamma, r=r))
        self._stage_index = {}
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                self.features.add(nn.Conv2D(base_channels, 3, 1, 1, use_bias=False, in_channels=3))
                self.features.add(nn.BatchNorm(in_channels=base_channels))
                self.features.add(nn.Activation('relu'))
                in_ch, channels = base_channels, base_channels
                for i in range(3):
                    stage = i + 1
                    stride = 1 if i == 0 else 2
                    fus = _stage_fusion(fusion, stage, start_layer)
                    layer = nn.HybridSequential(prefix='stage%d_' % stage)
                    with layer.name_scope():
                        layer.add(AFFResNeXtBlock(channels, in_ch, cardinality, bottleneck_width, stride, True,
                                                  True, fus, r, last_gamma))
                        in_ch = channels * 4
                        for _ in range(blocks - 1):
                            layer.add(AFFResNeXtBlock(channels, in_ch, cardinality, bottleneck_width, 1, False,
                                                      True, fus, r, last_gamma))
                    self._stage_index[len(self.features)] = 'stage%d' % stage
                    self.features.add(layer)
                    channels *= 2
                self.features.add(nn.GlobalAvgPool2D())
            self.output = nn.Dense(classes, in_units=in_ch)

    def hybrid_forward(self, F, x):
        return self._forward_features(x)


def cifar_aff_resnet(blocks=5, channel_times=4, fusion='aff', start_layer=1, classes=10, features=(), **kwargs):
    """CIFAR AFF/iAFF pre-activation ResNet-(6*blocks+2) with widths [16,16,32,64]*channel_times."""
    return CIFARAFFResNet(blocks, channel_times, fusion, start_layer, classes, features=features, **kwargs)


def cifar_aff_resnext(blocks=4, fusion='aff', start_layer=1, classes=10, features=(), **kwargs):
    """CIFAR AFF/iAFF ResNeXt-(9*blocks+2)-32x4d (base width 64). Extra options: ``cardinality``,
    ``bottleneck_width``, ``base_channels``, ``last_gamma``, ``r``."""
    return CIFARAFFResNeXt(blocks, fusion=fusion, start_layer=start_layer, classes=classes,
                           features=features, **kwargs)


MODELS.register('cifar_aff_resnet', obj=cifar_aff_resnet)
MODELS.register('cifar_aff_resnext', obj=cifar_aff_resnext)
register_preset('cifar_aff_resnet32', cifar_aff_resnet, 'AFF-ResNet-32 for CIFAR (7,897,156 trainable params)',
                defaults={'classes': 100}, blocks=5, channel_times=4, fusion='aff')
register_preset('cifar_iaff_resnet32', cifar_aff_resnet, 'iAFF-ResNet-32 for CIFAR (8,344,036 trainable params)',
                defaults={'classes': 100}, blocks=5, channel_times=4, fusion='iaff')
register_preset('cifar_aff_resnext38_32x4d', cifar_aff_resnext,
                'AFF-ResNeXt-38-32x4d for CIFAR (7,770,148 trainable params)',
                defaults={'classes': 100}, blocks=4, fusion='aff')
register_preset('cifar_aff_resnext47_32x4d', cifar_aff_resnext,
                'AFF-ResNeXt-47-32x4d for CIFAR (9,605,828 trainable params)',
                defaults={'classes': 100}, blocks=5, fusion='aff')
