#!/usr/bin/env python
"""bfloat16 AMP vs float32 on this CPU: training and inference images/s side by side, and the
validation accuracy of one trained float32 checkpoint evaluated both ways.

    python bench/bench_precision.py [--quick] [--model cifar_resnet20_v1] [--json PATH]

* inference: the hybridized float32 network vs ``amp.convert_hybrid_block(net, 'bfloat16')``
  of the same network (batch 128, 32x32), interleaved round by round in one process, medians;
* training: one forward + backward + SGD-momentum step (batch 128) of a float32 network, and of
  the same architecture built after ``amp.init(target_dtype='bfloat16')`` (AMP patches the
  operators globally, so each precision trains in its own process; processes alternate);
* accuracy: a float32 checkpoint trained for ``--train-iters`` iterations on the CIFAR-10 set in
  ``--data-dir`` (default ``~/.mxnet/datasets/cifar10`` when present, else the bundled sample), cached in ``bench/out/`` and reused,
  evaluated on the validation set in float32 and in bfloat16 (same images, same weights).

Decision rule: bfloat16 becomes the default for inference benchmarks only if its
inference is faster AND ``|top-1(bf16) - top-1(fp32)| < 0.2`` points. The rule is applied on
every run and the decision is printed, returned as a row and written to
``bench/out/precision_decision.json``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import warnings

warnings.simplefilter('ignore', DeprecationWarning)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.common import add_json_arg, median_rate, row, train_step_fn, write_rows  # noqa: E402

OUT = os.path.join(ROOT, 'bench', 'out')
MAX_ACC_DIFF = 0.2   # points of top-1


def decide(fp32_infer, bf16_infer, acc_diff_points):
    """The rule: bf16 for inference benchmarks iff faster and |accuracy diff| < 0.2 points."""
    faster = bf16_infer > fp32_infer
    close = abs(acc_diff_points) < MAX_ACC_DIFF
    if faster and close:
        why = 'bf16 inference %.2fx and accuracy diff %+.2f points (< %.1f)' % (
            bf16_infer / fp32_infer, acc_diff_points, MAX_ACC_DIFF)
    else:
        why = '; '.join(([] if faster else ['bf16 inference not faster (%.2fx)' % (bf16_infer / fp32_infer)]) +
                        ([] if close else ['accuracy diff %+.2f points >= %.1f' % (acc_diff_points, MAX_ACC_DIFF)]))
    return faster and close, why


def build(model, classes=10):
    import mxnet as mx
    from gluon_transfer import get_model
    mx.random.seed(0)
    net = get_model(model, classes=classes)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def train_worker(a):
    """One process, one precision: print the median training images/s."""
    import mxnet as mx
    if a.worker == 'bfloat16':
        from gluon_transfer.engine.precision import setup_precision
        setup_precision('bfloat16', [mx.cpu()])
    net = build(a.model)
    print('RATE %f' % median_rate(train_step_fn(net, a.batch_size, 32), a.batch_size, a.iters, warmup=2))


def train_rates(a, rounds):
    rates = {'float32': [], 'bfloat16': []}
    for r in range(rounds):     # ABBA order: a linear drift in machine load hits both alike
        for dtype in (('float32', 'bfloat16') if r % 2 == 0 else ('bfloat16', 'float32')):
            cmd = [sys.executable, os.path.abspath(__file__), '--worker', dtype, '--model', a.model,
                   '--batch-size', str(a.batch_size), '--iters', str(a.iters)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = [l for l in res.stdout.splitlines() if l.startswith('RATE ')]
            if res.returncode or not line:
                raise SystemExit('bench_precision: %s training worker failed:\n%s' % (dtype, res.stderr[-2000:]))
            rates[dtype].append(float(line[0].split()[1]))
    return {k: float(np.median(v)) for k, v in rates.items()}


def trained_checkpoint(a, data_dir):
    """float32 parameters after ``--train-iters`` iterations of the engine (cached)."""
    import mxnet as mx
    from gluon_transfer.data import build_data
    from gluon_transfer.engine.tasks import Classify
    from gluon_transfer.engine.trainer import Engine, FitConfig, seed_epoch
    tag = '%s-%s-%d' % (a.model, os.path.basename(os.path.normpath(data_dir)), a.train_iters)
    path = os.path.join(OUT, 'precision-fp32-%s.params' % tag)
    if os.path.isfile(path):
        return path, 'cached'
    seed_epoch(0, -1)
    data = build_data('cifar10', data_dir=data_dir, batch_size=128, num_workers=2, verify=False)
    net = build(a.model)
    cfg = FitConfig(num_epochs=1000, lr=0.1, lr_mode='cosine', momentum=0.9, wd=1e-4, optimizer='nag',
                    max_iters=a.train_iters, log_interval=0, mode='imperative')
    eng = Engine(net, Classify(), [mx.cpu()], cfg, data.train, None, data.num_classes)
    eng.schedule.total_iters = a.train_iters
    t = time.time()
    eng.fit()
    os.makedirs(OUT, exist_ok=True)
    net.save_parameters(path)
    return path, 'trained now, %d iterations in %.0f s' % (a.train_iters, time.time() - t)


def evaluate(net, val, limit):
    import mxnet as mx
    correct = n = 0
    val.set_epoch(0)
    for b in val:
        keep = b.data.shape[0] - int(b.pad)
        pred = net(b.data.as_in_context(mx.cpu())).astype('float32').asnumpy()[:keep].argmax(1)
        correct += int((pred == b.label.asnumpy()[:keep].astype(np.int64)).sum())
        n += keep
        if limit and n >= limit:
            break
    return 100.0 * correct / max(n, 1), n


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', default='cifar_resnet20_v1')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--iters', type=int, default=8, help='timed iterations per measurement')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--train-iters', type=int, default=200, help='iterations of the float32 checkpoint')
    p.add_argument('--val-limit', type=int, default=0, help='evaluate on the first N validation images (0: all)')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--quick', action='store_true', help='fewer rounds, 2,000 validation images')
    p.add_argument('--worker', default=None, choices=['float32', 'bfloat16'], help=argparse.SUPPRESS)
    add_json_arg(p)
    a = p.parse_args()
    if a.worker:
        return train_worker(a)
    if a.quick:
        a.iters, a.rounds = 4, 2
        a.val_limit = a.val_limit or 2000
    import mxnet as mx
    from mxnet.contrib import amp
    from gluon_transfer.data import build_data

    data_dir = a.data_dir
    if data_dir is None:
        from bench.common import cifar10_dir
        data_dir = cifar10_dir('val.rec')

    ckpt, how = trained_checkpoint(a, data_dir)
    fp32 = build(a.model)
    fp32.load_parameters(ckpt, ctx=mx.cpu())
    x = mx.nd.random.uniform(shape=(a.batch_size, 3, 32, 32))
    fp32(x).wait_to_read()
    bf16 = amp.convert_hybrid_block(fp32, 'bfloat16', ctx=mx.cpu())
    runs = {'float32': fp32, 'bfloat16': bf16}
    infer = {k: [] for k in runs}
    for _ in range(2 * a.rounds + 1):   # interleaved (cheap): load drifts hit both alike
        for k, net in runs.items():
            infer[k].append(median_rate(lambda: net(x).wait_to_read(), a.batch_size, a.iters, warmup=2))
    infer = {k: float(np.median(v)) for k, v in infer.items()}

    val = build_data('cifar10', data_dir=data_dir, batch_size=a.batch_size, num_workers=2, verify=False).val
    acc32, n = evaluate(fp32, val, a.val_limit)
    acc16, _ = evaluate(bf16, val, a.val_limit)
    diff = acc16 - acc32
    train = train_rates(a, a.rounds)
    use_bf16, why = decide(infer['float32'], infer['bfloat16'], diff)

    setting = '%s, batch %d, 32x32' % (a.model, a.batch_size)
    S = 'precision'
    rows = [row(S, 'inference fp32', infer['float32'], 'img/s', setting + ', hybridized'),
            row(S, 'inference bf16 AMP', infer['bfloat16'], 'img/s', 'amp.convert_hybrid_block'),
            row(S, 'inference bf16 / fp32', infer['bfloat16'] / infer['float32'], 'x',
                'medians of %d interleaved rounds' % (2 * a.rounds + 1)),
            row(S, 'training fp32', train['float32'], 'img/s', setting + ', fwd+bwd+SGD, own process'),
            row(S, 'training bf16 AMP', train['bfloat16'], 'img/s', 'amp.init in its own process'),
            row(S, 'training bf16 / fp32', train['bfloat16'] / train['float32'], 'x',
                'medians of %d processes each, ABBA order' % a.rounds),
            row(S, 'val top-1 fp32', acc32, '%', '%d val images of %s; checkpoint %s' % (
                n, os.path.basename(os.path.normpath(data_dir)), how)),
            row(S, 'val top-1 bf16', acc16, '%', 'same checkpoint, same images'),
            row(S, 'val top-1 diff bf16 - fp32', diff, 'points', 'rule: abs(diff) < %.1f' % MAX_ACC_DIFF),
            row(S, 'bf16 default for inference benchmarks', float(use_bf16), 'bool', why)]
    print('| measurement | value | unit | note |')
    print('|---|---|---|---|')
    for r in rows:
        print('| %s | %.4g | %s | %s |' % (r['name'], r['value'], r['unit'], r['note']))
    print('\ndecision: %s for inference benchmarks (%s)' % ('bfloat16' if use_bf16 else 'float32', why))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, 'precision_decision.json'), 'w') as f:
        json.dump({'inference_dtype': 'bfloat16' if use_bf16 else 'float32', 'why': why,
                   'bf16_infer_speedup': infer['bfloat16'] / infer['float32'], 'acc_diff_points': diff}, f, indent=1)
    write_rows(a.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
