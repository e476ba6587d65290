"""GluonCV ResNet-v1b with AFS gates after every ConvBN of every bottleneck (AFDS).

:class:`AFSBottleneck` is GluonCV's ``BottleneckV1b`` (same children, same order, same
parameter keys) plus three :class:`~gluon_transfer.nn.gates.AFSGate` children ``gate1``,
``gate2``, ``gate3``, each reading the input of its convolution::

    o1  = relu( gate1(x,  BN1(conv1(x))) )
    o2  = relu( gate2(o1, BN2(conv2(o1))) )
    o3  =       gate3(o2, BN3(conv3(o2)))            [relu(o3) with relu_before_add=True]
    out = relu( o3 + downsample(x) )

No ReLU before the residual add (the reproduction's extra ReLU is ``relu_before_add``).
:class:`AFSResNetV1b` subclasses GluonCV's ``ResNetV1b``, so its structural parameter keys
are those of ``resnet50_v1b``/``resnet101_v1b`` plus ``layerL.i.gateK.{fc.weight, fc.bias,
gamma, mask_m, mask_s, wta_density}``: a GluonCV ``.params`` file (or a fine-tuned checkpoint) loads with
the gate keys missing (``load_params(..., allow_missing=True)``, see
:func:`load_gluoncv_params`). With ``gates=False`` (or ``gate_init='identity'``,
``density=1`` and all masks 1) the network computes exactly GluonCV's function.

Pruned networks (:mod:`gluon_transfer.prune`) use the same class with ``block_config``:
one dict per bottleneck (in network order) with ``widths=(c1, c2)`` (the reduced outputs
of conv1/conv2; conv3 keeps ``4 * planes`` for the residual add) and ``gated=(g1, g2, g3)``
(False: no gate, a plain ConvBN whose static multipliers were folded into the BN).

Feature taps: ``features=('stage1', ..., 'stage4')`` (the outputs of ``layer1..layer4``),
as for every network of the package.
"""
import warnings

from mxnet.gluon import HybridBlock, nn
from gluoncv.model_zoo.resnetv1b import ResNetV1b, BottleneckV1b

from ..errors import ConfigError
from ..nn.gates import AFSGate, check_density
from .common import TapMixin

__all__ = ['AFSBottleneck', 'AFSResNetV1b', 'afs_resnet_v1b', 'afs_resnet50_v1b', 'afs_resnet101_v1b',
           'afs_from_gluoncv', 'afs_gates', 'set_gates_enabled', 'set_density', 'load_gluoncv_params']


class AFSBottleneck(HybridBlock):
    """``BottleneckV1b`` with AFS gates (see the module docstring). Extra arguments:
    ``density`` (WTA d), ``gates`` (enabled), ``gate_init``, ``relu_before_add``,
    ``widths`` (conv1/conv2 output channels, default ``planes``), ``gated`` (which of the
    three ConvBNs carry a gate)."""
    expansion = 4

    def __init__(self, planes, strides=1, dilation=1, downsample=None, previous_dilation=1, norm_layer=None,
                 norm_kwargs=None, last_gamma=False, in_channels=None, density=0.9, gates=True,
                 gate_init='identity', relu_before_add=False, widths=None, gated=(True, True, True),
                 gate_input_norm='none', **kwargs):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm
        norm_kwargs = norm_kwargs if norm_kwargs is not None else {}
        c1, c2 = (planes, planes) if widths is None else (int(widths[0]), int(widths[1]))
        c3 = planes * 4
        if min(c1, c2) < 1:
            raise ConfigError('AFS bottleneck widths must be >= 1, got %r' % ((c1, c2),))
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
        self.widths = (c1, c2, c3)
        if in_channels is None:
            raise ConfigError('AFSBottleneck needs in_channels (the gate of conv1 reads the block input)')
        ins = (int(in_channels), c1, c2)
        self.gate_names = []
        for i, (cin, cout, on) in enumerate(zip(ins, self.widths, gated)):
            name = 'gate%d' % (i + 1)
            gate = (AFSGate(cin, cout, density=density, enabled=gates, init=gate_init, input_norm=gate_input_norm)
                    if on else None)
            setattr(self, name, gate)
            if on:
                self.gate_names.append(name)

    def _gate(self, name, x, y):
        gate = getattr(self, name)
        return y if gate is None else gate(x, y)

    def hybrid_forward(self, F, x):
        residual = x
        o1 = self.relu1(self._gate('gate1', x, self.bn1(self.conv1(x))))
        o2 = self.relu2(self._gate('gate2', o1, self.bn2(self.conv2(o1))))
        o3 = self._gate('gate3', o2, self.bn3(self.conv3(o2)))
        if self.relu_before_add:
            o3 = F.relu(o3)
        if self.downsample is not None:
            residual = self.downsample(x)
        # residual + o3, not o3 + residual (the same sum, bit for bit): with the gated branch as
        # the first operand, MXNet 1.9's oneDNN conv+sum fusion (optimize_for, tools/export.py)
        # fuses the downsample conv with the sum and then feeds wrong weights to the block's
        # first conv ("Shape inconsistent, Provided = [64,64,3,3]"); in this order it partitions.
        return self.relu3(residual + o3)


