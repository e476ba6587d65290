"""What the benchmarks share: the result-row schema of the suite, timing helpers, and the
runner that times each configuration in its own fresh process, rounds alternating.

A row is ``{"section", "name", "value", "unit", "note"}``: one measured number (images/s,
ms, bytes, GFLOP/s, a ratio with unit ``x``, a percentage with unit ``%``) and a short note
(configuration, the ratio's definition, a decision). Every ``bench_*.py`` that takes
``--json PATH`` writes a JSON list of such rows there; ``bench/run_all.py`` collects them.
"""
import json
import platform
import os
import statistics
import subprocess
import time

# the package picks the OpenMP thread count before MXNet loads (gluon_transfer.threads), so every
# benchmark measures what a user of the package gets, even where a script imports mxnet first
import gluon_transfer  # noqa: E402,F401

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


def round_robin(fns, warmup, rounds):
    """``{name: fn}`` -> ``{name: median seconds per call}``: ``warmup`` untimed calls of each,
    then ``rounds`` rounds of one timed call of each (every ``fn`` must wait for its results),
    so load from other jobs hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(statistics.median(ts)) for name, ts in times.items()}


def markdown_rows(rows):
    """Suite rows as a Markdown table (measurement = name, value, unit, note), one string."""
    lines = ['| measurement | value | unit | note |', '|---|---|---|---|']
    lines += ['| %s | %.3g | %s | %s |' % (r['name'], r['value'], r['unit'], r['note']) for r in rows]
    return '\n'.join(lines)


def median_rates(fn, images, iters, warmup=2):
    """``(wall, cpu, fastest)``: the median images/s of ``fn()`` over ``iters`` calls after
    ``warmup``, by wall-clock time and by this process's CPU time (user + system, all its
    threads), and the images/s of the fastest call by wall clock (load from other jobs only
    ever adds time, so the fastest call is the one least disturbed). With
    one compute thread (``OMP_NUM_THREADS=1``, ``MXNET_CPU_WORKER_NTHREADS=1``) the CPU time
    leaves out the time the process waited for a core, so on a machine shared with other jobs
    CPU-time ratios vary much less than wall-clock ones (they still include cache and memory
    contention); the wall-clock rate is what a user sees."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return images / statistics.median(wall), images / statistics.median(cpu), images / min(wall)


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


def run_json_process(cmd, timeout, cwd=None):
    """Run ``cmd`` as a fresh process and return the JSON object it printed as its last stdout
    line. A failure ends the benchmark with ``error: ...`` (the command and the last stderr line)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise SystemExit('error: %s timed out after %d s' % (' '.join(cmd[:3]), timeout)) from None
    if res.returncode:
        last = [l for l in res.stderr.strip().splitlines() if l.strip()]
        raise SystemExit('error: %s failed: %s' % (' '.join(cmd[:3]), last[-1] if last else 'exit %d' % res.returncode))
    lines = res.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise SystemExit('error: %s printed no JSON result line' % ' '.join(cmd[:3])) from None


def alternating_rounds(configs, rounds, command_of, timeout, key='images_per_sec', cwd=None, echo=print):
    """Time every configuration in its own fresh process, ``rounds`` times, the configurations in
    the same order within each round (so a change of machine load hits all of them alike, and
    no two configurations share a process: hybridized graphs of different networks in one
    process were seen slowing each other down). ``command_of(config)`` gives the command, which
    must print a JSON object with ``key`` on its last stdout line (:func:`run_json_process`).
    Returns ``{config: [value of each round]}``, or with a tuple of keys
    ``{config: {key: [value of each round]}}``."""
    keys = key if isinstance(key, tuple) else (key,)
    samples = {}
    for r in range(rounds):
        for cfg in configs:
            res = run_json_process(command_of(cfg), timeout, cwd=cwd)
            got = samples.setdefault(cfg, {k: [] for k in keys})
            for k in keys:
                got[k].append(float(res[k]))
            if echo:
                echo('round %d: %-60s %s' % (r + 1, ' '.join(str(c) for c in cfg),
                                             ' '.join('%10.2f' % res[k] for k in keys)))
    return samples if isinstance(key, tuple) else {cfg: v[key] for cfg, v in samples.items()}


def spread(values):
    """``(median, min, max)`` of a list of per-round values."""
    return statistics.median(values), min(values), max(values)


def thread_settings():
    """The thread settings every speed figure must name (unset ones as 'unset')."""
    return ', '.join('%s=%s' % (k, os.environ.get(k, 'unset'))
                     for k in ('OMP_NUM_THREADS', 'MXNET_CPU_WORKER_NTHREADS'))
