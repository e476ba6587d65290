"""Strong scaling of dist_sync on this machine: the same global batch on 1 and 2 local workers.

    python bench/bench_dist.py [--global-batch 64] [--steps 30] [--model tiny] [--json OUT.json]

For each configuration the driver starts a job with ``python -m gluon_transfer.launch -n W
-s 1 --local`` whose workers run this file with ``--worker``; a row "no kvstore" runs one
process without any kvstore as the baseline. Each worker trains on random 32x32 inputs
(no data loading) with per-worker batch ``global_batch / W`` and times every step in
three synchronised parts:

* compute: forward + backward (``mx.nd.waitall()`` after);
* comm: ``trainer.allreduce_grads()`` -- push of the gradients to the server and pull of
  their sum over workers (waited for);
* update: the optimizer step on the worker (``update_on_kvstore=False``, as the engine).

Communication volume per worker and step = 2 x parameter bytes (push + pull, float32).
The parts are serialised by the waits, so "step" slightly overstates a real step, where
the kvstore overlaps the push of early layers with the rest of the backward pass.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def tiny_cifar_net(classes=10):
    from mxnet import gluon
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(16, 3, padding=1, activation='relu'),
            gluon.nn.Conv2D(32, 3, strides=2, padding=1, activation='relu'),
            gluon.nn.Conv2D(64, 3, strides=2, padding=1, activation='relu'),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(classes))
    return net


def worker(a):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon
    from gluon_transfer.engine import distributed

    kv, rank, nw = distributed.create_kvstore(a.kvstore)
    if a.global_batch % nw:
        raise SystemExit('--global-batch %d is not divisible by %d workers' % (a.global_batch, nw))
    b = a.global_batch // nw
    if a.model == 'tiny':
        net = tiny_cifar_net()
    else:
        from gluon_transfer.zoo import get_model
        net = get_model(a.model, classes=10)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    rng = np.random.RandomState(rank)
    x = mx.nd.array(rng.uniform(-1, 1, (b, 3, 32, 32)))
    y = mx.nd.array(rng.randint(0, 10, b))
    with autograd.train_mode():      # shape inference; an inference forward would leave
        net(x)                       # oneDNN-layout weights that the kvstore cannot push
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01, 'momentum': 0.9},
                            kvstore=kv, update_on_kvstore=False)
    if distributed.is_distributed(kv):
        distributed.broadcast_initial_params(trainer)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    n_params = sum(int(np.prod(p.shape)) for p in net.collect_params().values())
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        mx.nd.waitall()
        t1 = time.perf_counter()
        trainer.allreduce_grads()
        mx.nd.waitall()
        t2 = time.perf_counter()
        trainer.update(distributed.global_batch_size(b, nw))
        mx.nd.waitall()
        t3 = time.perf_counter()
        if step >= a.warmup:
            times.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = np.median(np.asarray(times), axis=0) * 1e3
    res = {'workers': nw, 'kvstore': a.kvstore, 'rank': rank, 'batch_per_worker': b, 'global_batch': a.global_batch,
           'params': n_params, 'comm_bytes_per_step': 2 * 4 * n_params if kv is not None else 0,
           'compute_ms': med[0], 'comm_ms': med[1], 'update_ms': med[2], 'step_ms': med[3],
           'images_per_sec': a.global_batch / (med[3] / 1e3)}
    if rank == 0:
        with open(a.out, 'w') as f:
            json.dump(res, f)


def run_config(a, workers, kvstore, tmp):
    out = os.path.join(tmp, 'res_%s_%d.json' % (kvstore, workers))
    wargs = [sys.executable, os.path.abspath(__file__), '--worker', '--kvstore', kvstore, '--out', out,
             '--global-batch', str(a.global_batch), '--steps', str(a.steps), '--warmup', str(a.warmup),
             '--model', a.model]
    if kvstore == 'none':
        cmd = wargs
    else:
        cmd = [sys.executable, '-m', 'gluon_transfer.launch', '-n', str(workers), '-s', '1', '--local',
               '--timeout', '600', '--log-dir', os.path.join(tmp, 'logs_%d' % workers), '--'] + wargs
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=660)
    with open(out) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--kvstore', default='dist_sync')
    p.add_argument('--out', default=None)
    p.add_argument('--global-batch', type=int, default=64)
    p.add_argument('--steps', type=int, default=30)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--model', default='tiny', help="'tiny' (3 convs + dense) or a model name")
    from bench.common import add_json_arg
    add_json_arg(p)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers, kv in ((1, 'none'), (1, 'dist_sync'), (2, 'dist_sync')):
            rows.append(run_config(a, workers, kv, tmp))
    print('model %s, %d parameters, global batch %d, %d cores, median of %d steps'
          % (a.model, rows[0]['params'], a.global_batch, os.cpu_count(), a.steps))
    print('| kvstore | workers | batch/worker | compute ms | comm ms | update ms | step ms | img/s | '
          'comm bytes/step/worker |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print('| %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %.0f | %s |' % (
            r['kvstore'], r['workers'], r['batch_per_worker'], r['compute_ms'], r['comm_ms'], r['update_ms'],
            r['step_ms'], r['images_per_sec'], '{:,}'.format(r['comm_bytes_per_step'])))
    if a.json:
        from bench.common import row, write_rows
        out = []
        for r in rows:
            name = '%s, %d worker%s' % (r['kvstore'], r['workers'], 's' if r['workers'] > 1 else '')
            cfg = 'batch %d/worker, %s' % (r['batch_per_worker'], a.model)
            out += [row('dist', '%s: step' % name, r['step_ms'], 'ms', cfg),
                    row('dist', '%s: img/s' % name, r['images_per_sec'], 'img/s', '')]
            if r['kvstore'] != 'none':
                out += [row('dist', '%s: comm' % name, r['comm_ms'], 'ms', 'allreduce_grads (push + pull)'),
                        row('dist', '%s: comm bytes' % name, r['comm_bytes_per_step'], 'bytes',
                            'per step and worker')]
        base = rows[0]['images_per_sec']
        out.append(row('dist', 'speed-up 2 workers / no kvstore', rows[-1]['images_per_sec'] / base, 'x',
                       'strong scaling, same global batch, %d cores' % os.cpu_count()))
        write_rows(a.json, out)


if __name__ == '__main__':
    main()
