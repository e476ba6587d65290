"""Multiply-accumulate (MAC) counts of hybridizable networks, read off the symbol graph,
and the AFDS accounting of AFS networks (baseline / static pruning / dynamic WTA).

:func:`count_macs` calls ``net(mx.sym.var('data'))``, infers every internal shape for
``input_shape`` and walks the graph's nodes. Counts are **per image** (the batch
dimension ``N`` of ``input_shape`` is divided out) and follow the usual convention
(one MAC = one multiply + one add; biases, BN and activations are not MACs):

* ``Convolution``: ``H_out W_out C_out (C_in / groups) k_h k_w`` (grouped and depthwise
  convolutions included);
* ``Deconvolution``: ``H_in W_in C_in (C_out / groups) k_h k_w``;
* ``FullyConnected``: ``in_units * units``;
* separate columns, not in ``total``: ``bn`` = output elements of ``BatchNorm`` (one
  multiply-add each once folded), ``elementwise`` = output elements of element-wise
  arithmetic and activation ops (adds, multiplies, ReLU, ...).

GluonCV ``resnet50_v1b`` at 224 x 224 gives 4,089,184,256 MACs (conv 4,087,136,256 +
fc 2,048,000): the published "4.1 G" (tests/test_macs.py checks it).

AFS accounting (:func:`afs_macs`). For a gated convolution ``l`` with full cost
``F_l = H W k^2 C_in C_out / groups``, output masks ``m``, ``s`` and WTA density ``d``::

    alive_l   = sum_c m_c                      n_dyn_l = sum_c m_c s_c
    n_stat_l  = alive_l - n_dyn_l              eff_l   = n_stat_l + k(d, n_dyn_l)
    in_alive  = C_in  (a block's first conv)     or  alive of the producing gated conv
    in_eff    = C_in                              or  eff   of the producing gated conv

    baseline  = sum over all layers of the plain network (gates off, no gate FCs)
    static    = baseline - sum_l F_l + sum_l [ F_l (in_alive/C_in)(alive_l/C_out) + in_alive n_dyn_l ]
    expected  = baseline - sum_l F_l + sum_l [ F_l (in_eff/C_in)(eff_l/C_out)    + in_eff  n_dyn_l ]

``static``: m = 0 channels removed from the producing conv (its rows) and from the
consuming conv (its input columns); the gate FC is still needed for the dynamic channels
(``in * n_dyn`` MACs) -- static (s = 0) channels fold into the BN and need no gate.
(``k``: the gate's WTA count, ``ceil(d n - 1e-3)`` or ``round(d n)``,
:func:`gluon_transfer.nn.gates.wta_keep_count`).
``expected``: additionally, per sample only the ``k(d, n_dyn)`` channels WTA keeps are
computed (exact per sample, since WTA keeps exactly that many), so the expectation equals
the per-sample count. The pruned outputs of a block's last conv (conv3 of a bottleneck,
conv2 of a basic block) are counted as removed rows; the residual add keeps the full width,
which is why the dense pruned export (:mod:`gluon_transfer.prune`) keeps that conv's full
output width and measures more (for a basic block, whose conv2 is half of its MACs, up to
its pruned share of conv2)
(``exported`` in :func:`gluon_transfer.afds.afds_report`). Stem, downsample and classifier
are never gated.
"""
import json
import math

import numpy as np
import mxnet as mx

from .errors import ConfigError

__all__ = ['count_macs', 'format_macs_table', 'afs_macs', 'plain_macs', 'ELEMENTWISE_OPS']

ELEMENTWISE_OPS = frozenset([
    'elemwise_add', 'elemwise_sub', 'elemwise_mul', 'elemwise_div', '_plus', '_minus', '_mul', '_div',
    '_Plus', '_Minus', '_Mul', '_Div', '_grad_add', 'add_n', 'ElementWiseSum',
    'broadcast_add', 'broadcast_sub', 'broadcast_mul', 'broadcast_div', 'broadcast_plus', 'broadcast_minus',
    '_plus_scalar', '_minus_scalar', '_rminus_scalar', '_mul_scalar', '_div_scalar', '_rdiv_scalar',
    'Activation', 'LeakyReLU', 'relu', 'sigmoid', 'tanh', 'softrelu', 'clip', 'square', 'sqrt', 'exp',
    'log', 'abs', 'negative', 'hard_sigmoid',
])


def _tuple(text):
    text = str(text).strip('()[] ')
    return tuple(int(v) for v in text.split(',') if v.strip() not in ('', 'None'))


