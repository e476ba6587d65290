"""AFDS step 3 and 4: choosing the masks ``m`` (prune) and ``s`` (dynamic) from the gate
statistics -- absolute thresholds or a MACs budget, per layer or over all gated channels,
rounded to the widths the pruned export has -- and writing them into the network (the
procedure and formulas: :mod:`gluon_transfer.afds`)."""
import math

import numpy as np
import mxnet as mx

from ..engine.checkpoint import jsonable
from ..errors import ConfigError
from .statistics import gated

__all__ = ['MASK_STATS', 'THRES_SCALES', 'select_masks', 'random_masks', 'apply_masks', 'selection_summary', 'removable']


MASK_STATS = {'gate': 'mean', 'activation': 'act'}
THRES_SCALES = ('layer', 'absolute')


def _lowest(values, count):
    """0/1 vector: 0 at the ``count`` smallest ``values`` (ties toward the lower index)."""
    out = np.ones(len(values))
    if count > 0:
        out[np.argsort(values, kind='stable')[:count]] = 0
    return out


def _ensure_alive(m, mean, min_channels):
    need = min(int(min_channels), len(m)) - int(m.sum())
    if need > 0:
        for c in np.argsort(-mean, kind='stable'):
            if m[c] == 0:
                m[c] = 1
                need -= 1
                if need == 0:
                    break
    return m


def removable(name, inner=None):
    """True for the gates whose pruned channels :mod:`gluon_transfer.prune` physically removes:
    ``inner``, the set :func:`gluon_transfer.models.afs_resnet.removable_gates` gives for the
    network (every ConvBN of a block but the last, whose outputs feed the residual add and keep
    their full width). Without ``inner`` (statistics given without the network) the bottleneck
    rule: ``...gate1``, ``...gate2``."""
    if inner is not None:
        return name in inner
    return name.endswith(('gate1', 'gate2'))


