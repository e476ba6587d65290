"""Layer groups for non-binary transfer (Plested et al.; docs/nonbinary.md): which
parameters form a "layer", which learning rate each layer gets, which layers are
re-initialised, and the per-parameter L2-SP rates; plus the ``--print-param-groups``
listing that shows all of it before anything trains.

Layer groups (derived from the network's structure)
---------------------------------------------------
The reference groups Inception-v4 by the top-level modules of ``features`` (3 stem
convs, Mixed/Inception/Reduction blocks; index 0-21) plus the classifier. The same rule
applied to any Gluon network: walk the children in registration order and make each
child that holds parameters one group, where

* a (Hybrid)Sequential *stage* -- one holding more than one conv/dense layer, like
  ``layer1`` of a ResNet or the ``features`` list itself -- is descended into;
* a (Hybrid)Sequential holding a single conv/dense layer (with its normalisation and
  activation: Inception's basic conv, GluonCV's ``_make_basic_conv``) is one group;
* a block of parallel branches (a (Hybrid)Concurrent, or any other composite block) is one
  group: the branches inside an Inception/Reduction block are never split;
* a normalisation layer joins the Conv2D/Dense group right before it (a stem ``conv1`` +
  ``bn1`` is one layer, like Inception's BasicConv2d).

The classifier (:func:`~gluon_transfer.losses.transfer_common.head_name`) is always the
last group. Group indices ``i = 0..L-1`` count from the input, as the reference's. Counts
(backbone groups + classifier):

* GluonCV ResNet-v1b: ``conv1`` (conv1 + bn1), one group per residual block
  ``layer1.0 ... layer4.2`` and ``fc``: 17 + 1 for ResNet-50, 34 + 1 for ResNet-101;
* ``inception_v4``: ``features.0`` ... ``features.21`` + ``output``: 22 + 1 (the reference's);
* GluonCV ``inceptionv3``: the five stem basic convs ``features.0, 1, 2, 4, 5`` (3 and 6
  are parameter-free max-pools), ``features.7`` ... ``features.17`` (3 A, 1 B, 4 C, 1 D, 2 E
  blocks) + ``output``: 16 + 1;
* GluonCV ``mobilenetv2_1.0``: the stem ``features.0`` (+ BN ``features.1``), the 17
  inverted-residual blocks ``features.3`` ... ``features.19``, the last 1x1 conv
  ``features.20`` (+ BN ``features.21``) + ``output``: 19 + 1.

Learning rates (``--lrs head,upper,lower`` with ``--num-low-lr-layers k``)
-----------------------------------------------------------------------
As the reference *code* does (its help text says the opposite): the ``k`` groups
nearest the input (``i < k``) are "lower" and get ``lower``; groups ``i >= k`` are
"upper" and get ``upper``; the classifier gets ``head``. ``--lrs`` replaces ``--lr``:
the engine's base rate becomes ``head`` and each parameter's ``lr_mult`` is its group
rate divided by ``head``, so the schedule (warm-up, step decay) scales all three alike.

Re-initialisation (``--new-layers n``)
--------------------------------------
Reference semantics: ``n`` counts the classifier, which is always new; ``n = 1`` (the
default) re-initialises nothing else, ``n = 2`` also the top backbone group (``layer4.2``
for ResNet-50), and so on: groups ``i >= L - (n - 1)`` are drawn afresh from the
initializer after the source weights were loaded. Their learning rate still follows
``i >= k`` (as in the reference), and L2-SP treats them as new (toward 0).

Weight decay multipliers: 1, or 0 for normalisation parameters and biases with
``--no-wd`` (the engine's rule). Running statistics are not trained (``-``).
"""
import collections

from mxnet import gluon

from .errors import ConfigError
from .losses.transfer_common import head_name

__all__ = ['Row', 'layer_groups', 'plan', 'apply_multipliers', 'format_rows', 'reinit_new_groups',
           'param_kind']