def _shapes(sym, input_shape):
    internals = sym.get_internals()
    arg_shapes, out_shapes, aux_shapes = internals.infer_shape(data=tuple(input_shape))
    if out_shapes is None:
        raise ConfigError('cannot infer the shapes of the graph for input %s' % (tuple(input_shape),))
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    shapes.update(zip(internals.list_arguments(), arg_shapes))
    shapes.update(zip(internals.list_auxiliary_states(), aux_shapes))
    return shapes


def _out_shape(shapes, name):
    for key in (name + '_output', name + '_output0', name):
        if key in shapes:
            return tuple(shapes[key])
    return None


def count_macs(net, input_shape=(1, 3, 224, 224), sym=None):
    """MACs of ``net`` (any HybridBlock with one input; or pass ``sym``) for ``input_shape``.

    Returns a dict: ``total`` (conv + dense), ``conv``, ``dense``, ``bn``, ``elementwise``
    (all per image) and ``rows``: one dict per counted node in graph order with ``name``
    (the symbol node name, e.g. ``resnetv1b_layers1_conv0_fwd``), ``op``, ``out_shape``,
    ``macs``, ``bn``, ``elementwise``, plus ``in_channels``/``out_channels``/``groups`` for
    convolutions and dense layers. See the module docstring for the formulas."""
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) < 2 or min(input_shape) < 1:
        raise ConfigError('input_shape must be positive (N, C, ...), got %r' % (input_shape,))
    if sym is None:
        sym = net(mx.sym.var('data'))
        if isinstance(sym, (list, tuple)):
            sym = sym[0]
    shapes = _shapes(sym, input_shape)
    nodes = json.loads(sym.tojson())['nodes']
    batch = input_shape[0]
    rows = []
    totals = dict(conv=0, dense=0, bn=0, elementwise=0)

    def in_shape(node, i):
        src = nodes[node['inputs'][i][0]]
        idx = node['inputs'][i][1]
        if src['op'] == 'null':
            return tuple(shapes[src['name']])
        for key in (src['name'] + '_output%d' % idx, src['name'] + '_output'):
            if key in shapes:
                return tuple(shapes[key])
        raise ConfigError('no shape for input %d of %s' % (i, node['name']))

    for node in nodes:
        op = node['op']
        if op == 'null':
            continue
        attrs = node.get('attrs', {})
        out = _out_shape(shapes, node['name'])
        row = dict(name=node['name'], op=op, out_shape=out, macs=0, bn=0, elementwise=0)
        if op == 'Convolution':
            w = in_shape(node, 1)                        # (C_out, C_in / g, kh, kw)
            g = int(attrs.get('num_group', 1))
            spatial = int(np.prod(out[2:]))
            row['macs'] = int(out[1]) * spatial * int(np.prod(w[1:]))
            row.update(in_channels=int(w[1]) * g, out_channels=int(out[1]), groups=g,
                       kernel=_tuple(attrs.get('kernel', '()')))
            totals['conv'] += row['macs']
        elif op == 'Deconvolution':
            x = in_shape(node, 0)
            w = in_shape(node, 1)                        # (C_in, C_out / g, kh, kw)
            g = int(attrs.get('num_group', 1))
            row['macs'] = int(np.prod(x[1:])) * int(np.prod(w[1:]))
            row.update(in_channels=int(x[1]), out_channels=int(out[1]), groups=g)
            totals['conv'] += row['macs']
        elif op == 'FullyConnected':
            w = in_shape(node, 1)                        # (units, in_units)
            row['macs'] = int(w[0]) * int(w[1])
            row.update(in_channels=int(w[1]), out_channels=int(w[0]), groups=1)
            totals['dense'] += row['macs']
        elif op == 'BatchNorm':
            row['bn'] = int(np.prod(out[1:]))
            totals['bn'] += row['bn']
        elif op in ELEMENTWISE_OPS:
            row['elementwise'] = int(np.prod(out)) // batch
            totals['elementwise'] += row['elementwise']
        else:
            continue
        rows.append(row)
    totals['total'] = totals['conv'] + totals['dense']
    totals['rows'] = rows
    totals['input_shape'] = input_shape
    return totals


def format_macs_table(report, ops=('Convolution', 'Deconvolution', 'FullyConnected'), limit=None):
    """A plain-text per-layer table of :func:`count_macs` rows (MAC-counting ops by default)."""
    rows = [r for r in report['rows'] if ops is None or r['op'] in ops]
    if limit:
        rows = rows[:limit]
    width = max([len(r['name']) for r in rows] + [4])
    lines = ['%-*s  %-14s  %-20s  %15s' % (width, 'node', 'op', 'output', 'MACs')]
    for r in rows:
        lines.append('%-*s  %-14s  %-20s  %15s' % (width, r['name'], r['op'], 'x'.join(map(str, r['out_shape'][1:])),
                                                  '{:,}'.format(r['macs'])))
    lines.append('%-*s  %-14s  %-20s  %15s' % (width, 'total (conv+dense)', '', '', '{:,}'.format(report['total'])))
    lines.append('bn elements %s, element-wise %s (per image, not in total)'
                 % ('{:,}'.format(report['bn']), '{:,}'.format(report['elementwise'])))
    return '\n'.join(lines)


