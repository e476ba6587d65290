"""Residual networks with AFS gates after every ConvBN of every residual block (AFDS).

The AFDS method puts one :class:`~gluon_transfer.nn.gates.AFSGate` after each ConvBN of a
residual block (transfer-methods.md §3.2). Three block types carry them, each with the same
children, order and parameter keys as the GluonCV block it replaces, plus gate children
``gate1``, ``gate2`` (, ``gate3``), each reading the input of its convolution:

* :class:`AFSBottleneck` (GluonCV ``BottleneckV1b``: resnet50/101_v1b)::

      o1  = relu( gate1(x,  BN1(conv1(x))) )
      o2  = relu( gate2(o1, BN2(conv2(o1))) )
      o3  =       gate3(o2, BN3(conv3(o2)))            [relu(o3) with relu_before_add=True]
      out = relu( o3 + downsample(x) )

* :class:`AFSBasicBlockV1b` (GluonCV ``BasicBlockV1b``: resnet18/34_v1b) and
  :class:`AFSCIFARBasicBlockV1` (GluonCV ``CIFARBasicBlockV1``: cifar_resnet20/56/110_v1;
  its ConvBNs are ``body.0``/``body.1`` and ``body.3``/``body.4``)::

      o1  = relu( gate1(x,  BN1(conv1(x))) )
      o2  =       gate2(o1, BN2(conv2(o1)))            [relu(o2) with relu_before_add=True]
      out = relu( o2 + downsample(x) )

No ReLU before the residual add (the reproduction's extra ReLU is ``relu_before_add``).
In every block the **last** gated ConvBN feeds the residual add; the others feed the next
convolution of the block only.

What pruning can remove (:mod:`gluon_transfer.prune`, :func:`removable_gates`): a channel
with ``m = 0`` outputs exactly 0. After a ConvBN that feeds only the next convolution of the
block (conv1, conv2 of a bottleneck; conv1 of a basic block) that channel is removed
physically: its row of the conv, its BN entries, and the matching input column of the next
conv and of the next gate's FC. The last ConvBN's output is added to the shortcut, whose
channels are all alive (the block input or the downsample's output): a zero there still
lets the shortcut through, and the channel count must equal the shortcut's, so its pruned
channels only get zero weights (they cost nothing in :func:`gluon_transfer.macs.afs_macs`'s
accounting but stay in the dense export). So a bottleneck can shrink conv1 and conv2, a
basic block only conv1 -- roughly half of its MACs (conv1 rows and conv2 input columns).

Networks (each subclasses its GluonCV network, so the structural parameter keys are
GluonCV's plus ``<block>.gateK.{fc.weight, fc.bias, gamma, mask_m, mask_s, density}``; a
GluonCV ``.params`` file or a fine-tuned checkpoint loads with the gate keys missing, see
:func:`load_gluoncv_params`): :class:`AFSResNetV1b` (``block='bottleneck'`` or ``'basic'``)
and :class:`AFSCIFARResNetV1`. With ``gates=False`` (or ``gate_init='identity'``,
``density=1`` and all masks 1) a network computes exactly GluonCV's function.
:func:`afs_from_gluoncv` converts an initialised GluonCV network.

Pruned networks use the same classes with ``block_config``: one dict per block (network
order) with ``widths`` (the reduced output widths of the removable ConvBNs: ``(c1, c2)`` for a
bottleneck, ``(c1,)`` for a basic block) and ``gated`` (one bool per ConvBN; False: a plain
ConvBN whose static multipliers were folded into the BN).

Feature taps: ``features=('stage1', ...)`` (the outputs of the stages), as for every
network of the package.
"""
import warnings

from mxnet.gluon import HybridBlock, nn
from gluoncv.model_zoo.cifarresnet import CIFARResNetV1, CIFARBasicBlockV1
from gluoncv.model_zoo.resnetv1b import ResNetV1b, BottleneckV1b, BasicBlockV1b

from ..errors import ConfigError
from ..nn.gates import AFSGate, check_density, check_wta_round
from .common import TapMixin

