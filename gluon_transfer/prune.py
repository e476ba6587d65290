"""Physical pruning of AFS networks: statically pruned channels removed, static channels
folded into BatchNorm (``tools/export.py --prune``).

Every block of an AFS network (:mod:`gluon_transfer.models.afs_resnet`: bottlenecks, ImageNet
and CIFAR basic blocks) is a chain of ConvBNs ``1..K`` (``K = 3`` bottleneck, ``2`` basic
block); ConvBN ``k`` reads the output of ConvBN ``k - 1`` (ConvBN 1 the block input) and
ConvBN ``K`` feeds the residual add. With masks ``m``, ``s`` and gate constants ``gamma``
(see :mod:`gluon_transfer.nn.gates`):

* outputs of ConvBN ``k < K`` with ``m = 0`` are removed: their rows of ``conv_k``, their
  ``bn_k`` entries, and the matching input columns of ``conv_{k+1}`` and of gate ``k+1``'s
  FC. Exact, because a pruned channel's gated output is exactly 0 (``m`` multiplies after
  the BN), and so is its ReLU.
* ConvBN ``K`` keeps its full output width (the residual add needs every channel of the
  shortcut); a pruned channel there gets zero weights and BN scale and shift 0, so it
  outputs exactly 0. So a bottleneck shrinks conv1 and conv2, a basic block conv1 only
  (its conv2 loses the input columns).
* a static channel (``m = 1, s = 0``) has multiplier ``gamma_c``, folded into its BN:
  ``gamma_bn <- gamma_c * gamma_bn``, ``beta_bn <- gamma_c * beta_bn`` (inference BN
  ``gamma_bn (z - mu) / sqrt(var + eps) + beta_bn`` is linear in both).
* a gate with no dynamic channel left is dropped (a plain ConvBN). A gate with dynamic
  channels is kept as a **runtime gate** on the remaining channels (``m = 1``, ``s`` as
  before, ``gamma = 1`` for the folded static ones) with the same WTA density: the WTA
  ranks the same values among the same dynamic channels (relative order preserved), so
  the outputs equal the gated network's for any ``d``.

The result is the same class with ``block_config`` (per-block ``widths``/``gated``): when
no gate is left it is a plain GluonCV-shaped ResNet with reduced widths, exportable with
:func:`gluon_transfer.export.export_symbol`.
"""
import numpy as np
import mxnet as mx

from .errors import CheckpointError, ConfigError

__all__ = ['prune_plan', 'prune_afs', 'verify_pruned', 'export_pruned', 'require_masks']


def _gate_arrays(gate, channels):
    """``(m, s, gamma)`` numpy of a gate; an absent or disabled gate is the identity
    (every channel static with gamma 1)."""
    if gate is None or not gate.enabled:
        return np.ones(channels), np.zeros(channels), np.ones(channels)
    m = gate.mask_m.data().asnumpy().astype(np.float64)
    s = gate.mask_s.data().asnumpy().astype(np.float64) * m
    g = gate.gamma.data().asnumpy().astype(np.float64)
    return m, s, g


def _blocks(net):
    from .models.afs_resnet import AFS_NETWORKS, afs_blocks
    if not isinstance(net, AFS_NETWORKS):
        raise ConfigError('--prune needs an AFS network (afs_resnet*_v1b, afs_cifar_resnet*_v1); got %s'
                          % type(net).__name__)
    return afs_blocks(net)