Row = collections.namedtuple('Row', 'key group index section new kind lr_mult wd_mult rate anchor shape')
Row.__doc__ = """One parameter: structural ``key``; ``group`` name and ``index`` (0 = nearest
the input, the head is ``L``); ``section`` 'lower' | 'upper' | 'head'; ``new`` (re-initialised
or classifier); ``kind`` 'weight' (conv/dense kernel), 'bias', 'norm' (BN gamma/beta) or
'stat' (running statistics); ``lr_mult``/``wd_mult`` (None for 'stat'); ``rate``/``anchor``
of its parameter penalty ('w0' = the source weights, '0' = zero; rate 0 = none); ``shape``."""

_SEQUENTIAL = (gluon.nn.HybridSequential, gluon.nn.Sequential)
_CONCURRENT = (gluon.contrib.nn.HybridConcurrent, gluon.contrib.nn.Concurrent)
_MERGE_INTO = (gluon.nn.Conv2D, gluon.nn.Dense)


def _is_norm(block):
    return 'norm' in type(block).__name__.lower()


def _weight_layers(block):
    """Number of Conv2D/Dense layers in ``block`` and below."""
    own = 1 if isinstance(block, _MERGE_INTO) else 0
    return own + sum(_weight_layers(c) for c in block._children.values())


def _is_stage(block):
    """A sequential container to descend into: not parallel branches, not one conv unit."""
    return isinstance(block, _SEQUENTIAL) and not isinstance(block, _CONCURRENT) and _weight_layers(block) > 1


def _own_params(block, path):
    return [(path + '.' + attr, p) for attr, p in block._reg_params.items()]


def param_kind(block, attr, param):
    if param.grad_req == 'null':
        return 'stat'
    if _is_norm(block):
        return 'norm'
    return 'weight' if attr == 'weight' else 'bias'


def _kinds(net):
    """``{structural key: kind}`` for every parameter of ``net``."""
    out = {}

    def walk(block, path):
        for attr, p in block._reg_params.items():
            out[path + attr] = param_kind(block, attr, p)
        for name, child in block._children.items():
            walk(child, path + name + '.')
    walk(net, '')
    return out


def layer_groups(net):
    """``[(group name, [structural keys])]`` in forward order, the classifier last."""
    head = head_name(net)
    groups = []          # [name, keys, mergeable]

    def walk(block, path):
        for name, child in block._children.items():
            p = path + name
            if block is net and name == head:
                continue
            keys = [k for k in child._collect_params_with_prefix(p)]
            if not keys:
                continue
            if _is_stage(child):
                own = [k for k, _ in _own_params(child, p)]
                if own:
                    groups.append([p, own, False])
                walk(child, p + '.')
            elif _is_norm(child) and groups and groups[-1][2]:
                groups[-1][1].extend(keys)
                groups[-1][2] = False
            else:
                groups.append([p, keys, isinstance(child, _MERGE_INTO)])
    walk(net, '')
    all_keys = list(net._collect_params_with_prefix())
    head_list = [k for k in all_keys if k.startswith(head + '.')]
    covered = {k for _, ks, _ in groups for k in ks} | set(head_list)
    left = [k for k in all_keys if k not in covered]
    if left:   # parameters registered directly on the network: one group at the bottom
        groups.insert(0, ['(own)', left, False])
    return [(g[0], list(g[1])) for g in groups] + [(head, head_list)]


