"""What the benchmarks share: the result-row schema of the suite and two timing helpers.

A row is ``{"section", "name", "value", "unit", "note"}``: one measured number (images/s,
ms, bytes, GFLOP/s, a ratio with unit ``x``, a percentage with unit ``%``) and a short note
(configuration, the ratio's definition, a decision). Every ``bench_*.py`` that takes
``--json PATH`` writes a JSON list of such rows there; ``bench/run_all.py`` collects them.
"""
import json
import platform
import os
import time

ROW_KEYS = ('section', 'name', 'value', 'unit', 'note')


def cpu_name():
    """The CPU model as /proc/cpuinfo names it (what every recorded figure is labelled with)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def cifar10_dir(needed='train.rec'):
    """The full CIFAR-10 RecordIO folder when it holds ``needed``: the cifar10 preset's default
    folder (``~/.mxnet/datasets/cifar10``, where the training scripts look without
    ``--data-dir``); otherwise the bundled 4,000/1,000-image sample ``data/cifar10_sample``."""
    from gluon_transfer.data.datasets import get_preset
    full = os.path.expanduser(get_preset('cifar10').default_dir)
    if os.path.isfile(os.path.join(full, needed)):
        return full
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'cifar10_sample')


def row(section, name, value, unit, note=''):
    return {'section': section, 'name': name, 'value': float(value), 'unit': unit, 'note': note}


def add_json_arg(parser):
    parser.add_argument('--json', default=None, metavar='PATH',
                        help='also write the results as suite rows (section, name, value, unit, note) to PATH')


def write_rows(path, rows):
    if not path:
        return
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(list(rows), f, indent=1)


def median_rate(fn, images, iters, warmup=2):
    """Median images/s of ``fn()`` (which must wait for its results) over ``iters`` calls after
    ``warmup`` calls; each call processes ``images`` images."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return images / times[len(times) // 2]


def train_step_fn(net, batch, size, classes=10, ctx=None):
    """A closure running one forward + backward + SGD-momentum update of ``net`` on a fixed
    random batch (waited for): the plain training step the suite compares against."""
    import mxnet as mx
    from mxnet import autograd, gluon
    ctx = ctx or mx.cpu()
    x = mx.nd.random.uniform(shape=(batch, 3, size, size), ctx=ctx)
    y = mx.nd.array(__import__('numpy').random.RandomState(0).randint(0, classes, batch), ctx=ctx)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01, 'momentum': 0.9})

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch)
        mx.nd.waitall()
    return step


def infer_fn(net, batch, size, ctx=None):
    import mxnet as mx
    x = mx.nd.random.uniform(shape=(batch, 3, size, size), ctx=ctx or mx.cpu())

    def run():
        net(x).wait_to_read()
    return run


def matmul_peak_gflops(n=2048, iters=5):
    """Measured fp32 matmul peak of this CPU through MXNet: a FullyConnected (oneDNN) of
    ``n x n`` by ``n x n``, 2 n^3 FLOP, median of ``iters`` after one warm-up."""
    import mxnet as mx
    x = mx.nd.random.uniform(shape=(n, n))
    w = mx.nd.random.uniform(shape=(n, n))

    def run():
        mx.nd.FullyConnected(x, w, num_hidden=n, no_bias=True).wait_to_read()
    rate = median_rate(run, 1, iters, warmup=1)
    return 2.0 * n ** 3 * rate / 1e9