def require_masks(net, source='the network'):
    """ConfigError unless the AFS network ``net`` carries selected masks. Refused: enabled
    gates that all have ``m = 1`` and ``s = 1`` on every channel -- the network before
    AFDS's mask update (a phase-1 checkpoint, a fresh network). Pruning it would remove
    nothing and keep every runtime gate, so the "pruned" export would cost more MACs than
    the plain network. (A network built without gates has nothing to select and passes.)
    ``source`` names the weights in the message."""
    gates = [block.gate(k) for _, block in _blocks(net) for k in range(1, block.num_convbn + 1)
             if block.gate(k) is not None and block.gate(k).enabled]
    if gates and all(g.mask_m.data().asnumpy().min() == 1 and g.mask_s.data().asnumpy().min() == 1 for g in gates):
        raise ConfigError('%s carries no AFS masks (every gate has m = 1 and s = 1, as before the mask update of an '
                          '--afs run): --prune needs a checkpoint from phase 2 (after the masks were chosen)' % source)


def prune_plan(net):
    """Per block: ``{'name', 'block', 'widths': (kept channels of ConvBN 1..K-1), 'gated': (one
    bool per ConvBN), 'keep': [kept channel indices of ConvBN 1..K-1], 'arrays': [(m, s, gamma)]
    per ConvBN}``."""
    plan = []
    for name, block in _blocks(net):
        K = block.num_convbn
        arrays = [_gate_arrays(block.gate(k), block.widths[k - 1]) for k in range(1, K + 1)]
        keep = [np.flatnonzero(arrays[k][0]) for k in range(K - 1)]
        for k, kept in enumerate(keep):
            if kept.size == 0:
                raise ConfigError('%s: every channel of ConvBN %d is pruned; keep at least one (min_channels)'
                                  % (name, k + 1))
        gated = tuple(bool(block.gate(k) is not None and block.gate(k).enabled and (a[0] * a[1]).sum() > 0)
                      for k, a in zip(range(1, K + 1), arrays))
        plan.append(dict(name=name, block=block, widths=tuple(int(kept.size) for kept in keep), gated=gated,
                         keep=keep, arrays=arrays))
    return plan


def _np(p):
    return p.data().asnumpy()


def prune_afs(net, ctx=None):
    """The pruned twin of an initialised AFS network (module docstring), on ``ctx``
    (default cpu). Parameters are copied; the source network is unchanged."""
    _blocks(net)
    if any(p._data is None for p in net.collect_params().values()):
        net(mx.nd.zeros((1, 3, 32, 32), ctx=next(iter(net.collect_params().values())).list_ctx()[0]))
    plan = prune_plan(net)
    ctx = ctx or mx.cpu()
    config = dict(net._config, features=(),
                  block_config=[dict(widths=p['widths'], gated=p['gated']) for p in plan])
    pruned = type(net)(**config)
    pruned.initialize(ctx=ctx)
    pruned(mx.nd.zeros((1, 3, 32, 32), ctx=ctx))        # resolve deferred input widths
    src = net._collect_params_with_prefix()
    dst = pruned._collect_params_with_prefix()
    done = set()

    def put(key, value):
        if dst[key].shape != tuple(value.shape):
            raise CheckpointError('prune: %s has shape %s, computed %s' % (key, dst[key].shape, value.shape))
        dst[key].set_data(mx.nd.array(value, ctx=ctx, dtype='float32'))
        done.add(key)

    def bn(prefix, rows, m, s, gamma, zero=None):
        scale = np.where((m == 1) & (s == 0), gamma, 1.0)
        g, b = _np(src[prefix + '.gamma']).astype(np.float64), _np(src[prefix + '.beta']).astype(np.float64)
        g, b = g * scale, b * scale
        if zero is not None:
            g[zero], b[zero] = 0.0, 0.0
        put(prefix + '.gamma', g[rows])
        put(prefix + '.beta', b[rows])
        put(prefix + '.running_mean', _np(src[prefix + '.running_mean'])[rows])
        put(prefix + '.running_var', _np(src[prefix + '.running_var'])[rows])

    def gate(prefix, rows, cols, m, s, density_key):
        w = _np(src[prefix + '.fc.weight'])
        put(prefix + '.fc.weight', w[rows][:, cols])
        put(prefix + '.fc.bias', _np(src[prefix + '.fc.bias'])[rows])
        put(prefix + '.mask_m', np.ones(len(rows)))
        put(prefix + '.mask_s', (m * s)[rows])
        put(prefix + '.gamma', np.ones(len(rows)))
        put(prefix + '.wta_density', _np(src[density_key]))

    for p in plan:
        b, block = p['name'], p['block']
        K = block.num_convbn
        cols = np.arange(_np(src['%s.%s.weight' % (b, block.CONVBN[0][0])]).shape[1])    # the block input
        for k in range(1, K + 1):
            conv, norm = ('%s.%s' % (b, path) for path in block.CONVBN[k - 1])
            m, s, g = p['arrays'][k - 1]
            if k < K:
                rows, dead = p['keep'][k - 1], None
            else:                                   # feeds the residual add: full width, dead rows zeroed
                rows, dead = np.arange(len(m)), m == 0
            w = _np(src[conv + '.weight'])[rows][:, cols].copy()
            if dead is not None:
                w[dead] = 0.0
            put(conv + '.weight', w)
            bn(norm, rows, m, s, g, zero=dead)
            if p['gated'][k - 1]:
                gp = '%s.gate%d' % (b, k)
                gate(gp, rows, cols, m, s, gp + '.wta_density')
            cols = rows
    for key, param in dst.items():
        if key not in done:
            if key not in src:
                raise CheckpointError('prune: no source for %s' % key)
            put(key, _np(src[key]))
    return pruned