def plan(net, lrs=None, num_low=None, new_layers=1, no_wd=False, rates=None):
    """The :class:`Row` of every parameter.

    ``lrs``: None (every group at the base rate) or ``(head, upper, lower)``;
    ``num_low``: ``k``, the number of bottom groups in "lower" (needed with ``lrs``);
    ``new_layers``: ``n`` (classifier included); ``no_wd``: the engine's ``--no-wd``;
    ``rates``: a callable ``rows -> {key: (rate, anchor)}`` (a regularizer's
    ``param_rates``) filling the penalty columns."""
    groups = layer_groups(net)
    L = len(groups) - 1
    if new_layers < 1:
        raise ConfigError('--new-layers counts the classifier and must be >= 1, got %d' % new_layers)
    if new_layers - 1 > L:
        raise ConfigError('--new-layers %d exceeds the %d layer groups of the backbone (+ classifier)'
                          % (new_layers, L))
    if num_low is not None and not 0 <= num_low <= L:
        raise ConfigError('--num-low-lr-layers must lie in [0, %d] (the backbone groups), got %d' % (L, num_low))
    if lrs is not None:
        if len(lrs) != 3:
            raise ConfigError('--lrs takes three rates head,upper,lower; got %r' % (lrs,))
        if num_low is None:
            raise ConfigError('--lrs needs --num-low-lr-layers k (the k groups nearest the input get the '
                              'third rate)')
        if lrs[0] <= 0 or min(lrs) < 0:
            raise ConfigError('--lrs: the head rate must be > 0 and none negative, got %r' % (lrs,))
    kinds = _kinds(net)
    params = net._collect_params_with_prefix()
    k = 0 if num_low is None else num_low
    rows = []
    for i, (gname, keys) in enumerate(groups):
        head = i == L
        section = 'head' if head else ('lower' if i < k else 'upper')
        new = head or i >= L - (new_layers - 1)
        lr_mult = 1.0 if lrs is None else {'head': 1.0, 'upper': lrs[1] / lrs[0], 'lower': lrs[2] / lrs[0]}[section]
        for key in keys:
            kind = kinds[key]
            if kind == 'stat':
                lm = wm = None
            else:
                lm = lr_mult
                wm = 0.0 if (no_wd and kind in ('norm', 'bias')) else 1.0
            rows.append(Row(key, gname, i, section, new, kind, lm, wm, 0.0, None, params[key].shape))
    if rates is not None:
        table = rates(rows)
        rows = [r._replace(rate=table[r.key][0], anchor=table[r.key][1]) if r.key in table else r for r in rows]
    return rows


def apply_multipliers(net, rows):
    """Set ``lr_mult``/``wd_mult`` on ``net``'s Parameters from ``rows``."""
    params = net._collect_params_with_prefix()
    for r in rows:
        if r.lr_mult is not None:
            params[r.key].lr_mult = r.lr_mult
            params[r.key].wd_mult = r.wd_mult


def reinit_new_groups(net, rows, init, ctx):
    """Re-draw every parameter of the re-initialised backbone groups (``new`` rows other
    than the classifier) from ``init`` (normalisation layers use their own initializers:
    gamma 1, beta 0, mean 0, var 1). Returns the names of the groups re-initialised."""
    params = net._collect_params_with_prefix()
    done = []
    for r in rows:
        if r.new and r.section != 'head':
            params[r.key].initialize(None, ctx=ctx, default_init=init, force_reinit=True)
            if r.group not in done:
                done.append(r.group)
    return done


def _fmt(v):
    return '-' if v is None else ('%g' % v)


def format_rows(rows, base_lr=None):
    """The ``--print-param-groups`` table: one line per parameter, then one per group."""
    lines = ['%-40s %-14s %5s %-6s %-4s %-6s %8s %8s %10s %-6s %s' % (
        'parameter', 'group', 'index', 'section', 'new', 'kind', 'lr_mult', 'wd_mult', 'l2sp_rate',
        'anchor', 'shape')]
    for r in rows:
        lines.append('%-40s %-14s %5d %-6s %-4s %-6s %8s %8s %10s %-6s %s' % (
            r.key, r.group, r.index, r.section, 'yes' if r.new else 'no', r.kind, _fmt(r.lr_mult),
            _fmt(r.wd_mult), _fmt(r.rate) if r.rate else '-', r.anchor or '-',
            'x'.join(str(s) for s in r.shape) if r.shape else '?'))
    seen = collections.OrderedDict()
    for r in rows:
        g = seen.setdefault(r.group, [r.index, r.section, r.new, None, 0])
        if r.lr_mult is not None:
            g[3] = r.lr_mult
        g[4] += 1
    lines.append('')
    lines.append('%d layer groups (classifier last):' % len(seen))
    for name, (i, section, new, lm, n) in seen.items():
        lr = '' if base_lr is None or lm is None else ' lr %g' % (base_lr * lm)
        lines.append('  [%2d] %-14s %-6s%s lr_mult %s%s, %d params' % (
            i, name, section, ' new' if new else '', _fmt(lm), lr, n))
    return '\n'.join(lines)
