"""What the transfer regularizers share: the classifier head of a network, the
:class:`Regularizer` interface, the parameter penalty at its core and the PyTorch-style
``Linear`` initialisation of their trainable modules. The feature taps (which convolutions
are compared, their shapes, a view returning their maps) are :mod:`gluon_transfer.losses.taps`;
their names are importable from here too.
"""
import math

import mxnet as mx

from ..errors import ConfigError
from .taps import TapNet, bottleneck_taps, conv_paths, stage_end_taps  # noqa: F401  (names kept importable here)

__all__ = ['HEAD_NAMES', 'head_name', 'head_keys', 'conv_paths', 'stage_end_taps',
           'bottleneck_taps', 'TapNet', 'Regularizer', 'param_penalty', 'torch_linear_init']

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


def torch_linear_init(fan_in):
    """PyTorch's default ``nn.Linear`` initialisation for weights and biases:
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the reference AFD/AFA modules rely on it)."""
    return mx.init.Uniform(1.0 / math.sqrt(fan_in))


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