__all__ = ['AFSBottleneck', 'AFSBasicBlockV1b', 'AFSCIFARBasicBlockV1', 'AFSResNetV1b', 'AFSCIFARResNetV1',
           'AFS_NETWORKS', 'afs_resnet_v1b', 'afs_resnet18_v1b', 'afs_resnet34_v1b', 'afs_resnet50_v1b',
           'afs_resnet101_v1b', 'afs_cifar_resnet_v1', 'afs_cifar_resnet20_v1', 'afs_cifar_resnet56_v1',
           'afs_cifar_resnet110_v1', 'afs_from_gluoncv', 'afs_gates', 'afs_blocks', 'removable_gates',
           'check_convertible', 'set_gates_enabled', 'set_density', 'load_gluoncv_params']


# ---------------------------------------------------------------------- blocks
class _GatedBlock(HybridBlock):
    """What the AFS blocks share: ``K`` ConvBNs in a chain, ConvBN ``k`` reading the output of
    ConvBN ``k - 1`` (ConvBN 1 the block input), each optionally followed by ``gate<k>``;
    the last one feeds the residual add. Subclasses set ``CONVBN`` (the structural paths
    of each ConvBN's conv and BN) and call :meth:`_make_gates`."""
    CONVBN = ()

    def _make_gates(self, in_channels, widths, gated, density, gates, gate_init, gate_input_norm, wta_round):
        if in_channels is None:
            raise ConfigError('%s needs in_channels (the gate of conv1 reads the block input)' % type(self).__name__)
        if len(gated) != len(self.CONVBN):
            raise ConfigError('%s has %d ConvBNs; gated=%r' % (type(self).__name__, len(self.CONVBN), gated))
        self.widths = tuple(int(w) for w in widths)
        ins = (int(in_channels),) + self.widths[:-1]
        self.gate_names = []
        for i, (cin, cout, on) in enumerate(zip(ins, self.widths, gated)):
            name = 'gate%d' % (i + 1)
            gate = (AFSGate(cin, cout, density=density, enabled=gates, init=gate_init, input_norm=gate_input_norm,
                            wta_round=wta_round) if on else None)
            setattr(self, name, gate)
            if on:
                self.gate_names.append(name)

    @property
    def num_convbn(self):
        return len(self.CONVBN)

    def child(self, path):
        """The child block at a structural ``path`` such as ``'conv1'`` or ``'body.3'``."""
        block = self
        for part in path.split('.'):
            block = block._children[part]
        return block

    def convbn(self, k):
        """``(conv, bn)`` of ConvBN ``k`` (1-based)."""
        conv, bn = self.CONVBN[k - 1]
        return self.child(conv), self.child(bn)

    def gate(self, k):
        return getattr(self, 'gate%d' % k)

    def _gate(self, k, x, y):
        gate = self.gate(k)
        return y if gate is None else gate(x, y)

    def _add(self, F, x, branch):
        if self.relu_before_add:
            branch = F.relu(branch)
        residual = x if self.downsample is None else self.downsample(x)
        # residual + branch, not branch + residual (the same sum, bit for bit): with the gated
        # branch as the first operand, MXNet 1.9's oneDNN conv+sum fusion (optimize_for,
        # tools/export.py) fuses the downsample conv with the sum and then feeds wrong weights to
        # the block's first conv ("Shape inconsistent"); in this order it partitions.
        return residual + branch


def _widths(default, widths, count):
    if widths is None:
        return tuple(default[:count])
    widths = tuple(int(w) for w in widths)
    if len(widths) != count or min(widths) < 1:
        raise ConfigError('AFS block widths must be %d values >= 1, got %r' % (count, widths))
    return widths