def verify_pruned(net, pruned, input_shape, rtol=1e-4, atol=1e-5, seed=0, ctx=None):
    """Compare the gated and the pruned network on a fixed random input (inference mode);
    returns the max |difference|, raises CheckpointError when they differ."""
    ctx = ctx or mx.cpu()
    rng = np.random.RandomState(seed)
    x = mx.nd.array(rng.uniform(-1, 1, size=tuple(input_shape)), ctx=ctx)
    a = net(x)
    a = (a[0] if isinstance(a, (list, tuple)) else a).asnumpy().astype(np.float64)
    b = pruned(x).asnumpy().astype(np.float64)
    diff = float(np.abs(a - b).max())
    if not np.allclose(b, a, rtol=rtol, atol=atol):
        raise CheckpointError('pruned network differs from the gated one by up to %.3g (rtol=%g, atol=%g)'
                              % (diff, rtol, atol))
    return diff


def export_pruned(net, prefix, input_shape, check=True, log=None):
    """``tools/export.py --prune``: the pruned twin of ``net`` (checked equal to it on
    ``input_shape`` when ``check``), saved as ``<prefix>-pruned.params`` with its constructor
    arguments in ``<prefix>-pruned.json``; logs the MACs (baseline, static, expected, and
    counted on the pruned network). Returns the pruned network."""
    import json
    import os
    from .macs import afs_macs, count_macs
    say = log or (lambda msg: None)
    pruned = prune_afs(net, ctx=mx.cpu())
    if check:
        say('pruned network equals the gated one (max |diff| %.3g)' % verify_pruned(net, pruned, input_shape))
    one = (1,) + tuple(input_shape[1:])
    mc = afs_macs(net, one)
    got = count_macs(pruned, one)['total']
    say('MACs per image: baseline %.4g G, static (m) %.4g G, expected (d, s) %.4g G, pruned network %.4g G (%.2fx)'
        % (mc['baseline'] / 1e9, mc['static'] / 1e9, mc['expected'] / 1e9, got / 1e9, mc['baseline'] / float(got)))
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    pruned.save_parameters(prefix + '-pruned.params')
    with open(prefix + '-pruned.json', 'w') as f:
        json.dump({'class': '%s.%s' % (type(pruned).__module__, type(pruned).__name__), 'kwargs': pruned._config}, f,
                  indent=1)
    say('wrote %s-pruned.params and %s-pruned.json' % (prefix, prefix))
    return pruned
