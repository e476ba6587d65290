#!/usr/bin/env python
"""AFDS: CPU inference images/s of pruned AFS ResNet-50 networks against their MACs.

    python bench/bench_afds.py [--quick] [--out bench/out/afds.json]

Measures (CPU, float32, hybridize(static_alloc=True, static_shape=True) -- or with ``--fused``
the oneDNN-fused graph ``tools/export.py`` writes --, inference mode, best of several timed
iterations after warm-up):

- GluonCV ``resnet50_v1b`` (the baseline);
- the AFS ResNet-50 with every gate on (masks 1, d = 0.9): the cost of running the gates
  (GAP + FC + two argsorts per ConvBN) without any pruning;
- pruned networks (``gluon_transfer.prune.prune_afs``) keeping a fraction ``f`` of the
  conv1/conv2 channels of every bottleneck, every kept channel static (s = 0): plain
  GluonCV-shaped ResNets with reduced widths (the ``tools/export.py --prune`` output);
- the same pruning with half of the kept channels dynamic and WTA d = 0.5 (runtime gates
  kept; the skipped channels are still computed densely and multiplied by 0 -- MXNet has no
  sparse-channel convolution -- so only the static part of the saving shows up as speed).

For each: MACs per image (``gluon_transfer.macs.count_macs``; for the AFS nets also the
``afs_macs`` expected count), images/s, and speed-up vs the baseline next to the MACs
reduction.

``--exported RUN_DIR [RUN_DIR ...]`` measures trained ``train_transfer.py --afs`` runs
instead: for each run's final checkpoint, the plain GluonCV network of the same shape
(baseline), the pruned export as ``tools/export.py --prune`` writes it (static channels
folded, pruned ones removed, runtime gates kept for the dynamic channels), and a
**static-only** variant (the same ``m``, every kept channel made static, ``s = 0``: no
gates at run time; a timing twin only -- its function differs, the dynamic channels get
their constant ``gamma``).
"""
import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import numpy as np
    import mxnet as mx
    from gluoncv.model_zoo import resnet50_v1b
    from gluon_transfer.macs import afs_macs, count_macs
    from gluon_transfer.models.afs_resnet import afs_from_gluoncv, afs_gates
    from gluon_transfer.prune import prune_afs, verify_pruned
    from bench.common import add_json_arg, row, write_rows


def images_per_second(net, shape, seconds, repeats=3, optimize=False):
    """Best images/s of ``net`` over ``repeats`` windows; ``optimize``: the oneDNN-fused graph
    (``optimize_for('MKLDNN')``, what ``tools/export.py`` writes) instead of the plain hybridized one."""
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, shape))
    if optimize:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            net.optimize_for(x, backend='MKLDNN', static_alloc=True, static_shape=True)
    else:
        net.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):
        net(x).wait_to_read()
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.time()
        while time.time() - t0 < seconds / repeats:
            net(x).wait_to_read()
            n += shape[0]
        best = max(best, n / (time.time() - t0))
    return best


def masked(base, keep, dyn_frac, density, seed=0):
    """AFS copy of ``base`` keeping the ``keep`` fraction of conv1/conv2 channels (largest of
    a random score), a ``dyn_frac`` of the kept ones dynamic, conv3 all kept and static."""
    rng = np.random.RandomState(seed)
    net = afs_from_gluoncv(base, density=density, gate_init='random')
    for name, _, k, gate, _, _ in afs_gates(net):
        c = gate.channels
        m, s = np.ones(c), np.zeros(c)
        if k in (1, 2):
            order = np.argsort(-rng.rand(c))
            m[:] = 0
            m[order[:max(1, int(round(keep * c)))]] = 1
            kept = np.flatnonzero(m)
            s[rng.permutation(kept)[:int(round(dyn_frac * len(kept)))]] = 1
        gate.mask_m.set_data(mx.nd.array(m))
        gate.mask_s.set_data(mx.nd.array(s))
    return net


def load_run(run_dir):
    """The AFS network of a ``train_transfer.py --afs`` run's latest checkpoint, and its model name."""
    from gluon_transfer.afds import recorded_gate_options
    from gluon_transfer.weights import load_params, read_params
    from gluon_transfer.zoo import get_model
    with open(os.path.join(run_dir, 'checkpoint.json')) as f:
        meta_path = os.path.join(run_dir, json.load(f)['latest'])
    with open(meta_path) as f:
        meta = json.load(f)
    params = os.path.join(run_dir, meta['files']['params'])
    classes = int(read_params(params)['fc.weight'].shape[0])
    plain = get_model(meta['model'], classes=classes)
    plain.initialize(mx.init.Xavier())
    plain(mx.nd.zeros((1, 3, 32, 32)))
    recorded, _ = recorded_gate_options(params)
    net = afs_from_gluoncv(plain, **recorded)
    load_params(net, params, ctx=mx.cpu())
    return net, plain, meta['model'], params


def static_only(net):
    """Copy of ``net`` with the same ``m`` and ``s = 0`` everywhere (no runtime gate survives pruning)."""
    twin = afs_from_gluoncv(net, gate_input_norm=net._config['gate_input_norm'])
    src = net._collect_params_with_prefix()
    for key, p in twin._collect_params_with_prefix().items():
        p.set_data(src[key].data())
    for _, _, _, gate, _, _ in afs_gates(twin):
        if gate is not None:
            gate.mask_s.set_data(mx.nd.zeros(gate.channels))
    return twin