class AFSBottleneck(_GatedBlock):
    """``BottleneckV1b`` with AFS gates (see the module docstring). Extra arguments:
    ``density`` (WTA d), ``gates`` (enabled), ``gate_init``, ``gate_input_norm``, ``wta_round``,
    ``relu_before_add``, ``widths`` (conv1/conv2 output channels, default ``planes``),
    ``gated`` (which of the three ConvBNs carry a gate)."""
    expansion = 4
    CONVBN = (('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3'))

    def __init__(self, planes, strides=1, dilation=1, downsample=None, previous_dilation=1, norm_layer=None,
                 norm_kwargs=None, last_gamma=False, in_channels=None, density=0.9, gates=True,
                 gate_init='identity', relu_before_add=False, widths=None, gated=(True, True, True),
                 gate_input_norm='none', wta_round='ceil', **kwargs):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm
        norm_kwargs = norm_kwargs if norm_kwargs is not None else {}
        c1, c2 = _widths((planes, planes), widths, 2)
        c3 = planes * 4
        # Children in BottleneckV1b's order first, so parameter keys and names match GluonCV's.
        self.conv1 = nn.Conv2D(channels=c1, kernel_size=1, use_bias=False)
        self.bn1 = norm_layer(in_channels=c1, **norm_kwargs)
        self.relu1 = nn.Activation('relu')
        self.conv2 = nn.Conv2D(channels=c2, kernel_size=3, strides=strides, padding=dilation, dilation=dilation,
                               use_bias=False)
        self.bn2 = norm_layer(in_channels=c2, **norm_kwargs)
        self.relu2 = nn.Activation('relu')
        self.conv3 = nn.Conv2D(channels=c3, kernel_size=1, use_bias=False)
        if not last_gamma:
            self.bn3 = norm_layer(in_channels=c3, **norm_kwargs)
        else:
            self.bn3 = norm_layer(in_channels=c3, gamma_initializer='zeros', **norm_kwargs)
        self.relu3 = nn.Activation('relu')
        self.downsample = downsample
        self.dilation = dilation
        self.strides = strides
        self.relu_before_add = bool(relu_before_add)
        self._make_gates(in_channels, (c1, c2, c3), gated, density, gates, gate_init, gate_input_norm, wta_round)

    def hybrid_forward(self, F, x):
        o1 = self.relu1(self._gate(1, x, self.bn1(self.conv1(x))))
        o2 = self.relu2(self._gate(2, o1, self.bn2(self.conv2(o1))))
        o3 = self._gate(3, o2, self.bn3(self.conv3(o2)))
        return self.relu3(self._add(F, x, o3))


class AFSBasicBlockV1b(_GatedBlock):
    """``BasicBlockV1b`` with AFS gates (see the module docstring). Extra arguments as
    :class:`AFSBottleneck`; ``widths`` = ``(c1,)``, the output channels of conv1 (default
    ``planes``); ``gated`` has two entries."""
    expansion = 1
    CONVBN = (('conv1', 'bn1'), ('conv2', 'bn2'))

    def __init__(self, planes, strides=1, dilation=1, downsample=None, previous_dilation=1, norm_layer=None,
                 norm_kwargs=None, last_gamma=False, in_channels=None, density=0.9, gates=True,
                 gate_init='identity', relu_before_add=False, widths=None, gated=(True, True),
                 gate_input_norm='none', wta_round='ceil', **kwargs):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm
        norm_kwargs = norm_kwargs if norm_kwargs is not None else {}
        (c1,) = _widths((planes,), widths, 1)
        self.conv1 = nn.Conv2D(channels=c1, kernel_size=3, strides=strides, padding=dilation, dilation=dilation,
                               use_bias=False)
        self.bn1 = norm_layer(in_channels=c1, **norm_kwargs)
        self.relu1 = nn.Activation('relu')
        self.conv2 = nn.Conv2D(channels=planes, kernel_size=3, strides=1, padding=previous_dilation,
                               dilation=previous_dilation, use_bias=False)
        self.bn2 = norm_layer(in_channels=planes, **norm_kwargs)
        self.relu2 = nn.Activation('relu')
        self.downsample = downsample
        self.dilation = dilation
        self.strides = strides
        self.relu_before_add = bool(relu_before_add)
        self._make_gates(in_channels, (c1, planes), gated, density, gates, gate_init, gate_input_norm, wta_round)

    def hybrid_forward(self, F, x):
        o1 = self.relu1(self._gate(1, x, self.bn1(self.conv1(x))))
        o2 = self._gate(2, o1, self.bn2(self.conv2(o1)))
        return self.relu2(self._add(F, x, o2))