def afs_macs(net, input_shape=(1, 3, 224, 224), density=None, masks=None, base=None):
    """Baseline / static / expected MACs of an AFS network (formulas in the module docstring).

    ``masks``: ``{gate name: (m, s)}`` 0/1 arrays to evaluate instead of the network's own
    (used by the budget search); ``density``: WTA ``d`` (default: each gate's own);
    ``base``: a precomputed :func:`count_macs` of the network with gates off. Returns a
    dict with ``baseline``, ``static``, ``expected`` (ints), their ratios to the baseline
    (``static_ratio``, ``expected_ratio``), ``layers`` (per gated conv: name, full, static,
    expected, alive, dynamic, static_channels, effective), and ``gate_fc_static`` /
    ``gate_fc_expected`` (the gate FC MACs included above)."""
    from .models.afs_resnet import afs_gates
    from .nn.gates import wta_keep_count
    layers = afs_gates(net)
    if base is None:
        base = plain_macs(net, input_shape)
    by_name = {r['name']: r for r in base['rows']}
    info = {}
    out = []
    removed = static_sum = expected_sum = fc_static = fc_expected = 0
    for name, block, k, gate, conv, producer in layers:
        row = by_name.get(conv.name + '_fwd')
        if row is None:
            raise ConfigError('convolution %s of %s not found in the graph' % (conv.name, name))
        full, cin, cout = row['macs'], row['in_channels'], row['out_channels']
        if masks is not None and name in masks:
            m, s = (np.asarray(a, np.float64).ravel() for a in masks[name])
        elif gate is not None:
            m, s = _mask_values(gate.mask_m, cout), _mask_values(gate.mask_s, cout)
        else:
            m, s = np.ones(cout), np.zeros(cout)          # ungated (pruned export): all static
        if m.size != cout or s.size != cout:
            raise ConfigError('masks of %s have %d/%d entries for %d channels' % (name, m.size, s.size, cout))
        d = float(density) if density is not None else (gate.current_density() if gate is not None else 1.0)
        alive = int(round(m.sum()))
        dyn = int(round((m * s).sum()))
        eff = (alive - dyn) + wta_keep_count(d, dyn, gate.wta_round if gate is not None else 'ceil')
        in_alive, in_eff = (cin, cin) if producer is None else (info[producer][0], info[producer][1])
        st = full * in_alive * alive / float(cin * cout)
        ex = full * in_eff * eff / float(cin * cout)
        fc_static += in_alive * dyn
        fc_expected += in_eff * dyn
        removed += full
        static_sum += st
        expected_sum += ex
        info[name] = (alive, eff)
        out.append(dict(name=name, full=full, static=int(round(st)), expected=int(round(ex)), alive=alive,
                        dynamic=dyn, static_channels=alive - dyn, effective=eff, channels=cout))
    baseline = base['total']
    static = int(round(baseline - removed + static_sum + fc_static))
    expected = int(round(baseline - removed + expected_sum + fc_expected))
    return dict(baseline=baseline, static=static, expected=expected, static_ratio=static / float(baseline),
                expected_ratio=expected / float(baseline), gate_fc_static=int(fc_static),
                gate_fc_expected=int(fc_expected), layers=out, input_shape=tuple(input_shape))


def plain_macs(net, input_shape=(1, 3, 224, 224)):
    """:func:`count_macs` of an AFS network with its gates switched off (the plain ResNet)."""
    from .models.afs_resnet import afs_gates, set_gates_enabled
    was_off = net._gates_off
    states = [(g, g.enabled) for _, _, _, g, _, _ in afs_gates(net) if g is not None]
    set_gates_enabled(net, False)
    try:
        return count_macs(net, input_shape)
    finally:
        for g, on in states:
            g.set_enabled(on)
        net._gates_off = was_off
        net.apply(lambda b: b._clear_cached_op() if isinstance(b, mx.gluon.HybridBlock) else None)


def _mask_values(param, channels):
    """A mask parameter's values (all ones while the network is not initialised yet)."""
    if param._data is None and param._deferred_init == ():
        return np.ones(channels)
    try:
        return param.data().asnumpy().astype(np.float64)
    except RuntimeError:
        return np.ones(channels)


def reduction(a, b):
    """``a / b`` as an "x-fold reduction" (inf when ``b`` is 0)."""
    return float(a) / b if b else math.inf
