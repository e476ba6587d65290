"""Distillation overhead: images/s of one training step of a student distilled from a frozen
teacher (attention transfer + KD) vs the student trained alone and vs the teacher's
inference alone, on the same pre-built batches, side by side in one process.

    python bench/bench_distill.py [--student wrn16_1] [--teacher wrn16_2] [--batch-size 128]
                                  [--iters 4] [--rounds 5] [--grad-at] [--before REV]

Steps are the engine's (``task.loss`` under ``autograd.record()``, backward,
``after_backward``, ``trainer.step``), hybridized as the engine does. The overhead of
distillation beyond the teacher's inference is
``t_distill / (t_student + t_teacher_inference) - 1`` (target < 10 %). ``--grad-at`` adds
gradient-based AT (extra forward/backward passes, see engine/tasks.py Distill).
Configurations are interleaved round by round; medians over rounds (``--iters 1`` with many
rounds pairs the configurations step by step, the steadiest ratios on a shared machine).
``--before REV`` adds the AT + KD step of the ``Distill`` task as git revision ``REV`` had it
(its ``gluon_transfer/engine/tasks.py``, run against today's library), for a before/after
comparison in the same process.
"""
import argparse
import os
import subprocess
import sys
import types
import time
import warnings

warnings.simplefilter('ignore', DeprecationWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import add_json_arg, row, write_rows  # noqa: E402
import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from gluon_transfer import get_model  # noqa: E402
from gluon_transfer.engine.tasks import Classify, Distill, build_teacher  # noqa: E402

TAPS = ('stage1', 'stage2', 'stage3')


def batches(n, bs, size=32):
    rng = np.random.RandomState(0)
    return [(mx.nd.array(rng.randn(bs, 3, size, size)), mx.nd.array(rng.randint(0, 10, bs)))
            for _ in range(n)]


def student(name):
    mx.random.seed(0)
    net = get_model(name, classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    return net


def timed(steps, data, iters, rounds):
    """Median seconds per step of each ``{name: (step, iters)}``; the configurations are
    interleaved round by round so that drifts of a shared machine hit all of them alike.
    Also returns the per-round timings."""
    for step, _ in steps.values():                     # warm-up (graph building, allocation)
        for x, y in data[:2]:
            step(x, y)
    mx.nd.waitall()
    per_round = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (step, n) in steps.items():
            t0 = time.time()
            for i in range(n):
                x, y = data[i % len(data)]
                step(x, y)
            mx.nd.waitall()
            per_round[name].append((time.time() - t0) / n)
    return {k: float(np.median(v)) for k, v in per_round.items()}, per_round


def train_step(net, task):
    task.setup(net, [mx.cpu()])
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01, 'momentum': 0.9, 'wd': 5e-4})

    def step(x, y):
        with autograd.record():
            total, _, _ = task.loss(net, x, y, y)
        autograd.backward([total])
        task.after_backward(net)
        trainer.step(x.shape[0])
    return step


def distill_class_at(rev):
    """The ``Distill`` class of ``gluon_transfer/engine/tasks.py`` at git revision ``rev``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.check_output(['git', 'show', '%s:gluon_transfer/engine/tasks.py' % rev], cwd=root).decode()
    mod = types.ModuleType('gluon_transfer.engine._tasks_%s' % rev)
    mod.__package__ = 'gluon_transfer.engine'
    exec(compile(src, 'tasks.py@%s' % rev, 'exec'), mod.__dict__)
    return mod.Distill


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--student', default='wrn16_1')
    p.add_argument('--teacher', default='wrn16_2')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--iters', type=int, default=4)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--grad-at', action='store_true')
    p.add_argument('--before', default=None, metavar='REV', help="also time REV's Distill (AT + KD)")
    add_json_arg(p)
    a = p.parse_args()
    rows = []
    data = batches(4, a.batch_size)
    bs = a.batch_size
    teacher = build_teacher(a.teacher, None, 10, [mx.cpu()], features=TAPS, allow_random=True)
    teacher.hybridize(static_alloc=True)

    def infer(x, y):
        with autograd.pause():
            teacher(x)

    shape = (1, 3, 32, 32)
    steps = {'student alone (CE)': (train_step(student(a.student), Classify()), a.iters),
             'teacher inference': (infer, a.iters),
             'distill: AT (beta 1e3) + KD (alpha 0.9)': (
                 train_step(student(a.student), Distill(teacher, TAPS, beta=1e3, alpha=0.9, input_shape=shape)),
                 a.iters),
             'distill: AT only (beta 1e3)': (
                 train_step(student(a.student), Distill(teacher, TAPS, beta=1e3, input_shape=shape)), a.iters)}
    before_name = 'distill: AT + KD, Distill of %s' % a.before
    if a.before:
        steps[before_name] = (
            train_step(student(a.student), distill_class_at(a.before)(teacher, TAPS, beta=1e3, alpha=0.9,
                                                                      input_shape=shape)), a.iters)
    if a.grad_at:
        steps['distill: KD + gradient AT'] = (
            train_step(student(a.student), Distill(teacher, alpha=0.9, grad_at_beta=1.0, input_shape=shape)),
            max(2, a.iters // 4))
    res, per_round = timed(steps, data, a.iters, a.rounds)
    base = [s + t for s, t in zip(per_round['student alone (CE)'], per_round['teacher inference'])]
    print('student %s, teacher %s, batch %d, %d rounds (interleaved), mxnet %s' % (
        a.student, a.teacher, bs, a.rounds, mx.__version__))
    print('| measurement | ms/step | img/s | overhead vs student step + teacher inference |')
    print('|---|---|---|---|')
    for name, t in res.items():
        if name in ('student alone (CE)', 'teacher inference'):
            rel = ''
        else:   # median over rounds of the same round's ratio
            rel = '%+.1f %%' % (100 * (np.median([d / b for d, b in zip(per_round[name], base)]) - 1))
        print('| %s | %.1f | %.0f | %s |' % (name, 1e3 * t, bs / t, rel))
        rows.append(row('distill', name, bs / t, 'img/s', '%s <- %s, batch %d' % (a.student, a.teacher, bs)))
        if rel:
            rows.append(row('distill', '%s: overhead' % name, float(rel.split()[0]), '%',
                            'beyond student step + teacher inference'))
    write_rows(a.json, rows)
    print('| student step + teacher inference (sum) | %.1f | %.0f | |' % (1e3 * np.median(base), bs / np.median(base)))
    if a.before:
        new, old = per_round['distill: AT (beta 1e3) + KD (alpha 0.9)'], per_round[before_name]
        ratios = np.array(new) / np.array(old)
        print('AT + KD step, now / %s: median per-round ratio %.3f (quartiles %.3f, %.3f; %d of %d rounds faster)' % (
            a.before, np.median(ratios), np.percentile(ratios, 25), np.percentile(ratios, 75),
            int((ratios < 1).sum()), len(ratios)))


if __name__ == '__main__':
    main()