def _aligned(m, mean, name, min_channels, channel_multiple, inner=None):
    """``m`` with at least ``min_channels`` kept and, for a :func:`removable` gate, the kept
    count rounded up to a multiple of ``channel_multiple`` (capped at the width): channels
    are added back in order of decreasing ``mean`` (the ranking statistic, see ``mask_stat``)."""
    keep = max(int(m.sum()), min(int(min_channels), len(m)))
    q = int(channel_multiple)
    if q > 1 and removable(name, inner):
        keep = min(len(m), -(-keep // q) * q)
    return _ensure_alive(m, mean, keep)


def _masks_for_quantile(stats, q, scope, min_channels, channel_multiple=1, m_key='mean', inner=None):
    names = list(stats)
    masks = {}
    if scope == 'layer':
        for name in names:
            mean, var = stats[name][m_key], stats[name]['var']
            c = len(mean)
            k = int(math.floor(q * c + 1e-9))
            m = _aligned(_lowest(mean, k), mean, name, min_channels, channel_multiple, inner)
            masks[name] = (m, m * _lowest(var, k))
    else:
        means = np.concatenate([stats[n][m_key] for n in names])
        vars_ = np.concatenate([stats[n]['var'] for n in names])
        k = int(math.floor(q * len(means) + 1e-9))
        m_all, s_all = _lowest(means, k), _lowest(vars_, k)
        start = 0
        for name in names:
            c = len(stats[name]['mean'])
            m = _aligned(m_all[start:start + c].copy(), stats[name][m_key], name, min_channels, channel_multiple,
                         inner)
            masks[name] = (m, m * s_all[start:start + c])
            start += c
    return masks


def select_masks(stats, thres_m=None, thres_s=None, macs_budget=None, net=None, input_shape=(1, 3, 224, 224),
                 scope='layer', budget_on='expected', min_channels=1, iterations=40, channel_multiple=1,
                 mask_stat='gate', static_only=False, thres_scale='layer'):
    """Choose ``{gate name: (m, s)}`` from :func:`collect_gate_statistics` output.

    Either thresholds (``thres_m``, ``thres_s``, default 0.5 / 0.5) or ``macs_budget`` (a
    fraction of the baseline MACs; needs ``net`` and ``input_shape``; ``budget_on``:
    'expected' or 'static' MACs).

    ``thres_scale``: what the thresholds are measured in. ``'layer'`` (default): relative to
    the layer, ``m_c = [stat_c > thres_m * mean_l(stat)]`` and ``s_c = m_c [var_c > thres_s *
    mean_l(var)]`` (``mean_l``: the average over the layer's channels), so 0.5 prunes the
    channels whose statistic is under half their layer's average and freezes those whose gate
    varies less than half as much as the layer's average -- the same rule for gate values of
    any scale (identity-initialised gates sit near 1, the reproduction's random ones near 0.2)
    and for the activation statistic (the scale of the BN outputs). ``'absolute'``: ``m_c =
    [stat_c > thres_m]``, ``s_c = m_c [var_c > thres_s]``, the reproduction's comparison (its
    0.5 / 0.5 were meant for the mean and variance of a layer's output, not of gate values in
    [0, 1], whose variance never reaches 0.5: every channel would be static).

    ``channel_multiple`` (``q``): the number of channels kept after the ConvBNs the pruned
    export narrows (conv1, conv2 of a bottleneck, conv1 of a basic block; see :func:`removable`) is
    rounded up to a multiple of ``q`` (or the full width) by keeping the pruned channels
    with the largest mean gate values; under a budget the rounding is part of the search,
    so the budget still holds. Why: oneDNN's CPU convolutions work on blocks of 16 (AVX-512)
    or 8 channels; the CIFAR AFDS run's uneven widths (39 of 64, 155 of 256) made its
    static-only pruned network 1.15x faster at 1.83x fewer MACs, multiples of 16 1.42x at
    1.71x (ResNet-50, 224 px, batch 8; docs/transfer_results.md). ``1`` turns it off.

    ``mask_stat``: what ranks the channels for ``m`` (and what ``thres_m`` compares with):
    ``'gate'`` the mean gate value ``pi`` (the paper's and reproduction's saliency),
    ``'activation'`` the mean gated activation ``act`` the next layer receives (after the
    ReLU inside a block, its magnitude for the last ConvBN, whose output goes to the residual
    add) -- a magnitude criterion that still ranks
    channels when the gates have hardly moved from their identity start (module docstring).
    ``s`` always follows the gate variance, unless ``static_only``: every kept channel static
    (``s = 0``, its multiplier the learned constant ``gamma``), so no runtime gate survives
    the pruned export -- a plain, narrower GluonCV ResNet, the form that runs faster on
    hardware that cannot skip channels per sample (CPUs: the WTA-skipped channels of a
    dynamic gate are still computed, and the gate itself costs time). ``thres_s`` is then
    meaningless and refused; expected MACs equal static MACs.

    Returns a dict with
    ``masks``, ``quantile`` (budget search), ``thres_m``/``thres_s`` (the thresholds used;
    for a budget the largest pruned mean / variance, reported, ``thres_scale`` 'absolute'),
    and ``macs`` (the
    :func:`~gluon_transfer.macs.afs_macs` result when ``net`` is given)."""
    from ..macs import afs_macs, plain_macs
    if scope not in ('layer', 'global'):
        raise ConfigError("mask scope must be 'layer' or 'global', got %r" % (scope,))
    if budget_on not in ('expected', 'static'):
        raise ConfigError("budget_on must be 'expected' or 'static', got %r" % (budget_on,))
    if not stats:
        raise ConfigError('no gate statistics')
    if mask_stat not in MASK_STATS:
        raise ConfigError('mask_stat must be one of %s, got %r' % (', '.join(MASK_STATS), mask_stat))
    m_key = MASK_STATS[mask_stat]
    if static_only and thres_s is not None:
        raise ConfigError('static_only makes every kept channel static; thres_s does not apply')

    def finish(masks):
        return {n: (m, np.zeros_like(m)) for n, (m, _) in masks.items()} if static_only else masks
    if any(m_key not in st for st in stats.values()):
        raise ConfigError("mask_stat %r needs statistics with %r (collect_gate_statistics)" % (mask_stat, m_key))
    if int(channel_multiple) != channel_multiple or channel_multiple < 1:
        raise ConfigError('channel_multiple must be an integer >= 1, got %r' % (channel_multiple,))
    result = dict(quantile=None, thres_m=thres_m, thres_s=thres_s, macs=None, macs_budget=macs_budget,
                  channel_multiple=int(channel_multiple), mask_stat=mask_stat, static_only=bool(static_only))
    base = plain_macs(net, input_shape) if net is not None else None
    inner = None
    if net is not None:
        from ..models.afs_resnet import removable_gates
        inner = removable_gates(net)
    if thres_scale not in THRES_SCALES:
        raise ConfigError('thres_scale must be one of %s, got %r' % (', '.join(THRES_SCALES), thres_scale))
    result['thres_scale'] = thres_scale
    if macs_budget is None:
        tm = 0.5 if thres_m is None else float(thres_m)
        ts = 0.5 if thres_s is None else float(thres_s)
        masks = {}
        for name, st in stats.items():
            unit_m = float(np.mean(st[m_key])) if thres_scale == 'layer' else 1.0
            unit_s = float(np.mean(st['var'])) if thres_scale == 'layer' else 1.0
            m = _aligned((st[m_key] > tm * unit_m).astype(np.float64), st[m_key], name, min_channels,
                         channel_multiple, inner)
            masks[name] = (m, m * (st['var'] > ts * unit_s).astype(np.float64))
        result.update(masks=finish(masks), thres_m=tm, thres_s=None if static_only else ts)
    else:
        budget = float(macs_budget)
        if not 0 < budget <= 1:
            raise ConfigError('macs_budget must be in (0, 1] (a fraction of the baseline MACs), got %r' % macs_budget)
        if net is None:
            raise ConfigError('a MACs budget needs the network (net=...) to count MACs')
        if thres_m is not None or thres_s is not None:
            raise ConfigError('pass either thresholds (thres_m/thres_s) or macs_budget, not both')

        def cost(q):
            masks = finish(_masks_for_quantile(stats, q, scope, min_channels, channel_multiple, m_key, inner))
            return afs_macs(net, input_shape, masks=masks, base=base)[budget_on], masks

        target = budget * base['total']
        c_hi, masks_hi = cost(1.0)
        if c_hi > target:
            raise ConfigError('MACs budget %g unreachable: pruning every gated channel but %d per layer still costs '
                              '%.4g of the baseline' % (budget, min_channels, c_hi / base['total']))
        c_lo, masks_lo = cost(0.0)
        lo, hi, best = 0.0, 1.0, masks_hi
        if c_lo <= target:
            hi, best = 0.0, masks_lo
        else:
            for _ in range(int(iterations)):
                mid = 0.5 * (lo + hi)
                c, masks = cost(mid)
                if c <= target:
                    hi, best = mid, masks
                else:
                    lo = mid
        pruned_means = [st[m_key][best[n][0] == 0] for n, st in stats.items()]
        static_vars = [st['var'][(best[n][0] == 1) & (best[n][1] == 0)] for n, st in stats.items()]
        pm = np.concatenate(pruned_means)
        sv = np.concatenate(static_vars)
        result.update(masks=best, quantile=hi, thres_m=float(pm.max()) if pm.size else None,
                      thres_s=float(sv.max()) if sv.size and not static_only else None, thres_scale='absolute')
    if net is not None:
        result['macs'] = afs_macs(net, input_shape, masks=result['masks'], base=base)
    return result


def random_masks(masks, seed=0):
    """The random-mask control: for every layer of ``masks`` (``{gate name: (m, s)}``, in
    network order) the same number of kept channels (``sum m``) and of dynamic channels
    (``sum m s``), at positions drawn uniformly at random (``RandomState(seed)``, one
    permutation per layer in order: the first ``sum m s`` positions dynamic, the next
    ``sum m - sum m s`` static, the rest pruned). Every layer keeps its counts, so its static
    and expected MACs (which depend only on the counts of the layer and of its producer,
    :func:`gluon_transfer.macs.afs_macs`) are those of ``masks`` exactly, and so are the
    pruned export's widths."""
    rng = np.random.RandomState(int(seed))
    out = {}
    for name, (m, s) in masks.items():
        m = np.asarray(m, np.float64)
        s = np.asarray(s, np.float64) * m
        alive, dyn = int(round(m.sum())), int(round(s.sum()))
        perm = rng.permutation(len(m))
        new_m, new_s = np.zeros(len(m)), np.zeros(len(m))
        new_m[perm[:alive]] = 1
        new_s[perm[:dyn]] = 1
        out[name] = (new_m, new_s)
    return out


def apply_masks(net, masks, stats=None, gamma_from_mean=True):
    """Write ``masks`` (``{gate name: (m, s)}``) into the network's gates. With
    ``gamma_from_mean`` and ``stats``, every channel that becomes static (``m = 1, s = 0``)
    gets ``gamma_c = mean_c`` (its average gate value)."""
    gates = dict(gated(net))
    unknown = [n for n in masks if n not in gates]
    if unknown:
        raise ConfigError('masks name unknown gates: %s' % ', '.join(unknown[:5]))
    for name, (m, s) in masks.items():
        g = gates[name]
        m = np.asarray(m, np.float32)
        s = np.asarray(s, np.float32) * m
        if m.shape != (g.channels,) or s.shape != (g.channels,):
            raise ConfigError('masks of %s must have %d entries' % (name, g.channels))
        g.mask_m.set_data(mx.nd.array(m))
        g.mask_s.set_data(mx.nd.array(s))
        if gamma_from_mean and stats is not None:
            gamma = g.gamma.data().asnumpy()
            newly = (m == 1) & (s == 0)
            gamma[newly] = stats[name]['mean'][newly]
            g.gamma.set_data(mx.nd.array(gamma))
    return net


def selection_summary(selection, holdout=None, mask_options=None):
    """A JSON-able summary of a :func:`select_masks` result (no masks, no per-layer rows)."""
    out = {k: selection.get(k) for k in ('thres_m', 'thres_s', 'thres_scale', 'quantile', 'macs_budget',
                                         'channel_multiple', 'mask_stat', 'static_only', 'random_masks')}
    for k, v in (mask_options or {}).items():
        if k not in out and isinstance(v, (str, int, float, type(None))):
            out[k] = v
    stats = selection.get('stats')
    if stats:
        # how far the gates moved from their identity start (value 1, variance 0)
        means = np.concatenate([st['mean'] for st in stats.values()])
        var = np.concatenate([st['var'] for st in stats.values()])
        out['gate_mean_quantiles'] = np.quantile(means, [0, 0.05, 0.5, 0.95, 1]).tolist()
        out['gate_var_quantiles'] = np.quantile(var, [0, 0.05, 0.5, 0.95, 1]).tolist()
    if selection.get('movement'):
        out['gate_movement'] = dict(selection['movement'])
    mc = selection.get('macs')
    if mc:
        out['macs'] = {k: float(mc[k]) for k in ('baseline', 'static', 'expected')}
    if holdout is not None:
        out['holdout'] = {'source': holdout.source, 'num_samples': holdout.num_samples,
                          'fraction': holdout.fraction, 'seed': holdout.seed}
    return jsonable(out)



