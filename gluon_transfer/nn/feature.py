"""Feature taps for networks that do not implement the feature API (GluonCV ResNets), via
symbol internals.

``FeatureTaps(net, ['stage1', 'layer3.1'])`` is a :class:`mxnet.gluon.SymbolBlock` that
returns ``(logits, [maps])`` like our own networks' ``features=`` API. It is built once:
the network is traced symbolically, the output symbols of the named child blocks are
captured during that trace, and a SymbolBlock over ``[logits] + taps`` is created that
**shares the network's Parameter objects** (training the view trains the network, and BN
statistics are the network's own). It works hybridized or not, on any context list the
parameters live on, and costs nothing per call beyond the forward itself.

Names are resolved when the view is built, never during training:

* a *structural path*, as in ``save_parameters`` keys: ``'layer1'``, ``'layer3.1'``,
  ``'features.5'`` -- the tap is that child block's output;
* a *stage alias* ``'stage1'..'stageK'``: the outputs of the residual stages (GluonCV
  ResNet-v1b: ``layerK``, post-ReLU; ResNet-v1/v2: the ``features`` children whose prefix
  is ``stageK_``; our networks: their child ``stageK``);
* an internal symbol output name (``net(mx.sym.var('data')).get_internals().list_outputs()``).

Anything else raises a one-line :class:`ConfigError` with close matches and the stage names.
"""
import difflib
import re
import warnings

import numpy as np
import mxnet as mx
from mxnet import gluon

from ..errors import ConfigError

__all__ = ['FeatureTaps', 'feature_symbols', 'tapped', 'stage_aliases', 'block_paths', 'data_var', 'net_input_dtype']


def net_input_dtype(net):
    """``'float16'`` when any parameter of ``net`` is float16 (a ``cast('float16')`` network:
    its input must be float16 too), else ``'float32'``."""
    half = any(np.dtype(p.dtype) == np.float16 for p in net.collect_params().values() if p.dtype is not None)
    return 'float16' if half else 'float32'


def data_var(net, name='data'):
    """``mx.sym.var(name)`` typed with :func:`net_input_dtype`. A SymbolBlock over a trace from
    an untyped input takes every parameter as float32, which the shared Parameters of a
    float16 network refuse; a typed input lets it infer each parameter's own dtype."""
    return mx.sym.var(name, dtype=net_input_dtype(net))


def block_paths(net):
    """``{structural path: block}`` of every descendant of ``net`` (``'layer1.0.conv1'``...)."""
    out = {}

    def walk(block, prefix):
        for name, child in block._children.items():
            path = prefix + name
            out[path] = child
            walk(child, path + '.')
    walk(net, '')
    return out


def stage_aliases(net):
    """``{'stage1': path, ...}`` for the residual stages of ``net`` (see the module doc)."""
    paths = block_paths(net)
    aliases = {}
    for k in range(1, 9):
        if 'stage%d' % k in paths:
            aliases['stage%d' % k] = 'stage%d' % k
        elif 'layer%d' % k in paths:
            aliases['stage%d' % k] = 'layer%d' % k
    if not aliases:
        pattern = re.compile(r'stage(\d+)_$')
        for path, block in paths.items():
            m = pattern.search(block.prefix)
            if m and '.' in path and path.count('.') == 1:
                aliases.setdefault('stage%s' % m.group(1), path)
    return aliases


def _resolve(net, names, paths, aliases):
    blocks, raw = [], []
    internals = None
    for name in names:
        path = aliases.get(name, name)
        if path in paths:
            blocks.append((name, paths[path]))
            continue
        if internals is None:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                internals = net(mx.sym.var('data')).get_internals()
            internal_names = set(internals.list_outputs())
        if name in internal_names:
            raw.append((name, internals[name]))
            continue
        choices = sorted(set(aliases) | set(paths))
        close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
        hint = ('did you mean: %s? ' % ', '.join(close)) if close else ''
        raise ConfigError('unknown feature tap %r for %s; %sstage names: %s; or a block path such as %s '
                          '(%d paths), or an internal symbol output name'
                          % (name, type(net).__name__, hint, ', '.join(sorted(aliases)) or 'none',
                             ', '.join(list(paths)[:6]), len(paths)))
    return blocks, raw


def feature_symbols(net, names):
    """Trace ``net`` once symbolically: ``(data, logits, [tap symbols for names])``.

    A network built with exactly ``features=names`` (our feature API) returns its own taps;
    otherwise the names are resolved as in :class:`FeatureTaps` (structural paths, stage
    aliases, internal output names) and captured by forward hooks during the trace (hooks
    fire here because the trace is not hybridized; they are detached right after)."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise ConfigError('FeatureTaps needs at least one tap name')
    data = data_var(net)
    if tuple(getattr(net, 'feature_names', ())) == names:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = net(data)
        return data, out[0], list(out[1])
    paths = block_paths(net)
    aliases = stage_aliases(net)
    blocks, raw = _resolve(net, names, paths, aliases)
    captured = {}
    handles = []
    for name, block in blocks:
        def hook(blk, inputs, output, _name=name):
            if _name not in captured:       # a block called twice: its first output
                captured[_name] = output
        handles.append(block.register_forward_hook(hook))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = net(data)
    finally:
        for h in handles:
            h.detach()
    captured.update(dict(raw))
    if isinstance(out, (list, tuple)):
        out = out[0]
    missing = [n for n in names if n not in captured]
    if missing:
        raise ConfigError('feature tap %r of %s is never called in its forward pass'
                          % (missing[0], type(net).__name__))
    for n in names:
        if isinstance(captured[n], (list, tuple)) or len(captured[n].list_outputs()) != 1:
            raise ConfigError('feature tap %r of %s has several outputs; tap one of its children'
                              % (n, type(net).__name__))
    return data, out, [captured[n] for n in names]


class FeatureTaps(gluon.SymbolBlock):
    """``view = FeatureTaps(net, names)``; ``view(x) -> (logits, [maps])`` sharing ``net``'s
    parameters. ``names``: structural paths, stage aliases or internal output names."""

    def __init__(self, net, names):
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        data, out, maps = feature_symbols(net, names)
        with warnings.catch_warnings():
            # the input's dtype is only known at the first call; mxnet warns about it
            warnings.filterwarnings('ignore', 'Cannot decide type')
            super().__init__([out] + maps, data, params=net.collect_params())
        self.feature_names = names
        self.tapped_net_type = type(net).__name__

    def forward(self, x, *args):
        out = super().forward(x, *args)
        return out[0], list(out[1:])


def tapped(net, names):
    """A callable returning ``(logits, [maps for names])``: ``net`` itself when it was built
    with exactly these ``features`` (our networks' feature API), else a :class:`FeatureTaps`
    view of it."""
    names = tuple([names] if isinstance(names, str) else names)
    if tuple(getattr(net, 'feature_names', ())) == names:
        return net
    return FeatureTaps(net, names)
