#!/usr/bin/env python
"""Throughput of the AFF networks: training and inference images/s, ratios, GFLOP/s vs matmul peak.

    python bench/bench_aff.py [--quick] [--out bench/out/aff.json]

Measures (CPU context, float32, hybridize(static_alloc=True, static_shape=True)):
Every rate is the best of several timed iterations (after warm-up), since other jobs may share
the CPU; the matmul peak is the best of runs at the start and the end.
- training images/s (forward + backward + SGD-momentum update) of AFF-ResNet-32 (CIFAR, batch 64,
  32x32) against the same network with fusion 'add', and AFF-ResNet-50 (batch 16, 224x224)
  against 'add' (= GluonCV resnet50_v1d);
- inference images/s (batch 64, 32x32) of AFF-ResNet-32: the Gluon network, the exported symbol
  re-imported with SymbolBlock.imports, and the MKLDNN-partitioned graph;
- multiply-accumulates per image (counted from the conv/dense layers' shapes; comparable to the
  open-aff summary tool's "FLOPs", e.g. 1.13G for AFF-ResNet-32) and achieved GFLOP/s
  (2 FLOP per MAC; training counted as 3x the forward pass) against the measured peak of a large
  FullyConnected (matmul) in MXNet.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import numpy as np
    import mxnet as mx
    from mxnet import autograd, gluon
    import gluon_transfer as gt
    from gluon_transfer.export import export_symbol


def count_macs(net, shape):
    """Multiply-accumulates of every Conv2D/Dense for one forward pass of ``shape`` (imperative)."""
    total = [0]
    handles = []

    def conv_hook(block, inputs, output):
        w = block.weight.shape  # (out, in/groups, kh, kw)
        total[0] += int(np.prod(output.shape[1:])) * int(np.prod(w[1:]))

    def dense_hook(block, inputs, output):
        total[0] += int(np.prod(block.weight.shape))

    def walk(block):
        for child in block._children.values():
            if isinstance(child, gluon.nn.Conv2D):
                handles.append(child.register_forward_hook(conv_hook))
            elif isinstance(child, gluon.nn.Dense):
                handles.append(child.register_forward_hook(dense_hook))
            walk(child)
    walk(net)
    net(mx.nd.zeros((1,) + tuple(shape[1:])))
    for h in handles:
        h.detach()
    return total[0]


def matmul_peak(repeat):
    """GFLOP/s of FullyConnected(2048x2048 data, 2048x2048 weight)."""
    n = 2048
    x = mx.nd.random.uniform(shape=(n, n))
    w = mx.nd.random.uniform(shape=(n, n))
    mx.nd.FullyConnected(x, w, no_bias=True, num_hidden=n).wait_to_read()
    best = float('inf')
    for _ in range(repeat):
        t = time.time()
        mx.nd.FullyConnected(x, w, no_bias=True, num_hidden=n).wait_to_read()
        best = min(best, time.time() - t)
    return 2.0 * n ** 3 / best / 1e9


def build(name, **kw):
    net = gt.get_model(name, **kw)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    return net


def train_speed(net, batch, size, classes, warmup, iters):
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01, 'momentum': 0.9, 'wd': 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.uniform(-1, 1, size=(batch, 3, size, size)))
    y = mx.nd.array(rng.randint(0, classes, size=batch))

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch)
    for _ in range(warmup):
        step()
    mx.nd.waitall()
    return _best_rate(step, batch, iters)


def _best_rate(fn, batch, iters):
    """images/s of the fastest of ``iters`` timed calls (robust to other jobs sharing the CPU)."""
    best = float('inf')
    for _ in range(iters):
        t = time.time()
        fn()
        mx.nd.waitall()
        best = min(best, time.time() - t)
    return batch / best


def infer_speed(block, x, warmup, iters):
    for _ in range(warmup):
        block(x).wait_to_read()
    return _best_rate(lambda: block(x), x.shape[0], iters)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer iterations (about 3 minutes on 2 cores)')
    p.add_argument('--out', default=os.path.join('bench', 'out', 'aff.json'))
    args = p.parse_args(argv)
    warm, it_c, it_i, it_inf = (1, 3, 3, 5) if args.quick else (2, 10, 5, 10)
    res = {'quick': args.quick, 'mxnet': mx.__version__, 'cpu_count': os.cpu_count(),
           'omp_num_threads': os.environ.get('OMP_NUM_THREADS'), 'mkldnn': mx.runtime.Features().is_enabled('MKLDNN')}
    res['matmul_peak_gflops'] = matmul_peak(5)
    print('matmul peak (FullyConnected 2048^3): %.1f GFLOP/s' % res['matmul_peak_gflops'])

    rows = []

    def record(kind, label, imgs, macs, factor):
        gflops = imgs * macs * 2 * factor / 1e9
        rows.append({'kind': kind, 'model': label, 'images_per_s': imgs, 'gmacs_per_image': macs / 1e9,
                     'gflops': gflops, 'pct_of_matmul_peak': 100 * gflops / res['matmul_peak_gflops']})
        print('%-6s %-40s %7.1f img/s  %.2f GMAC/img  %6.1f GFLOP/s'
              % (kind, label, imgs, macs / 1e9, gflops))

    # training, CIFAR: AFF-ResNet-32 vs add
    for fusion in ('aff', 'add'):
        net = build('cifar_aff_resnet', blocks=5, channel_times=4, fusion=fusion, classes=100)
        macs = count_macs(net, (1, 3, 32, 32))
        record('train', 'cifar_aff_resnet32 fusion=%s b64' % fusion, train_speed(net, 64, 32, 100, warm, it_c), macs, 3)
    # training, ImageNet: AFF-ResNet-50 vs add (resnet50_v1d)
    for fusion in ('aff', 'add'):
        net = build('aff_resnet', num_layers=50, fusion=fusion)
        macs = count_macs(net, (1, 3, 224, 224))
        record('train', 'aff_resnet50 fusion=%s b16 224' % fusion, train_speed(net, 16, 224, 1000, warm, it_i), macs, 3)

    # inference: Gluon vs exported symbol vs MKLDNN-partitioned graph (AFF-ResNet-32, batch 64)
    net = build('cifar_aff_resnet32')
    macs = count_macs(net, (1, 3, 32, 32))
    x = mx.nd.array(np.random.RandomState(1).uniform(-1, 1, size=(64, 3, 32, 32)))
    net.hybridize(static_alloc=True, static_shape=True)
    record('infer', 'cifar_aff_resnet32 gluon b64', infer_speed(net, x, warm, it_inf), macs, 1)
    with tempfile.TemporaryDirectory() as tmp:
        exp = export_symbol(net, os.path.join(tmp, 'aff32'), (64, 3, 32, 32))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            sym = gluon.SymbolBlock.imports(exp['symbol'], ['data'], exp['params'])
        sym.hybridize(static_alloc=True, static_shape=True)
        record('infer', 'cifar_aff_resnet32 exported symbol b64', infer_speed(sym, x, warm, it_inf), macs, 1)
        opt = export_symbol(net, os.path.join(tmp, 'aff32opt'), (64, 3, 32, 32), optimize=True)
        res['mkldnn_note'] = opt['optimize_note']
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            symo = gluon.SymbolBlock.imports(opt['symbol'], ['data'], opt['params'])
        symo.hybridize(static_alloc=True, static_shape=True)
        record('infer', 'cifar_aff_resnet32 exported MKLDNN b64', infer_speed(symo, x, warm, it_inf), macs, 1)

    speed = {r['model']: r['images_per_s'] for r in rows}
    res['rows'] = rows
    res['ratios'] = {
        'cifar train aff/add': speed['cifar_aff_resnet32 fusion=aff b64'] / speed['cifar_aff_resnet32 fusion=add b64'],
        'imagenet train aff/add': speed['aff_resnet50 fusion=aff b16 224'] / speed['aff_resnet50 fusion=add b16 224'],
        'infer exported/gluon': speed['cifar_aff_resnet32 exported symbol b64'] / speed['cifar_aff_resnet32 gluon b64'],
        'infer mkldnn/gluon': speed['cifar_aff_resnet32 exported MKLDNN b64'] / speed['cifar_aff_resnet32 gluon b64'],
    }
    res['matmul_peak_gflops'] = max(res['matmul_peak_gflops'], matmul_peak(5))  # re-measured at the end
    for r in rows:
        r['pct_of_matmul_peak'] = 100 * r['gflops'] / res['matmul_peak_gflops']
    print('matmul peak, best of start/end: %.1f GFLOP/s' % res['matmul_peak_gflops'])
    for k, v in res['ratios'].items():
        print('ratio %-24s %.3f' % (k, v))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=1)
    print('wrote %s' % args.out)


if __name__ == '__main__':
    main()
