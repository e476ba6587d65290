#!/usr/bin/env python
"""Achieved GFLOP/s per model against this CPU's measured float32 matmul peak.

    python bench/bench_gflops.py [--quick] [--models cifar_resnet20_v1:64:32,resnet50_v1b:16:224] [--json PATH]

For each ``model:batch:size`` (hybridized static, float32, CPU): training images/s (forward +
backward + SGD momentum, medians after warm-up) and inference images/s; the work per image
is ``gluon_transfer.macs.count_macs`` (convolutions + dense layers), at 2 FLOP per
multiply-add, training counted as 3x the forward pass (forward, input gradients, weight
gradients). The peak is a large FullyConnected (oneDNN sgemm) measured at the start and at
the end of the run (the higher is used, as load from other jobs only lowers it). Achieved /
peak says how far each model is from the physical limit of this CPU.
"""
import argparse
import os
import sys
import warnings

warnings.simplefilter('ignore', DeprecationWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import add_json_arg, infer_fn, matmul_peak_gflops, median_rate, row, train_step_fn, write_rows  # noqa: E402,E501

QUICK = 'cifar_resnet20_v1:64:32,resnet50_v1b:4:224'
FULL = 'cifar_resnet20_v1:64:32,cifar_resnet56_v1:64:32,resnet18_v1b:16:224,resnet50_v1b:16:224'


def parse_models(text):
    out = []
    for item in text.split(','):
        parts = item.split(':')
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise SystemExit('bench_gflops: --models items are MODEL:BATCH:SIZE, got %r' % item)
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--models', default=None, help='MODEL:BATCH:SIZE,... (default: %s; --quick: %s)' % (FULL, QUICK))
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--quick', action='store_true')
    add_json_arg(p)
    a = p.parse_args()
    models = parse_models(a.models or (QUICK if a.quick else FULL))
    iters = 3 if a.quick else a.iters
    import mxnet as mx
    from gluon_transfer import get_model
    from gluon_transfer.macs import count_macs

    peak0 = matmul_peak_gflops()
    results = []
    for name, batch, size in models:
        classes = 10 if name.startswith('cifar') else 1000
        mx.random.seed(0)
        net = get_model(name, classes=classes)
        net.initialize(mx.init.Xavier())
        macs = count_macs(net, (1, 3, size, size))['total']
        net.hybridize(static_alloc=True, static_shape=True)
        tr = median_rate(train_step_fn(net, batch, size, classes), batch, iters, warmup=2)
        inf = median_rate(infer_fn(net, batch, size), batch, iters, warmup=2)
        results.append((name, batch, size, macs, tr, inf))
    peak = max(peak0, matmul_peak_gflops())
    S = 'gflops'
    rows = [row(S, 'matmul peak (FullyConnected 2048^3)', peak, 'GFLOP/s', 'fp32, best of start/end')]
    print('matmul peak: %.1f GFLOP/s (start %.1f)' % (peak, peak0))
    print('| model | batch | size | GMAC/img | train img/s | train GFLOP/s | % peak | infer img/s | infer GFLOP/s | % peak |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for name, batch, size, macs, tr, inf in results:
        gtr = tr * 3 * 2 * macs / 1e9
        ginf = inf * 2 * macs / 1e9
        cfg = 'batch %d, %dx%d, %.3f GMAC/img' % (batch, size, size, macs / 1e9)
        print('| %s | %d | %d | %.3f | %.1f | %.1f | %.0f | %.1f | %.1f | %.0f |' % (
            name, batch, size, macs / 1e9, tr, gtr, 100 * gtr / peak, inf, ginf, 100 * ginf / peak))
        rows += [row(S, '%s train' % name, gtr, 'GFLOP/s', cfg + ', %.1f img/s' % tr),
                 row(S, '%s train / peak' % name, 100 * gtr / peak, '%', '3x forward FLOP'),
                 row(S, '%s inference' % name, ginf, 'GFLOP/s', cfg + ', %.1f img/s' % inf),
                 row(S, '%s inference / peak' % name, 100 * ginf / peak, '%', '')]
    write_rows(a.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