class _BlockFactory:
    """What ``ResNetV1b._make_layer`` calls for each block: an :class:`AFSBottleneck` with the
    network's gate options, the running input width, and the next ``block_config`` entry."""
    expansion = 4

    def __init__(self, common, block_config):
        self.common = common
        self.block_config = list(block_config) if block_config else None
        self.count = 0
        self.in_channels = None

    def __call__(self, planes, strides=1, **kwargs):
        extra = {}
        if self.block_config is not None:
            if self.count >= len(self.block_config):
                raise ConfigError('block_config has %d entries but the network has more bottlenecks'
                                  % len(self.block_config))
            extra = dict(self.block_config[self.count])
        self.count += 1
        block = AFSBottleneck(planes, strides, in_channels=self.in_channels, **dict(self.common, **kwargs, **extra))
        self.in_channels = planes * 4
        return block


class AFSResNetV1b(TapMixin, ResNetV1b):
    """ResNet-v1b (GluonCV structure) with AFS gates in every bottleneck.

    Parameters
    ----------
    layers : sequence of 4 ints
        Bottlenecks per stage ([3, 4, 6, 3] ResNet-50, [3, 4, 23, 3] ResNet-101).
    classes : int
    density : float in (0, 1]
        WTA density ``d`` (the reproduction's ``--ratio``, default 0.9).
    gates : bool
        False: every gate is the identity (the plain GluonCV network).
    gate_init : 'identity' | 'random'
        See :mod:`gluon_transfer.nn.gates`.
    gate_input_norm : 'none' | 'l2'
        The gates' input: raw ``GAP(x)`` (the reproduction) or L2-normalised (scale-invariant
        gates; see :mod:`gluon_transfer.nn.gates`).
    relu_before_add : bool
        The reproduction's extra ReLU after the gated conv3 (changes a pretrained function).
    block_config : list of dicts or None
        Per-bottleneck ``widths``/``gated`` (pruned networks; see the module docstring).
    features : tuple of 'stage1'..'stage4'
    deep_stem, stem_width, avg_down, last_gamma, use_global_stats, norm_kwargs, final_drop :
        as GluonCV's ``ResNetV1b`` (v1c/v1d variants).
    """

    def __init__(self, layers=(3, 4, 6, 3), classes=1000, density=0.9, gates=True, gate_init='identity',
                 relu_before_add=False, block_config=None, features=(), deep_stem=False, stem_width=32,
                 avg_down=False, last_gamma=False, use_global_stats=False, norm_kwargs=None, final_drop=0.0,
                 name_prefix='resnetv1b_', gate_input_norm='none'):
        config = dict(layers=list(layers), classes=classes, density=density, gates=gates, gate_init=gate_init,
                      gate_input_norm=gate_input_norm,
                      relu_before_add=relu_before_add, block_config=block_config, deep_stem=deep_stem,
                      stem_width=stem_width, avg_down=avg_down, last_gamma=last_gamma,
                      use_global_stats=use_global_stats, norm_kwargs=norm_kwargs, final_drop=final_drop,
                      name_prefix=name_prefix)
        layers = [int(v) for v in layers]
        if len(layers) != 4 or min(layers) < 1:
            raise ConfigError('AFS ResNet needs 4 stages with >= 1 bottleneck each, got layers=%r' % (layers,))
        check_density(density)
        factory = _BlockFactory(dict(density=density, gates=gates, gate_init=gate_init,
                                     relu_before_add=relu_before_add, gate_input_norm=gate_input_norm), block_config)
        factory.in_channels = stem_width * 2 if deep_stem else 64
        super().__init__(factory, layers, classes=classes, deep_stem=deep_stem, stem_width=stem_width,
                         avg_down=avg_down, last_gamma=last_gamma, use_global_stats=use_global_stats,
                         norm_kwargs=dict(norm_kwargs or {}), final_drop=final_drop, name_prefix=name_prefix)
        if block_config is not None and factory.count != len(block_config):
            raise ConfigError('block_config has %d entries but the network has %d bottlenecks'
                              % (len(block_config), factory.count))
        self.density = float(density)
        self.relu_before_add = bool(relu_before_add)
        info = [dict(name='stage%d' % (i + 1), channels=64 * 2 ** i * 4, stride=4 * 2 ** i) for i in range(4)]
        self._init_taps(features, info, config)
        self._gates_off = not gates

    def forward(self, x, *args):
        if self._gates_off:
            # Disabled gates leave their parameters out of the graph on purpose.
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message=r'Parameter .* is not used by any computation')
                return super().forward(x, *args)
        return super().forward(x, *args)

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


