"""Engine overhead: images/s of Engine's training step vs a minimal hand-written Gluon loop
on the same model, same data, measured side by side in one process.

    python bench/bench_engine.py [--model cifar_resnet20_v1] [--batch-size 128] [--iters 20]
                                 [--modes hybrid,imperative] [--bf16]

Both loops run forward + backward + SGD(momentum) update over the same pre-built batches
(an ArrayIter over random uint8 images, so data loading costs the same in both). The
ratio engine/minimal must stay >= 0.95. With --bf16 the engine also runs with bfloat16
AMP (mx.contrib.amp) for comparison with float32. Medians over repeated rounds.
"""
import argparse
import os
import sys
import time
import warnings

warnings.simplefilter('ignore', DeprecationWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from gluon_transfer import get_model  # noqa: E402
from gluon_transfer.data.base import ArrayIter  # noqa: E402
from gluon_transfer.engine.tasks import Classify  # noqa: E402
from gluon_transfer.engine.trainer import Engine, FitConfig  # noqa: E402
from bench.common import add_json_arg, row, write_rows  # noqa: E402


def make_iter(n, bs, size=32):
    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, (n, 3, size, size)).astype(np.uint8)
    labels = rng.randint(0, 10, n)
    return ArrayIter(imgs, labels, bs, mean=(125,) * 3, std=(60,) * 3, last_batch='rollover')


def build(model, hybrid, size):
    mx.random.seed(0)
    net = get_model(model, classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, size, size)))
    if hybrid:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def minimal_loop(model, it, hybrid, size):
    net = build(model, hybrid, size)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01, 'momentum': 0.9, 'wd': 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    it.set_epoch(0)
    batches = list(it)
    # warm-up
    for b in batches[:2]:
        with autograd.record():
            loss = loss_fn(net(b.data), b.label)
        loss.backward()
        trainer.step(b.data.shape[0])
    mx.nd.waitall()
    t = time.time()
    for b in batches:
        with autograd.record():
            loss = loss_fn(net(b.data), b.label)
        loss.backward()
        trainer.step(b.data.shape[0])
    mx.nd.waitall()
    return len(batches) * it.batch_size / (time.time() - t)


def engine_loop(model, it, hybrid, size, dtype='float32'):
    net = build(model, False, size)
    cfg = FitConfig(num_epochs=1, lr=0.01, momentum=0.9, wd=1e-4, optimizer='sgd', lr_mode='constant',
                    mode='hybrid' if hybrid else 'imperative', log_interval=50, dtype=dtype)
    eng = Engine(net, Classify(), [mx.cpu()], cfg, it, num_classes=10)
    eng.cfg.max_iters = 2
    eng.fit()            # warm-up (2 iterations), same as the minimal loop
    eng.cfg.max_iters = 0
    eng.global_step = 0
    mx.nd.waitall()
    t = time.time()
    stats = eng.train_epoch(0, len(it))
    mx.nd.waitall()
    return len(it) * it.batch_size / (time.time() - t), stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default='cifar_resnet20_v1')
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--iters', type=int, default=20)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--modes', default='hybrid,imperative')
    ap.add_argument('--bf16', action='store_true')
    add_json_arg(ap)
    args = ap.parse_args()
    rows = []
    size = 32
    it = make_iter(args.iters * args.batch_size, args.batch_size, size)
    print('model %s, batch %d, %d iterations per round, %d rounds, OPENBLAS_CORETYPE=%s' % (
        args.model, args.batch_size, args.iters, args.rounds, os.environ.get('OPENBLAS_CORETYPE', '(unset)')))
    print('| mode | minimal loop img/s | engine img/s | engine / minimal |')
    print('|---|---|---|---|')
    for mode in args.modes.split(','):
        hyb = mode == 'hybrid'
        mins, engs = [], []
        for _ in range(args.rounds):   # interleaved so drifts in machine load hit both
            mins.append(minimal_loop(args.model, it, hyb, size))
            engs.append(engine_loop(args.model, it, hyb, size)[0])
        m, e = float(np.median(mins)), float(np.median(engs))
        print('| %s | %.1f | %.1f | %.3f |' % (mode, m, e, e / m))
        cfg = '%s, batch %d, %s' % (args.model, args.batch_size, mode)
        rows += [row('engine', 'minimal Gluon loop (%s)' % mode, m, 'img/s', cfg),
                 row('engine', 'engine (%s)' % mode, e, 'img/s', cfg),
                 row('engine', 'engine / minimal (%s)' % mode, e / m, 'x', 'median of %d rounds' % args.rounds)]
    write_rows(args.json, rows)
    if args.bf16:
        import subprocess
        # AMP must be initialised before any network is built: run it in a fresh process.
        code = ('import sys; sys.argv=["x"]; sys.path.insert(0, %r); import bench.bench_engine as b; '
                'from gluon_transfer.engine.precision import setup_precision; import mxnet as mx; '
                'setup_precision("bfloat16", [mx.cpu()]); it=b.make_iter(%d, %d); '
                'print("BF16", b.engine_loop(%r, it, True, 32, "bfloat16")[0])') % (
                    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), args.iters * args.batch_size,
                    args.batch_size, args.model)
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith('BF16')]
        fp32 = float(np.median([engine_loop(args.model, it, True, size)[0] for _ in range(args.rounds)]))
        if line:
            bf16 = float(line[0].split()[1])
            print('\n| precision (engine, hybrid) | img/s |\n|---|---|\n| float32 | %.1f |\n| bfloat16 AMP | %.1f (%.2fx) |'
                  % (fp32, bf16, bf16 / fp32))
        else:
            print('bfloat16 run failed:\n' + out.stderr[-2000:])


if __name__ == '__main__':
    main()
