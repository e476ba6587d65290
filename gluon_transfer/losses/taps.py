"""Feature taps of the transfer regularizers: which convolutions are compared, their output
shapes, and a view of a network that returns their maps.

ResNet stage ends
-----------------
DELTA, AFD, AFA and the feature-map distance compare the *raw output of the last
convolution of a residual block, before its BatchNorm and before the residual add* (DELTA,
AFDS and AFA hook ``layer1.2.conv3``, ``layer2.3.conv3``, ``layer3.22.conv3``,
``layer4.2.conv3`` of ResNet-101 in their reference code).
:func:`stage_end_taps` derives these names from the network's structure instead of a
table per architecture: for every residual stage (:func:`residual_stages`: the children
``layer<K>`` of a ResNet-v1b, or the ``stage<K>_`` blocks inside ``features`` of GluonCV's
ResNet-v1/v2 and CIFAR ResNets) it takes the stage's last block and the last convolution
of that block's main path (:func:`last_main_conv`) -- ``conv3`` of a ``BottleneckV1b``,
``conv2`` of a ``BasicBlockV1b`` (ResNet-18/34-v1b get the analogous taps), ``body.3`` of
a ``CIFARBasicBlockV1`` and ``conv2`` of a ``CIFARBasicBlockV2``; the ``downsample`` and
``se`` branches are never taken. ``cifar_resnet20_v1``: ``features.2.2.body.3``,
``features.3.2.body.3``, ``features.4.2.body.3``, 16/32/64 channels at strides 1/2/4
(32/16/8 px maps at 32 px); ``cifar_resnet56_v1``: the same with block ``8``.

MobileNetV2 (AFA)
-----------------
AFA hooks torchvision's ``features.{5,9,13,17}.conv.2``: the linear 1x1 projection conv
(before its BatchNorm and before the residual add) of the 5th, 9th, 13th and 17th
inverted-residual block (torchvision's ``features.0`` is the stem, ``features.1..17`` the
17 blocks). Output channels 32/64/96/320, stride 8/16/16/32 (28/14/14/7 at 224 px).
GluonCV's ``MobileNetV2`` has the same 17 ``LinearBottleneck`` blocks inside ``features``
(after conv/BN/ReLU6 at positions 0-2); each block's ``out`` Sequential ends with the
projection ``Conv2D`` followed by its ``BatchNorm``. :func:`mobilenetv2_taps` walks that
tree: it counts the blocks in order and takes the last ``Conv2D`` of ``out`` of blocks
5, 9, 13 and 17 (1-based), i.e. ``features.7.out.6``, ``features.11.out.6``,
``features.15.out.6``, ``features.19.out.6`` of ``mobilenetv2_1.0``.

Names and symbols
-----------------
Names are structural paths (the ``_children`` names joined by dots, the keys
``save_parameters`` uses: ``layer3.22.conv3``, ``features.15.out.6``); they do not depend on
the auto-numbered symbol names, which change with how many networks a process has built.
A path is turned into its symbol output through the conv object's own prefix
(``conv.prefix + 'fwd_output'``). GluonCV blocks are hybrid, so forward hooks would not
fire once hybridized; instead the network is called on a symbol once and the taps are
picked from the graph's internals. :func:`bottleneck_taps` wraps ``[logits] + taps`` in a
:class:`mxnet.gluon.SymbolBlock` that *shares the network's Parameter objects*: training
through it updates the network itself, and it can run hybridized (a cached op). An unknown
name raises :class:`ConfigError` listing close valid names.

(The attention-transfer branch has its own tap helper, ``gluon_transfer/nn/feature.py``:
block outputs and stage aliases rather than convolution outputs.)
"""
import collections
import re

import numpy as np
import mxnet as mx
from mxnet import gluon

from ..errors import ConfigError
from ..registry import unknown_name_message

__all__ = ['conv_paths', 'residual_stages', 'last_main_conv', 'stage_end_taps', 'STAGE_END_STRIDES', 'conv_output_shapes', 'check_tap_shapes', 'TapNet', 'bottleneck_taps',
           'linear_bottlenecks', 'is_mobilenetv2', 'mobilenetv2_taps', 'TORCHVISION_MOBILENETV2_BLOCKS',
           'MOBILENETV2_TAP_CHANNELS', 'MOBILENETV2_TAP_STRIDES']


def conv_paths(net):
    """``OrderedDict`` structural path -> ``Conv2D`` block, in registration order."""
    out = collections.OrderedDict()

    def walk(block, path):
        for name, child in block._children.items():
            p = path + name
            if isinstance(child, gluon.nn.Conv2D):
                out[p] = child
            walk(child, p + '.')
    walk(net, '')
    return out


_STAGE = re.compile(r'^layer(\d+)$')
_STAGE_PREFIX = re.compile(r'stage(\d+)_$')
# Children of a residual block that are not its main path: the shortcut projection and a
# squeeze-and-excitation branch (whose 1x1 convs would otherwise come last).
_SIDE_BRANCHES = ('downsample', 'se')