class AFSCIFARBasicBlockV1(_GatedBlock):
    """GluonCV's ``CIFARBasicBlockV1`` (``body`` = conv3x3, BN, ReLU, conv3x3, BN; optional
    ``downsample`` = conv1x1, BN) with AFS gates ``gate1`` (after ``body.1``) and ``gate2``
    (after ``body.4``). Arguments as ``CIFARBasicBlockV1`` plus the gate options of
    :class:`AFSBottleneck`; ``widths`` = ``(c1,)``, the output channels of ``body.0``."""
    CONVBN = (('body.0', 'body.1'), ('body.3', 'body.4'))

    def __init__(self, channels, stride, downsample=False, in_channels=0, norm_layer=nn.BatchNorm, norm_kwargs=None,
                 density=0.9, gates=True, gate_init='identity', relu_before_add=False, widths=None,
                 gated=(True, True), gate_input_norm='none', wta_round='ceil', **kwargs):
        super().__init__(**kwargs)
        norm_kwargs = {} if norm_kwargs is None else norm_kwargs
        (c1,) = _widths((channels,), widths, 1)
        # Children as CIFARBasicBlockV1's (same keys body.0 ... body.4, downsample.0/1).
        self.body = nn.HybridSequential(prefix='')
        self.body.add(nn.Conv2D(c1, kernel_size=3, strides=stride, padding=1, use_bias=False,
                                in_channels=in_channels))
        self.body.add(norm_layer(**norm_kwargs))
        self.body.add(nn.Activation('relu'))
        self.body.add(nn.Conv2D(channels, kernel_size=3, strides=1, padding=1, use_bias=False, in_channels=c1))
        self.body.add(norm_layer(**norm_kwargs))
        if downsample:
            self.downsample = nn.HybridSequential(prefix='')
            self.downsample.add(nn.Conv2D(channels, kernel_size=1, strides=stride, use_bias=False,
                                          in_channels=in_channels))
            self.downsample.add(norm_layer(**norm_kwargs))
        else:
            self.downsample = None
        self.relu_before_add = bool(relu_before_add)
        self._make_gates(in_channels or None, (c1, channels), gated, density, gates, gate_init, gate_input_norm,
                         wta_round)

    def hybrid_forward(self, F, x):
        body = self.body
        o1 = body[2](self._gate(1, x, body[1](body[0](x))))
        o2 = self._gate(2, o1, body[4](body[3](o1)))
        return F.Activation(self._add(F, x, o2), act_type='relu')


# ---------------------------------------------------------------------- networks
class _AFSNet(TapMixin):
    """What the AFS networks share: the stages (:meth:`stages`), the gates-off forward and
    the network-wide options (``density``, ``relu_before_add``)."""

    def stages(self):
        """``[(structural path, stage block)]`` in forward order."""
        raise NotImplementedError

    def forward(self, x, *args):
        if self._gates_off:
            # Disabled gates leave their parameters out of the graph on purpose.
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message=r'Parameter .* is not used by any computation')
                return super().forward(x, *args)
        return super().forward(x, *args)


def _gate_options(density, gates, gate_init, gate_input_norm, relu_before_add, wta_round):
    check_density(density)
    check_wta_round(wta_round)
    return dict(density=density, gates=gates, gate_init=gate_init, relu_before_add=relu_before_add,
                gate_input_norm=gate_input_norm, wta_round=wta_round)


def _next_config(factory, block_config):
    if block_config is None:
        return {}
    if factory.count >= len(block_config):
        raise ConfigError('block_config has %d entries but the network has more blocks' % len(block_config))
    return dict(block_config[factory.count])


_V1B_BLOCKS = {'bottleneck': AFSBottleneck, 'basic': AFSBasicBlockV1b}


class _V1bFactory:
    """What ``ResNetV1b._make_layer`` calls for each block: an AFS block of the network's
    kind with the gate options, the running input width and the next ``block_config`` entry."""

    def __init__(self, cls, common, block_config, in_channels):
        self.cls = cls
        self.expansion = cls.expansion
        self.common = common
        self.block_config = list(block_config) if block_config else None
        self.count = 0
        self.in_channels = in_channels

    def __call__(self, planes, strides=1, **kwargs):
        extra = _next_config(self, self.block_config)
        self.count += 1
        block = self.cls(planes, strides, in_channels=self.in_channels, **dict(self.common, **kwargs, **extra))
        self.in_channels = planes * self.expansion
        return block