def exported_rows(run_dirs, shape, seconds, fused=False):
    one = (1,) + tuple(shape[1:])
    rows = []
    for run in run_dirs:
        net, plain, model, params = load_run(run)
        base_macs = count_macs(plain, one)['total']
        rows.append(dict(net='%s: plain %s' % (run, model), macs=base_macs, expected=base_macs,
                         ips=images_per_second(plain, shape, seconds, optimize=fused), base=True))
        pruned = prune_afs(net)
        verify_pruned(net, pruned, (2,) + tuple(shape[1:]))
        gated = sum(1 for b in pruned._config['block_config'] for g in b['gated'] if g)
        rows.append(dict(net='%s: pruned export (%d runtime gates)' % (run, gated),
                         macs=count_macs(pruned, one)['total'],
                         expected=afs_macs(net, one)['expected'],
                         ips=images_per_second(pruned, shape, seconds, optimize=fused)))
        twin = static_only(net)
        pruned_s = prune_afs(twin)
        rows.append(dict(net='%s: static-only twin (same m, s=0, no gates)' % run,
                         macs=count_macs(pruned_s, one)['total'], expected=afs_macs(twin, one)['expected'],
                         ips=images_per_second(pruned_s, shape, seconds, optimize=fused)))
    return rows


def report(rows, args, size, speed_label):
    """Print the Markdown table of ``rows`` (each relative to the latest row marked ``base``
    before it) and write them to ``args.out`` as JSON when given, and as suite rows
    (img/s, and speed-up next to the MACs reduction) to ``args.json``."""
    print('CPU inference, batch %d, %dx%d, float32, %s graph, MXNet %s' % (
        args.batch, size, size, 'oneDNN-fused' if args.fused else 'hybridized', mx.__version__))
    print('| network | MACs/img (counted) | expected MACs (AFS) | MACs reduction | img/s | %s |' % speed_label)
    print('|---|---|---|---|---|---|')
    base_macs = base_ips = None
    suite = []
    graph = 'fused' if args.fused else 'hybridized'
    for r in rows:
        if r.get('base'):
            base_macs, base_ips = r['macs'], r['ips']
        print('| %s | %.4f G | %.4f G | %.2fx | %.1f | %.2fx |' % (
            r['net'], r['macs'] / 1e9, r['expected'] / 1e9, base_macs / float(r['expected']), r['ips'],
            r['ips'] / base_ips))
        cfg = 'batch %d, %d px, %s graph' % (args.batch, size, graph)
        suite.append(row('afds', '%s: img/s' % r['net'], r['ips'], 'img/s', '%s; %.3f GMACs/img counted' % (
            cfg, r['macs'] / 1e9)))
        if not r.get('base'):
            suite.append(row('afds', '%s: speed-up' % r['net'], r['ips'] / base_ips, 'x',
                             'vs the unpruned network; MACs reduction %.2fx counted, %.2fx expected (%s)' % (
                                 base_macs / float(r['macs']), base_macs / float(r['expected']), cfg)))
    write_rows(args.json, suite)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(size=size, batch=args.batch, fused=args.fused, rows=rows), f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='112 px, 2 s per measurement')
    p.add_argument('--size', type=int, default=None)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--seconds', type=float, default=None)
    p.add_argument('--out', default=None)
    add_json_arg(p)
    p.add_argument('--fused', action='store_true',
                   help='time the oneDNN-fused graphs (optimize_for MKLDNN, what tools/export.py writes) of every '
                        'network, baseline included, instead of the plain hybridized graphs')
    p.add_argument('--exported', nargs='+', default=None, metavar='RUN_DIR',
                   help='measure trained train_transfer.py --afs runs (plain vs pruned export vs static-only)')
    args = p.parse_args()
    size = args.size or (112 if args.quick else 224)
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    shape = (args.batch, 3, size, size)
    fused = args.fused
    one = (1, 3, size, size)
    mx.random.seed(0)
    if args.exported:
        report(exported_rows(args.exported, shape, seconds, fused), args, size, 'speed-up vs its plain')
        return
    base = resnet50_v1b(classes=100)
    base.initialize(mx.init.Xavier())
    base(mx.nd.zeros(one))
    rows = []
    base_macs = count_macs(base, one)['total']
    base_ips = images_per_second(base, shape, seconds, optimize=fused)
    rows.append(dict(net='resnet50_v1b (GluonCV)', macs=base_macs, expected=base_macs, ips=base_ips, base=True))
    gated = afs_from_gluoncv(base, density=0.9, gate_init='random')
    rows.append(dict(net='AFS gates on, masks 1, d=0.9', macs=count_macs(gated, one)['total'],
                     expected=afs_macs(gated, one)['expected'],
                     ips=images_per_second(gated, shape, seconds, optimize=fused)))
    for keep, dyn, d in ((0.5, 0.0, 0.9), (0.25, 0.0, 0.9), (0.5, 0.5, 0.5)):
        net = masked(base, keep, dyn, d)
        pruned = prune_afs(net)
        verify_pruned(net, pruned, (2, 3, size, size))
        label = 'pruned keep %.2f, %s' % (keep, 'all static' if dyn == 0 else 'half dynamic, d=%g' % d)
        rows.append(dict(net=label, macs=count_macs(pruned, one)['total'], expected=afs_macs(net, one)['expected'],
                         ips=images_per_second(pruned, shape, seconds, optimize=fused)))
    report(rows, args, size, 'speed-up')


if __name__ == '__main__':
    main()
