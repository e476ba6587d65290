"""Feature taps of GluonCV networks for AFA (and the other feature regularizers):
structural paths of the tapped convolutions, their output shapes, and checks.

Structural paths are the ``_children`` names joined by dots (``layer3.22.conv3``,
``features.15.out.6``), the same keys ``save_parameters`` uses; they do not depend on
the auto-numbered symbol names (``mobilenetv20_features_linearbottleneck12_...``), which
change with how many networks a process has built. A path is turned into its symbol
output through the conv object's own prefix (``conv.prefix + 'fwd_output'``).

MobileNetV2 (transfer-methods.md §4.1)
--------------------------------------
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
"""

import mxnet as mx
from mxnet import gluon

from ..errors import ConfigError
from ..losses.transfer_common import conv_paths  # noqa: F401  (re-exported)
from ..registry import unknown_name_message

__all__ = ['conv_paths', 'linear_bottlenecks', 'mobilenetv2_taps', 'is_mobilenetv2',
           'TORCHVISION_MOBILENETV2_BLOCKS', 'MOBILENETV2_TAP_CHANNELS', 'MOBILENETV2_TAP_STRIDES',
           'tap_shapes', 'check_tap_shapes']

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


def tap_shapes(net, paths, input_size):
    """``[(C, H, W)]`` of the convolutions ``paths`` for a ``(1, 3, S, S)`` input, by
    symbolic shape inference (no forward pass). Unknown paths raise ConfigError listing
    close valid ones."""
    convs = conv_paths(net)
    for p in paths:
        if p not in convs:
            raise ConfigError(unknown_name_message('feature tap', p, convs,
                                                   ' (taps are Conv2D paths of %s)' % type(net).__name__))
    data = mx.sym.var('data')
    out = net(data)
    if isinstance(out, (list, tuple)):
        out = out[0]
    internals = out.get_internals()
    names = set(internals.list_outputs())
    syms = []
    for p in paths:
        key = convs[p].prefix + 'fwd_output'
        if key not in names:
            raise ConfigError('feature tap %r: %s is not in the graph of %s' % (p, key, type(net).__name__))
        syms.append(internals[key])
    _, shapes, _ = mx.sym.Group(syms).infer_shape(data=(1, 3, int(input_size), int(input_size)))
    return [tuple(int(v) for v in s[1:]) for s in shapes]


def check_tap_shapes(net, paths, input_size, channels=None, strides=None):
    """:func:`tap_shapes`, checked against the expected ``channels`` and ``strides`` (each
    a sequence, or None to skip); a mismatch raises one ConfigError naming the tap."""
    shapes = tap_shapes(net, paths, input_size)
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