class AFSResNetV1b(_AFSNet, ResNetV1b):
    """ResNet-v1b (GluonCV structure) with AFS gates in every block.

    Parameters
    ----------
    layers : sequence of 4 ints
        Blocks per stage ([3, 4, 6, 3] ResNet-50, [3, 4, 23, 3] ResNet-101 with
        ``block='bottleneck'``; [2, 2, 2, 2] ResNet-18, [3, 4, 6, 3] ResNet-34 with ``'basic'``).
    classes : int
    block : 'bottleneck' | 'basic'
        :class:`AFSBottleneck` (``BottleneckV1b``) or :class:`AFSBasicBlockV1b` (``BasicBlockV1b``).
    density : float in (0, 1]
        WTA density ``d`` (the reproduction's ``--ratio``, default 0.9).
    gates : bool
        False: every gate is the identity (the plain GluonCV network).
    gate_init : 'identity' | 'random'
        See :mod:`gluon_transfer.nn.gates`.
    gate_input_norm : 'none' | 'l2'
        The gates' input: raw ``GAP(x)`` (the reproduction) or L2-normalised (scale-invariant
        gates; see :mod:`gluon_transfer.nn.gates`).
    wta_round : 'ceil' | 'round'
        How WTA counts the channels it keeps: ``ceil(d n - 1e-3)`` or the reproduction's
        ``round(d n)`` (:func:`~gluon_transfer.nn.gates.wta_keep_count`).
    relu_before_add : bool
        The reproduction's extra ReLU after the last gated ConvBN (changes a pretrained function).
    block_config : list of dicts or None
        Per-block ``widths``/``gated`` (pruned networks; see the module docstring).
    features : tuple of 'stage1'..'stage4'
    deep_stem, stem_width, avg_down, last_gamma, use_global_stats, norm_kwargs, final_drop :
        as GluonCV's ``ResNetV1b`` (v1c/v1d variants).
    """

    def __init__(self, layers=(3, 4, 6, 3), classes=1000, density=0.9, gates=True, gate_init='identity',
                 relu_before_add=False, block_config=None, features=(), deep_stem=False, stem_width=32,
                 avg_down=False, last_gamma=False, use_global_stats=False, norm_kwargs=None, final_drop=0.0,
                 name_prefix='resnetv1b_', gate_input_norm='none', block='bottleneck', wta_round='ceil'):
        config = dict(layers=list(layers), classes=classes, density=density, gates=gates, gate_init=gate_init,
                      gate_input_norm=gate_input_norm, block=block, wta_round=wta_round,
                      relu_before_add=relu_before_add, block_config=block_config, deep_stem=deep_stem,
                      stem_width=stem_width, avg_down=avg_down, last_gamma=last_gamma,
                      use_global_stats=use_global_stats, norm_kwargs=norm_kwargs, final_drop=final_drop,
                      name_prefix=name_prefix)
        layers = [int(v) for v in layers]
        if len(layers) != 4 or min(layers) < 1:
            raise ConfigError('AFS ResNet needs 4 stages with >= 1 block each, got layers=%r' % (layers,))
        if block not in _V1B_BLOCKS:
            raise ConfigError("AFS ResNet-v1b block must be 'bottleneck' or 'basic', got %r" % (block,))
        cls = _V1B_BLOCKS[block]
        common = _gate_options(density, gates, gate_init, gate_input_norm, relu_before_add, wta_round)
        factory = _V1bFactory(cls, common, block_config, stem_width * 2 if deep_stem else 64)
        super().__init__(factory, layers, classes=classes, deep_stem=deep_stem, stem_width=stem_width,
                         avg_down=avg_down, last_gamma=last_gamma, use_global_stats=use_global_stats,
                         norm_kwargs=dict(norm_kwargs or {}), final_drop=final_drop, name_prefix=name_prefix)
        if block_config is not None and factory.count != len(block_config):
            raise ConfigError('block_config has %d entries but the network has %d blocks'
                              % (len(block_config), factory.count))
        self.block = block
        self.density = float(density)
        self.relu_before_add = bool(relu_before_add)
        info = [dict(name='stage%d' % (i + 1), channels=64 * 2 ** i * cls.expansion, stride=4 * 2 ** i)
                for i in range(4)]
        self._init_taps(features, info, config)
        self._gates_off = not gates

    def stages(self):
        return [(name, getattr(self, name)) for name in ('layer1', 'layer2', 'layer3', 'layer4')]

    def hybrid_forward(self, F, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = {}
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            name = 'stage%d' % (i + 1)
            if self._want(name):
                taps[name] = x
        x = self.flat(self.avgpool(x))
        if self.drop is not None:
            x = self.drop(x)
        return self._tap_output(self.fc(x), taps)


class _CIFARFactory:
    """What ``CIFARResNetV1._make_layer`` calls for each block: an :class:`AFSCIFARBasicBlockV1`
    with the gate options and the next ``block_config`` entry."""

    def __init__(self, common, block_config):
        self.common = common
        self.block_config = list(block_config) if block_config else None
        self.count = 0

    def __call__(self, channels, stride, downsample=False, **kwargs):
        extra = _next_config(self, self.block_config)
        self.count += 1
        return AFSCIFARBasicBlockV1(channels, stride, downsample, **dict(self.common, **kwargs, **extra))


class AFSCIFARResNetV1(_AFSNet, CIFARResNetV1):
    """GluonCV's CIFAR ResNet-v1 (``cifar_resnet20_v1``: ``layers=[3, 3, 3]``, ``channels=[16,
    16, 32, 64]``; depth ``6 n + 2`` with ``n`` blocks per stage) with AFS gates in every
    basic block. ``features`` = [0 conv, 1 BN (no ReLU: GluonCV's stem), 2-4 the stages,
    5 global pool]; ``output`` the classifier. Gate options, ``block_config`` and
    ``features`` (``'stage1'..'stage3'``) as :class:`AFSResNetV1b`."""

    def __init__(self, layers=(3, 3, 3), channels=(16, 16, 32, 64), classes=10, density=0.9, gates=True,
                 gate_init='identity', relu_before_add=False, block_config=None, features=(), norm_kwargs=None,
                 gate_input_norm='none', wta_round='ceil', **kwargs):
        config = dict(layers=list(layers), channels=list(channels), classes=classes, density=density, gates=gates,
                      gate_init=gate_init, relu_before_add=relu_before_add, block_config=block_config,
                      norm_kwargs=norm_kwargs, gate_input_norm=gate_input_norm, wta_round=wta_round)
        layers, channels = [int(v) for v in layers], [int(v) for v in channels]
        if not layers or min(layers) < 1 or len(channels) != len(layers) + 1:
            raise ConfigError('AFS CIFAR ResNet needs >= 1 block per stage and one more channel count than stages; '
                              'got layers=%r, channels=%r' % (layers, channels))
        common = _gate_options(density, gates, gate_init, gate_input_norm, relu_before_add, wta_round)
        factory = _CIFARFactory(common, block_config)
        super().__init__(factory, layers, channels, classes=classes, norm_kwargs=norm_kwargs, **kwargs)
        if block_config is not None and factory.count != len(block_config):
            raise ConfigError('block_config has %d entries but the network has %d blocks'
                              % (len(block_config), factory.count))
        self.density = float(density)
        self.relu_before_add = bool(relu_before_add)
        self._stage_index = {2 + i: 'stage%d' % (i + 1) for i in range(len(layers))}
        info = [dict(name='stage%d' % (i + 1), channels=channels[i + 1], stride=2 ** i) for i in range(len(layers))]
        self._init_taps(features, info, config)
        self._gates_off = not gates

    def stages(self):
        return [('features.%d' % i, self.features[i]) for i in sorted(self._stage_index)]

    def hybrid_forward(self, F, x):
        return self._forward_features(x)


AFS_NETWORKS = (AFSResNetV1b, AFSCIFARResNetV1)


def afs_resnet_v1b(**kwargs):
    """:class:`AFSResNetV1b` (generic; pass ``layers`` and ``block``)."""
    return AFSResNetV1b(**kwargs)


def _v1b_preset(layers, block, doc):
    def factory(**kwargs):
        return AFSResNetV1b(**dict(kwargs, layers=kwargs.get('layers', layers), block=kwargs.get('block', block)))
    factory.__doc__ = doc
    return factory


afs_resnet18_v1b = _v1b_preset([2, 2, 2, 2], 'basic', "AFS ResNet-18-v1b: ``AFSResNetV1b(layers=[2, 2, 2, 2], "
                                                      "block='basic')``.")
afs_resnet34_v1b = _v1b_preset([3, 4, 6, 3], 'basic', "AFS ResNet-34-v1b: ``AFSResNetV1b(layers=[3, 4, 6, 3], "
                                                      "block='basic')``.")
afs_resnet50_v1b = _v1b_preset([3, 4, 6, 3], 'bottleneck', 'AFS ResNet-50-v1b: ``AFSResNetV1b(layers=[3, 4, 6, 3])``.')
afs_resnet101_v1b = _v1b_preset([3, 4, 23, 3], 'bottleneck', 'AFS ResNet-101-v1b: ``AFSResNetV1b(layers=[3, 4, 23, '
                                                             '3])`` (the AFDS paper\'s network).')


def afs_cifar_resnet_v1(**kwargs):
    """:class:`AFSCIFARResNetV1` (generic; pass ``layers`` and ``channels``)."""
    return AFSCIFARResNetV1(**kwargs)


def _cifar_preset(depth):
    n = (depth - 2) // 6

    def factory(**kwargs):
        return AFSCIFARResNetV1(**dict(kwargs, layers=kwargs.get('layers', [n] * 3)))
    factory.__doc__ = 'AFS CIFAR ResNet-%d-v1: ``AFSCIFARResNetV1(layers=[%d, %d, %d])``.' % (depth, n, n, n)
    return factory


afs_cifar_resnet20_v1 = _cifar_preset(20)
afs_cifar_resnet56_v1 = _cifar_preset(56)
afs_cifar_resnet110_v1 = _cifar_preset(110)


# ---------------------------------------------------------------------- helpers
def _check_afs(net):
    if not isinstance(net, AFS_NETWORKS):
        raise ConfigError('expected an AFS network (%s), got %s'
                          % (', '.join(c.__name__ for c in AFS_NETWORKS), type(net).__name__))


def afs_blocks(net):
    """``[(structural name, block)]`` of every residual block of the AFS network ``net``."""
    _check_afs(net)
    return [('%s.%s' % (sname, bname), block) for sname, stage in net.stages()
            for bname, block in stage._children.items()]


def afs_gates(net):
    """``[(structural name, block, index k (1-based), AFSGate or None, conv, producer name)]``
    for every ConvBN of every block in order; ``producer`` is the gated layer whose output the
    conv reads (None for the block's first conv, which reads the block input)."""
    out = []
    for bname, block in afs_blocks(net):
        prev = None
        for k in range(1, block.num_convbn + 1):
            name = '%s.gate%d' % (bname, k)
            out.append((name, block, k, block.gate(k), block.convbn(k)[0], prev))
            prev = name
    return out


def removable_gates(net):
    """Names of the gated layers whose pruned (``m = 0``) channels the pruned export removes:
    every ConvBN of a block but the last, whose output is added to the shortcut (module
    docstring). Bottleneck: ``...gate1``, ``...gate2``; basic block: ``...gate1``."""
    return frozenset(name for name, block, k, _, _, _ in afs_gates(net) if k < block.num_convbn)


def set_gates_enabled(net, enabled):
    """Switch every AFS gate of ``net`` on or off and drop cached graphs (a hybridized
    network rebuilds its graph on the next call)."""
    for _, _, _, gate, _, _ in afs_gates(net):
        if gate is not None:
            gate.set_enabled(enabled)
    net._gates_off = not enabled
    net.apply(lambda b: b._clear_cached_op() if isinstance(b, HybridBlock) else None)
    return net


def set_density(net, density):
    """Set the WTA density ``d`` of every gate (a parameter: no graph rebuild needed)."""
    for _, _, _, gate, _, _ in afs_gates(net):
        if gate is not None:
            gate.set_density(density)
    net.density = float(density)
    return net


_SUPPORTED = ('GluonCV ResNet-v1b with BottleneckV1b or BasicBlockV1b blocks (resnet18/34/50/101_v1b, v1c/v1d) or '
              'a GluonCV CIFAR ResNet-v1 (cifar_resnet20/56/110_v1)')


def check_convertible(net):
    """What :func:`afs_from_gluoncv` needs to know about ``net``: ``('v1b', layers, block)``
    for a GluonCV ``ResNetV1b`` of ``BottleneckV1b`` or ``BasicBlockV1b`` blocks
    (``block`` 'bottleneck' or 'basic'), ``('cifar', layers, channels)`` for a GluonCV
    ``CIFARResNetV1``. Anything else (ResNet-v1/v2, mixed blocks, dilated networks, CIFAR
    ResNet-v2) raises ConfigError naming the network or block."""
    if isinstance(net, CIFARResNetV1):
        layers, channels = [], [net.features[0]._channels]
        for i in range(2, len(net.features)):
            stage = net.features[i]
            if not isinstance(stage, nn.HybridSequential):
                continue
            blocks = list(stage._children.items())
            for bname, block in blocks:
                if not isinstance(block, (CIFARBasicBlockV1, AFSCIFARBasicBlockV1)):
                    raise ConfigError('AFS gates support CIFARBasicBlockV1 blocks in a CIFAR ResNet; features.%d.%s '
                                      'is a %s' % (i, bname, type(block).__name__))
            layers.append(len(blocks))
            channels.append(blocks[0][1].body[3]._channels)
        return 'cifar', layers, channels
    if not isinstance(net, ResNetV1b):
        raise ConfigError('AFS gates need a %s; got %s' % (_SUPPORTED, type(net).__name__))
    layers, kinds = [], set()
    for lname in ('layer1', 'layer2', 'layer3', 'layer4'):
        stage = getattr(net, lname)
        for bname, block in stage._children.items():
            if isinstance(block, (BottleneckV1b, AFSBottleneck)):
                kinds.add('bottleneck')
            elif isinstance(block, (BasicBlockV1b, AFSBasicBlockV1b)):
                kinds.add('basic')
            else:
                raise ConfigError('AFS gates support BottleneckV1b and BasicBlockV1b blocks; %s.%s is a %s'
                                  % (lname, bname, type(block).__name__))
            convs = [c for c in block._children.values() if isinstance(c, nn.Conv2D)]
            if any(c._kwargs['dilate'] != (1, 1) for c in convs):
                raise ConfigError('AFS gates do not support dilated ResNets (%s.%s)' % (lname, bname))
        layers.append(len(stage))
    if len(kinds) != 1:
        raise ConfigError('AFS gates need one block type per network; %s mixes %s'
                          % (type(net).__name__, ' and '.join(sorted(kinds))))
    return 'v1b', layers, kinds.pop()


def afs_from_gluoncv(net, **kwargs):
    """An AFS network with ``net``'s weights copied (``net``: an initialised GluonCV
    ``ResNetV1b`` of bottleneck or basic blocks, e.g. ``resnet50_v1b``, ``resnet18_v1b``,
    ``resnet50_v1d``, or a ``CIFARResNetV1`` such as ``cifar_resnet20_v1``). Gate parameters
    are freshly initialised on the same context. ``kwargs``: gate options (``density``,
    ``gates``, ``gate_init``, ``gate_input_norm``, ``wta_round``, ``relu_before_add``, ``features``).
    Anything else raises ConfigError naming the network or block (:func:`check_convertible`)."""
    kind, layers, extra = check_convertible(net)
    if kind == 'cifar':
        classes = net.output._units
        afs = AFSCIFARResNetV1(layers=layers, channels=extra, classes=classes, **kwargs)
    else:
        deep_stem = isinstance(net.conv1, nn.HybridSequential)
        stem_width = net.conv1[0]._channels if deep_stem else 32
        down = net.layer2[0].downsample
        avg_down = down is not None and isinstance(down[0], nn.AvgPool2D)
        afs = AFSResNetV1b(layers=layers, classes=net.fc._units, deep_stem=deep_stem, stem_width=stem_width,
                           avg_down=avg_down, norm_kwargs=dict(net.norm_kwargs), block=extra, **kwargs)
    src = net._collect_params_with_prefix()
    ctx = next(iter(net.collect_params().values())).list_ctx()
    afs.initialize(ctx=ctx)
    for key, p in afs._collect_params_with_prefix().items():
        if key in src:
            p.set_data(src[key].data(ctx[0]))
        elif '.gate' not in key:
            raise ConfigError('cannot copy %s into an AFS network: no source for key %r' % (type(net).__name__, key))
    return afs


def load_gluoncv_params(net, path, ctx=None):
    """Load a GluonCV ``.params`` file of the plain network (``resnet*_v1b``,
    ``cifar_resnet*_v1``, or a checkpoint of it) into an AFS network: every non-gate key must
    be present; only gate keys may be missing. Returns the
    :func:`~gluon_transfer.weights.load_params` report."""
    from ..errors import CheckpointError
    from ..weights import load_params, read_params
    keys = set(read_params(path))
    missing = [k for k in net._collect_params_with_prefix() if k not in keys and '.gate' not in k]
    if missing:
        raise CheckpointError('%s does not fit %s: missing non-gate key %r (%d in total)'
                              % (path, type(net).__name__, missing[0], len(missing)))
    return load_params(net, path, ctx=ctx, strict=False, allow_missing=True)


def _register():
    from ..registry import MODELS
    for name in ('afs_resnet_v1b', 'afs_resnet18_v1b', 'afs_resnet34_v1b', 'afs_resnet50_v1b', 'afs_resnet101_v1b',
                 'afs_cifar_resnet_v1', 'afs_cifar_resnet20_v1', 'afs_cifar_resnet56_v1', 'afs_cifar_resnet110_v1'):
        MODELS.register(name, obj=globals()[name])


_register()