def afs_resnet_v1b(**kwargs):
    """:class:`AFSResNetV1b` (generic; pass ``layers``)."""
    return AFSResNetV1b(**kwargs)


def afs_resnet50_v1b(**kwargs):
    """AFS ResNet-50-v1b: ``AFSResNetV1b(layers=[3, 4, 6, 3])``."""
    return AFSResNetV1b(**dict(kwargs, layers=kwargs.get('layers', [3, 4, 6, 3])))


def afs_resnet101_v1b(**kwargs):
    """AFS ResNet-101-v1b: ``AFSResNetV1b(layers=[3, 4, 23, 3])`` (the AFDS paper's network)."""
    return AFSResNetV1b(**dict(kwargs, layers=kwargs.get('layers', [3, 4, 23, 3])))


# ---------------------------------------------------------------------- helpers
def afs_gates(net):
    """``[(structural name, AFSBottleneck, gate index 1..3, AFSGate or None, conv, producer name)]``
    for every ConvBN of every bottleneck in order; ``producer`` is the gated layer whose
    output the conv reads (None for conv1, which reads the block input)."""
    if not isinstance(net, AFSResNetV1b):
        raise ConfigError('expected an AFS network (AFSResNetV1b), got %s' % type(net).__name__)
    out = []
    for lname in ('layer1', 'layer2', 'layer3', 'layer4'):
        for bname, block in getattr(net, lname)._children.items():
            prev = None
            for k in (1, 2, 3):
                name = '%s.%s.gate%d' % (lname, bname, k)
                out.append((name, block, k, getattr(block, 'gate%d' % k), getattr(block, 'conv%d' % k), prev))
                prev = name
    return out


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


def _check_v1b(net):
    if not isinstance(net, ResNetV1b):
        raise ConfigError('AFS gates need a GluonCV ResNetV1b network with BottleneckV1b blocks; got %s'
                          % type(net).__name__)
    layers = []
    for lname in ('layer1', 'layer2', 'layer3', 'layer4'):
        stage = getattr(net, lname)
        for bname, block in stage._children.items():
            if not isinstance(block, (BottleneckV1b, AFSBottleneck)):
                raise ConfigError('AFS gates support BottleneckV1b blocks only; %s.%s is a %s'
                                  % (lname, bname, type(block).__name__))
            if block.dilation != 1 or block.conv2._kwargs['dilate'] != (1, 1):
                raise ConfigError('AFS gates do not support dilated ResNets (%s.%s)' % (lname, bname))
        layers.append(len(stage))
    return layers


def afs_from_gluoncv(net, **kwargs):
    """An :class:`AFSResNetV1b` with ``net``'s weights copied (``net``: an initialised GluonCV
    ``ResNetV1b`` with ``BottleneckV1b`` blocks, e.g. ``resnet50_v1b`` or ``resnet50_v1d``).
    Gate parameters are freshly initialised on the same context. ``kwargs``: gate options
    (``density``, ``gates``, ``gate_init``, ``gate_input_norm``, ``relu_before_add``, ``features``). Anything else
    (``BasicBlockV1b``, ResNet-v1/v2, dilated nets) raises ConfigError naming the block."""
    layers = _check_v1b(net)
    deep_stem = isinstance(net.conv1, nn.HybridSequential)
    stem_width = net.conv1[0]._channels if deep_stem else 32
    down = net.layer2[0].downsample
    avg_down = down is not None and isinstance(down[0], nn.AvgPool2D)
    classes = net.fc._units
    afs = AFSResNetV1b(layers=layers, classes=classes, deep_stem=deep_stem, stem_width=stem_width,
                       avg_down=avg_down, norm_kwargs=dict(net.norm_kwargs), **kwargs)
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
    """Load a GluonCV ``resnet*_v1b`` ``.params`` file (or a checkpoint of the plain network)
    into an AFS network: every non-gate key must be present; only gate keys may be missing.
    Returns the :func:`~gluon_transfer.weights.load_params` report."""
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
    MODELS.register('afs_resnet_v1b', obj=afs_resnet_v1b)
    MODELS.register('afs_resnet50_v1b', obj=afs_resnet50_v1b)
    MODELS.register('afs_resnet101_v1b', obj=afs_resnet101_v1b)


_register()