def residual_stages(net):
    """``[(path, stage block)]`` of the residual stages of ``net``, in stage order:

    * GluonCV ResNet-v1b (and our AFS variant): the children ``layer1``, ``layer2``, ...;
    * GluonCV ResNet-v1/v2 and the CIFAR ResNets (``cifar_resnet20_v1``...): the children
      of a child Sequential (``features``) whose prefix ends in ``stage<K>_``
      (``features.2``, ``features.3``, ``features.4`` of ``cifar_resnet20_v1``).

    Empty when the network has neither."""
    stages = sorted(((int(m.group(1)), name, child) for name, child in net._children.items()
                     for m in [_STAGE.match(name)] if m), key=lambda t: t[0])
    if not stages:
        found = {}
        for name, child in net._children.items():
            for cname, sub in child._children.items():
                m = _STAGE_PREFIX.search(sub.prefix)
                if m and int(m.group(1)) not in found:
                    found[int(m.group(1))] = ('%s.%s' % (name, cname), sub)
        stages = [(k,) + found[k] for k in sorted(found)]
    return [(path, block) for _, path, block in stages]


def last_main_conv(block, path=''):
    """Structural path (below ``path``) of the last ``Conv2D`` on the main path of a residual
    block: its last direct ``Conv2D`` child if it has one (``conv3`` of ``BottleneckV1b``,
    ``conv2`` of ``BasicBlockV1b`` / ``CIFARBasicBlockV2``), else the last one inside its
    child Sequentials (``body.3`` of ``CIFARBasicBlockV1``, ``body.6`` of ``BottleneckV1``);
    the ``downsample`` and ``se`` branches are never taken. None when there is none."""
    direct = [n for n, c in block._children.items() if isinstance(c, gluon.nn.Conv2D)]
    if direct:
        return path + direct[-1]
    found = None
    for name, child in block._children.items():
        if name in _SIDE_BRANCHES:
            continue
        sub = last_main_conv(child, path + name + '.')
        if sub is not None:
            found = sub
    return found


def stage_end_taps(net):
    """Default feature taps: the last convolution of the main path of the last block of each
    residual stage (:func:`residual_stages`, :func:`last_main_conv`), e.g.
    ``['layer1.2.conv3', 'layer2.3.conv3', 'layer3.5.conv3', 'layer4.2.conv3']`` for
    resnet50_v1b and ``['features.2.2.body.3', 'features.3.2.body.3', 'features.4.2.body.3']``
    (16/32/64 channels at strides 1/2/4) for cifar_resnet20_v1."""
    taps = []
    for spath, stage in residual_stages(net):
        blocks = list(stage._children.items())
        if not blocks:
            continue
        bname, block = blocks[-1]
        conv = last_main_conv(block, '%s.%s.' % (spath, bname))
        if conv is not None:
            taps.append(conv)
    if not taps:
        raise ConfigError('%s has no residual stages (layer1..layerN, or stage<K> blocks inside features): default '
                          'feature taps are defined for GluonCV ResNets; name convolutions with --taps'
                          % type(net).__name__)
    return taps


# Strides of the stage-end taps (input size / map size): ImageNet ResNets (4 stages, stem
# stride 4) and CIFAR ResNets (3 stages, no stem downsampling).
STAGE_END_STRIDES = {4: (4, 8, 16, 32), 3: (1, 2, 4)}


def _tap_symbols(net, names, dtype='float32'):
    """Trace ``net`` on a ``dtype`` input symbol: ``(data, logits, [conv output symbols])``
    for the structural conv ``names`` (checked, one-line errors)."""
    names = list(names)
    if not names:
        raise ConfigError('no feature taps given')
    convs = conv_paths(net)
    for n in names:
        if n not in convs:
            raise ConfigError(unknown_name_message('feature tap', n, convs,
                                                   ' (taps are Conv2D paths of %s)' % type(net).__name__))
    data = mx.sym.var('data', dtype=dtype)
    out = net(data)
    if isinstance(out, (list, tuple)):
        out = out[0]
    internals = out.get_internals()
    available = set(internals.list_outputs())
    taps = []
    for n in names:
        sym_name = convs[n].prefix + 'fwd_output'
        if sym_name not in available:
            raise ConfigError('feature tap %r: output %s not found in the graph of %s (is the conv used '
                              'in forward?)' % (n, sym_name, type(net).__name__))
        taps.append(internals[sym_name])
    return data, out, taps


def conv_output_shapes(net, paths, input_shape):
    """``[(C, H, W)]`` of the outputs of the convolutions at structural ``paths``
    (``layer1.2.conv3``) for a network input of ``input_shape`` (``(N, 3, H, W)``), by
    symbolic shape inference (no forward pass)."""
    _, _, syms = _tap_symbols(net, paths)
    _, shapes, _ = mx.sym.Group(syms).infer_shape(data=tuple(int(v) for v in input_shape))
    return [tuple(int(v) for v in s[1:]) for s in shapes]


