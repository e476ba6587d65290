#!/usr/bin/env python
"""AFF/plain-add time ratio per network and mode, every configuration in its own process.

    python bench/bench_aff_ratio.py [--quick] [--models aff32,aff50] [--rounds N] [--json PATH]

The number the AFF speed goal is stated in: the time of an AFF network divided by the time of
the same network with plain residual additions (``fusion='add'``), for training (forward,
cross-entropy, backward, SGD momentum 0.9 update) and inference, each variant in its faster
mode (imperative or ``hybridize(static_alloc=True, static_shape=True)``). Goal: <= 1.15.

Networks: ``aff32`` = AFF-ResNet-32, the CIFAR-100 configuration of ``bench_aff.py``'s
``cifar`` section (``cifar_aff_resnet``, blocks 5, channel-times 4, 100 classes, 32 px),
batch 32 (``--quick``: 16); ``aff50`` = AFF-ResNet-50 (``aff_resnet``, 50 layers, 224 px,
1000 classes), batch 16 (``--quick``: 2).

Unlike ``bench_aff.py`` (all variants in one process, round-robin), each configuration
(network, training/inference, fusion, mode) runs in a fresh process (this script's
``--worker`` mode), because several hybridized networks in one process were measured slowing
each other down; the configurations alternate within each round (``bench.common.alternating_rounds``,
shared with ``bench_torch.py``). Each process reports the median step rate of its timed steps;
a value is the median over the rounds, a ratio is of those medians, and the per-round ratios
give the spread (min-max). Thread settings (``OMP_NUM_THREADS``, ``MXNET_CPU_WORKER_NTHREADS``)
are inherited by the workers and named in every row. Every ratio is given twice: by wall-clock
time (what a user sees; the goal's number) and by process CPU time ("CPU time" rows), which
on a machine shared with other jobs varies much less when each worker computes on one thread
(``OMP_NUM_THREADS=1 MXNET_CPU_WORKER_NTHREADS=1``), because it leaves out the time spent
waiting for a core.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from bench.common import add_json_arg, alternating_rounds, markdown_rows, row, spread, thread_settings, write_rows  # noqa: E402

GOAL = 1.15
# name -> (label, model name, keyword arguments, image size, classes, batch, quick batch)
NETWORKS = {
    'aff32': ('AFF-ResNet-32', 'cifar_aff_resnet', {'blocks': 5, 'channel_times': 4, 'classes': 100}, 32, 100, 32, 16),
    'aff50': ('AFF-ResNet-50', 'aff_resnet', {'num_layers': 50}, 224, 1000, 16, 2),
}
FUSIONS = ('aff', 'add')
MODES = ('imperative', 'hybrid')


def worker(a):
    """One configuration in this process; prints one JSON object (images/s and the setup)."""
    import warnings
    warnings.simplefilter('ignore')
    import mxnet as mx
    import gluon_transfer as gt
    from gluon_transfer.nn import fused
    from bench.common import infer_fn, median_rates, train_step_fn
    _, model, kw, size, classes, _, _ = NETWORKS[a.net]
    mx.random.seed(0)
    net = gt.get_model(model, fusion=a.fusion, **kw)
    net.initialize(mx.init.Xavier())
    if a.mode == 'hybrid':
        net.hybridize(static_alloc=True, static_shape=True)
    fn = train_step_fn(net, a.batch, size, classes) if a.what == 'train' else infer_fn(net, a.batch, size)
    rate, cpu_rate, fastest = median_rates(fn, a.batch, a.iters, warmup=a.warmup)
    print(json.dumps({'images_per_sec': rate, 'cpu_images_per_sec': cpu_rate, 'fastest_images_per_sec': fastest,
                      'kernel': bool(fused.load_kernel()) if a.fusion == 'aff' else None,
                      'threads': thread_settings()}))
    return 0


def configurations(nets, whats):
    """(net, what, fusion, mode) in the order they run within a round: AFF and add alternate."""
    return [(n, w, f, m) for n in nets for w in whats for m in MODES for f in FUSIONS]


def summarise(samples, batches, threads, clock='wall'):
    """``{(net, what, fusion, mode): [img/s per round]}`` -> suite rows: img/s of every
    configuration, the AFF/add time ratio in each mode and between the best modes (the goal's
    number), with the spread of the per-round ratios. ``clock='cpu'``: the rates are by
    process CPU time (``bench.common.median_rates``); only the ratio rows are written, named
    "CPU time"."""
    rows = []
    time_name = 'time' if clock == 'wall' else 'CPU time'
    med = {k: spread(v)[0] for k, v in samples.items()}
    for net, what in sorted({k[:2] for k in samples}, key=lambda k: (list(NETWORKS).index(k[0]), k[1] != 'train')):
        label = NETWORKS[net][0]
        setup = 'batch %d, %s' % (batches[net], threads)
        for fusion in FUSIONS:
            for mode in MODES:
                k = (net, what, fusion, mode)
                if k in samples and clock == 'wall':
                    m, lo, hi = spread(samples[k])
                    rows.append(row('aff-ratio', '%s %s, %s, %s' % (label, what, fusion, mode), m, 'img/s',
                                    'median of %d rounds (%.3g-%.3g), own process; %s' % (len(samples[k]), lo, hi,
                                                                                          setup)))
        for mode in MODES:
            a, d = samples.get((net, what, 'aff', mode)), samples.get((net, what, 'add', mode))
            if a and d:
                per = [di / ai for ai, di in zip(a, d)]
                rows.append(row('aff-ratio', 'AFF/add %s, %s %s, %s' % (time_name, label, what, mode),
                                med[(net, what, 'add', mode)] / med[(net, what, 'aff', mode)], 'x',
                                'rounds %.3g-%.3g; %s' % (min(per), max(per), setup)))
        best = {}
        for fusion in FUSIONS:
            cands = [(med[(net, what, fusion, m)], m) for m in MODES if (net, what, fusion, m) in med]
            if cands:
                best[fusion] = max(cands)[1]
        if len(best) == 2:
            a, d = samples[(net, what, 'aff', best['aff'])], samples[(net, what, 'add', best['add'])]
            ratio = med[(net, what, 'add', best['add'])] / med[(net, what, 'aff', best['aff'])]
            per = [di / ai for ai, di in zip(a, d)]
            rows.append(row('aff-ratio', 'AFF/add %s, %s %s, best modes' % (time_name, label, what), ratio, 'x',
                            'goal <= %.2f: %s (%.3f); AFF %s, add %s; rounds %.3g-%.3g; %s'
                            % (GOAL, 'met' if ratio <= GOAL else 'missed', ratio, best['aff'], best['add'], min(per),
                               max(per), setup)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='aff32,aff50', help='comma-separated subset of %s' % ','.join(NETWORKS))
    p.add_argument('--what', default='train,infer')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--iters', type=int, default=5, help='timed steps per process')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per process')
    p.add_argument('--batch', type=int, default=None, help="override every network's batch size")
    p.add_argument('--quick', action='store_true', help='smaller batches, 2 rounds of 3 steps')
    p.add_argument('--timeout', type=int, default=600, help='seconds per configuration process')
    # worker mode (one configuration; used by this script itself)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--net', default='aff32', help=argparse.SUPPRESS)
    p.add_argument('--fusion', default='aff', help=argparse.SUPPRESS)
    p.add_argument('--mode', default='imperative', help=argparse.SUPPRESS)
    add_json_arg(p)
    a = p.parse_args(argv)
    if a.worker:
        a.batch = a.batch or NETWORKS[a.net][5]
        return worker(a)
    if a.quick:
        a.rounds, a.iters, a.warmup = 2, 3, 1
    nets = [m for m in a.models.split(',') if m]
    whats = [w for w in a.what.split(',') if w]
    bad = [m for m in nets if m not in NETWORKS] + [w for w in whats if w not in ('train', 'infer')]
    if bad or not nets or not whats:
        raise SystemExit('error: unknown --models/--what %s; valid: %s and train,infer'
                         % (', '.join(bad) or '(none given)', ','.join(NETWORKS)))
    if a.rounds < 1 or a.iters < 1 or a.warmup < 0:
        raise SystemExit('error: --rounds and --iters must be >= 1, --warmup >= 0')
    batches = {n: a.batch or NETWORKS[n][6 if a.quick else 5] for n in nets}
    threads = thread_settings()
    print('AFF/add, each configuration its own process; %s' % threads, flush=True)

    def command_of(cfg):
        net, what, fusion, mode = cfg
        return [sys.executable, os.path.abspath(__file__), '--worker', '--net', net, '--what', what, '--fusion', fusion,
                '--mode', mode, '--batch', str(batches[net]), '--iters', str(a.iters), '--warmup', str(a.warmup)]
    got = alternating_rounds(configurations(nets, whats), a.rounds, command_of, a.timeout, cwd=ROOT,
                             key=('images_per_sec', 'cpu_images_per_sec'),
                             echo=lambda s: print(s + ' img/s (wall, CPU time)', flush=True))
    rows = summarise({k: v['images_per_sec'] for k, v in got.items()}, batches, threads)
    rows += summarise({k: v['cpu_images_per_sec'] for k, v in got.items()}, batches, threads, clock='cpu')
    print()
    print(markdown_rows(rows))
    write_rows(a.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
