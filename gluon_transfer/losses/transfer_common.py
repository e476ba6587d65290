"""What the transfer regularizers share: the classifier head of a network, the feature
taps of GluonCV ResNets (symbol internals), and the :class:`Regularizer` interface.

Feature taps
------------
DELTA and the feature-map distance compare the *raw output of the last convolution of a
residual block, before its BatchNorm and before the residual add* (DELTA/AFA hook
``layer1.2.conv3``, ``layer2.3.conv3``, ``layer3.22.conv3``, ``layer4.2.conv3`` of
ResNet-101; transfer-methods.md §4.1, §5.1). :func:`stage_end_taps` derives these names
from the network's structure instead of a table per architecture: for every stage
``layerK`` (a Sequential child named ``layer<digits>``) it takes the stage's last block
and that block's last direct ``Conv2D`` child -- ``conv3`` of a ``BottleneckV1b``,
``conv2`` of a ``BasicBlockV1b`` (so ResNet-18/34-v1b get the analogous taps; the
downsample branch is a Sequential, never a direct child).

GluonCV blocks are hybrid, so forward hooks would not fire once hybridized; instead
:func:`bottleneck_taps` calls the network on a symbol once, picks the convolutions'
outputs (``<conv prefix>fwd_output``) from the graph's internals and wraps
``[logits] + taps`` in a :class:`mxnet.gluon.SymbolBlock` that *shares the network's
Parameter objects*: training through it updates the network itself, and it can run
hybridized (a cached op). Names are structural paths (``layer3.22.conv3``); an unknown
one raises :class:`ConfigError` listing close valid names.

(The attention-transfer branch has its own tap helper in ``gluon_transfer/nn/feature.py``;
this one is kept self-contained so the two can be unified when merged.)
"""
import collections
import re

import numpy as np
import mxnet as mx
from mxnet import gluon

from ..errors import ConfigError
from ..registry import unknown_name_message

__all__ = ['HEAD_NAMES', 'head_name', 'head_keys', 'conv_paths', 'stage_end_taps',
           'bottleneck_taps', 'TapNet', 'Regularizer', 'param_penalty']

# Top-level children that hold a classifier (GluonCV: ResNet-v1b `fc`, ResNet-v1/v2,
# MobileNet and CIFAR nets `output`; torchvision-style `classifier`).
HEAD_NAMES = ('fc', 'output', 'classifier')


def head_name(net):
    """Attribute name of ``net``'s classifier (the block replaced for a new task)."""
    for name in HEAD_NAMES:
        child = net._children.get(name)
        if child is not None and child.collect_params():
            return name
    raise ConfigError('%s has no classifier child named %s; cannot replace its head'
                      % (type(net).__name__, ' / '.join(HEAD_NAMES)))


def head_keys(net):
    """Structural parameter keys of the classifier (``fc.weight``, ``fc.bias``)."""
    prefix = head_name(net) + '.'
    return [k for k in net._collect_params_with_prefix() if k.startswith(prefix)]


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


def stage_end_taps(net):
    """Default DELTA taps: the last direct Conv2D child of the last block of each
    ``layer<K>`` stage, e.g. ``['layer1.2.conv3', 'layer2.3.conv3', 'layer3.5.conv3',
    'layer4.2.conv3']`` for resnet50_v1b."""
    stages = sorted(((int(m.group(1)), name) for name in net._children
                     for m in [_STAGE.match(name)] if m), key=lambda t: t[0])
    taps = []
    for _, sname in stages:
        stage = net._children[sname]
        blocks = list(stage._children.items())
        if not blocks:
            continue
        bname, block = blocks[-1]
        convs = [n for n, c in block._children.items() if isinstance(c, gluon.nn.Conv2D)]
        if convs:
            taps.append('%s.%s.%s' % (sname, bname, convs[-1]))
    if not taps:
        raise ConfigError('%s has no layer1..layerN residual stages: default feature taps are '
                          'defined for GluonCV ResNet-v1b networks; name convolutions with --taps'
                          % type(net).__name__)
    return taps


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
    if not names:
        raise ConfigError('no feature taps given')
    convs = conv_paths(net)
    for n in names:
        if n not in convs:
            raise ConfigError(unknown_name_message('feature tap', n, convs,
                                                   ' (taps are Conv2D paths of %s)' % type(net).__name__))
    half = any(np.dtype(p.dtype) == np.float16 for p in net.collect_params().values() if p.dtype is not None)
    # A typed input lets SymbolBlock infer every parameter's dtype (no "cannot decide type" warning).
    data = mx.sym.var('data', dtype='float16' if half else 'float32')
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
    outputs = ([out] if with_logits else []) + taps
    channels = [convs[n]._channels for n in names]
    return TapNet(mx.sym.Group(outputs), data, net.collect_params(), names, channels, with_logits)


def param_penalty(items):
    """``sum_p rate_p * 0.5 * ||w_p - a_p||^2`` over ``items`` = ``[(w, a or None, rate)]``
    (``a`` None: toward zero). The common core of L2-SP and the classifier term
    ``beta * 0.5 * ||fc||^2``; computed in float32. Returns a (1,) NDArray. (Not
    ``norm(d)**2``: its gradient is NaN at ``d = 0``, i.e. at the first step of L2-SP.)"""
    parts = []
    for w, a, rate in items:
        w = w.astype('float32', copy=False)
        d = w if a is None else w - a.astype('float32', copy=False)
        parts.append(mx.nd.sum(mx.nd.square(d)) * (0.5 * float(rate)))
    if not parts:
        raise ConfigError('parameter penalty over an empty set of parameters')
    return (mx.nd.add_n(*parts) if len(parts) > 1 else parts[0]).reshape((1,))


class Regularizer:
    """A transfer regularizer, registered in ``REGULARIZERS`` and built by name.

    Lifecycle: the :class:`~gluon_transfer.engine.tasks.Transfer` task calls
    ``setup(net, ctx)`` once (after the engine placed ``net`` on ``ctx``), then for every
    device slice ``terms(ctx, n, feats_t, feats_s)`` inside ``autograd.record()``.

    ``terms`` returns ``[(name, contribution)]``; ``contribution`` is a (1,) NDArray in the
    units of the task's ``total``, i.e. the SUM over the slice's ``n`` samples of the
    per-sample objective, because the engine divides gradients by the global batch
    ``B``. A batch-level term ``P`` (a parameter penalty) therefore contributes ``n * P``
    (the slices add up to ``B * P``, and the step sees ``grad P``). The task logs
    ``contribution / n``.

    ``needs_features``: True when the regularizer compares source and target feature
    maps (then ``feats_t``/``feats_s`` are the tapped maps, else None).
    ``param_rates(net, rows)``: ``{structural key: (rate, anchor)}`` with anchor 'w0'
    (the source weights) or '0', for the dry-run listing; empty for feature-only terms.
    """
    name = 'regularizer'
    needs_features = False
    needs_source_weights = False

    def setup(self, net, ctx, source_weights=None):
        pass

    def terms(self, ctx, n, feats_t, feats_s):
        return []