def check_tap_shapes(net, paths, input_size, channels=None, strides=None):
    """:func:`conv_output_shapes` at a ``(1, 3, S, S)`` input, checked against the expected
    ``channels`` and ``strides`` (each a sequence, or None to skip); a mismatch raises one
    ConfigError naming the tap."""
    shapes = conv_output_shapes(net, paths, (1, 3, int(input_size), int(input_size)))
    if channels is not None and len(channels) != len(paths):
        raise ConfigError('%d taps but %d expected channel counts' % (len(paths), len(channels)))
    for i, (p, (c, h, w)) in enumerate(zip(paths, shapes)):
        if channels is not None and c != channels[i]:
            raise ConfigError('feature tap %s has %d channels, expected %d (another width multiplier or '
                              'network?)' % (p, c, channels[i]))
        if strides is not None:
            want = -(-int(input_size) // strides[i])      # ceil: 'same'-padded strided convs
            if (h, w) != (want, want):
                raise ConfigError('feature tap %s is %dx%d at %d px input, expected %dx%d (stride %d)'
                                  % (p, h, w, input_size, want, want, strides[i]))
    return shapes


class TapNet(gluon.SymbolBlock):
    """``net`` seen through its symbol: returns ``[logits] + taps`` (or the taps only),
    sharing ``net``'s Parameters. ``tap_names`` and ``channels`` describe the taps."""

    def __init__(self, outputs, data, params, tap_names, channels, with_logits):
        super().__init__(outputs, data, params=params)
        self.tap_names = list(tap_names)
        self.channels = list(channels)
        self.with_logits = with_logits


def bottleneck_taps(net, names=None, with_logits=True):
    """A :class:`TapNet` exposing the outputs of the convolutions ``names`` (structural
    paths; default :func:`stage_end_taps`). Called on ``x`` it returns
    ``[logits, tap_1, ..., tap_L]`` (``with_logits``) or ``[tap_1, ..., tap_L]``; each tap
    is the raw ``(N, C, H, W)`` convolution output. Gradients flow into ``net``'s own
    Parameters (the SymbolBlock holds the very same objects)."""
    names = list(stage_end_taps(net) if names is None else names)
    half = any(np.dtype(p.dtype) == np.float16 for p in net.collect_params().values() if p.dtype is not None)
    # A typed input lets SymbolBlock infer every parameter's dtype (no "cannot decide type" warning).
    data, out, taps = _tap_symbols(net, names, 'float16' if half else 'float32')
    outputs = ([out] if with_logits else []) + taps
    convs = conv_paths(net)
    channels = [convs[n]._channels for n in names]
    return TapNet(mx.sym.Group(outputs), data, net.collect_params(), names, channels, with_logits)


# ------------------------------------------------------------------ MobileNetV2
# 1-based positions of the tapped inverted-residual blocks (torchvision features.{5,9,13,17}).
TORCHVISION_MOBILENETV2_BLOCKS = (5, 9, 13, 17)
MOBILENETV2_TAP_CHANNELS = (32, 64, 96, 320)       # width multiplier 1.0
MOBILENETV2_TAP_STRIDES = (8, 16, 16, 32)


def _is_linear_bottleneck(block):
    # GluonCV's LinearBottleneck: an `out` Sequential and a `use_shortcut` flag.
    out = block._children.get('out')
    return hasattr(block, 'use_shortcut') and isinstance(out, (gluon.nn.HybridSequential, gluon.nn.Sequential))


def linear_bottlenecks(net):
    """``[(path, block)]`` of the network's ``LinearBottleneck`` blocks, in forward order."""
    found = []

    def walk(block, path):
        for name, child in block._children.items():
            if _is_linear_bottleneck(child):
                found.append((path + name, child))
            else:
                walk(child, path + name + '.')
    walk(net, '')
    return found


def is_mobilenetv2(net):
    return len(linear_bottlenecks(net)) > 0


def mobilenetv2_taps(net, blocks=TORCHVISION_MOBILENETV2_BLOCKS):
    """Structural paths of the projection convs of the 1-based ``blocks`` (default AFA's
    torchvision ``features.{5,9,13,17}``) of a GluonCV MobileNetV2. Raises ConfigError
    when the network does not have 17 LinearBottleneck blocks."""
    found = linear_bottlenecks(net)
    if len(found) != 17:
        raise ConfigError('%s: expected the 17 LinearBottleneck blocks of a MobileNetV2, found %d'
                          % (type(net).__name__, len(found)))
    taps = []
    for k in blocks:
        if not 1 <= k <= len(found):
            raise ConfigError('MobileNetV2 tap block %d out of range 1..%d' % (k, len(found)))
        path, block = found[k - 1]
        convs = [(n, c) for n, c in block.out._children.items() if isinstance(c, gluon.nn.Conv2D)]
        if not convs or convs[-1][1]._kwargs['kernel'] != (1, 1):
            raise ConfigError('%s (block %d) does not end with a 1x1 projection conv' % (path, k))
        taps.append('%s.out.%s' % (path, convs[-1][0]))
    return taps
