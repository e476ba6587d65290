#!/usr/bin/env python
"""Speed of a fine-tuning step with DELTA and L2-SP against plain fine-tuning.

    python bench/bench_transfer.py            # ResNet-50 v1b, batch 16, 224 px (minutes on 2 cores)
    python bench/bench_transfer.py --quick    # batch 4, 112 px

Each configuration runs the real Transfer task (hybridized target, SGD momentum 0.9) on
random data: warm-up steps, then --steps timed steps (forward, backward, update, waitall).
Also timed: the frozen source's inference alone (the tapped source network under
autograd.pause). Reported: images/s and the overhead of each regularizer beyond what it
must add anyway:

    L2-SP:  (t_l2sp  - t_plain) / t_plain
    DELTA:  (t_delta - t_plain - t_source_inference) / t_plain

Writes bench/out/transfer.json.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import add_json_arg, row, write_rows  # noqa: E402
import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from gluon_transfer.engine.tasks import Transfer  # noqa: E402
from gluon_transfer.methods.base import build_target  # noqa: E402
from gluon_transfer.losses import L2, L2SP, DELTA  # noqa: E402
from gluon_transfer.param_groups import plan  # noqa: E402
from gluon_transfer.zoo import get_model  # noqa: E402


def make_reg(name, bs):
    if name == 'plain':
        return L2()
    if name.startswith('l2sp'):
        return L2SP(variant=name.split('-')[1])
    return DELTA(batch_size=bs, channel_weights='uniform')


def time_config(name, model, bs, size, steps, warmup, source):
    ctx = [mx.cpu()]
    net = build_target(model, 100, ctx, source, mx.init.Xavier())
    reg = make_reg(name, bs)
    reg.bind(plan(net, rates=reg.param_rates))
    weights = {k: p.data() for k, p in source._collect_params_with_prefix().items()}
    task = Transfer([reg], source=source if reg.needs_features else None, source_weights=weights)
    task.setup(net, ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.001, 'momentum': 0.9, 'wd': 0.0})
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.randn(bs, 3, size, size))
    y = mx.nd.array(rng.randint(0, 100, bs))
    times = []
    for i in range(warmup + steps):
        t0 = time.time()
        with autograd.record():
            total, _, _ = task.loss(net, x, y, y)
        total.backward()
        trainer.step(bs)
        mx.nd.waitall()
        if i >= warmup:
            times.append(time.time() - t0)
    src_times = []
    if task._source is not None:
        for i in range(warmup + steps):
            t0 = time.time()
            with autograd.pause():
                outs = task._source(x)
            mx.nd.waitall()
            del outs
            if i >= warmup:
                src_times.append(time.time() - t0)
    return float(np.median(times)), (float(np.median(src_times)) if src_times else None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='resnet50_v1b')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='batch 4 at 112 px')
    p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'out', 'transfer.json'))
    add_json_arg(p)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.size = 4, 112
    mx.random.seed(0)
    source = get_model(args.model, classes=1000)
    source.initialize(mx.init.Xavier())
    source(mx.nd.zeros((1, 3, args.size, args.size)))
    results = {}
    # The first configuration of a process pays one-off costs (oneDNN primitives, memory
    # pools): a throw-away warm-up run, then plain is measured first and last (mean used).
    time_config('plain', args.model, args.batch_size, args.size, 1, 1, source)
    plains = []
    for name in ('plain', 'l2sp-official', 'l2sp-all', 'delta', 'plain'):
        t, ts = time_config(name, args.model, args.batch_size, args.size, args.steps, args.warmup, source)
        if name == 'plain':
            plains.append(t)
            t = float(np.mean(plains))
        results[name] = {'step_s': t, 'images_per_s': args.batch_size / t, 'source_inference_s': ts}
        print('%-14s %7.3f s/step  %7.2f img/s%s' % (name, plains[-1] if name == 'plain' else t,
                                                    args.batch_size / (plains[-1] if name == 'plain' else t),
                                                    '' if ts is None else '  (source inference %.3f s)' % ts),
              flush=True)
    results['plain']['runs_s'] = plains
    plain = results['plain']['step_s']
    for name in ('l2sp-official', 'l2sp-all'):
        results[name]['overhead'] = (results[name]['step_s'] - plain) / plain
    d = results['delta']
    d['overhead_beyond_source'] = (d['step_s'] - plain - d['source_inference_s']) / plain
    d['overhead_total'] = (d['step_s'] - plain) / plain
    print('overhead vs plain: l2sp-official %+.1f%%, l2sp-all %+.1f%%, delta %+.1f%% beyond the source inference '
          '(%+.1f%% in total)' % (100 * results['l2sp-official']['overhead'], 100 * results['l2sp-all']['overhead'],
                                  100 * d['overhead_beyond_source'], 100 * d['overhead_total']))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'model': args.model, 'batch_size': args.batch_size, 'size': args.size, 'steps': args.steps,
                   'results': results}, f, indent=1)
    cfg = '%s, batch %d, %dpx' % (args.model, args.batch_size, args.size)
    rows = [row('transfer', '%s step' % k, v['images_per_s'], 'img/s', cfg if k == 'plain' else '')
            for k, v in results.items()]
    rows += [row('transfer', 'l2sp-official overhead', 100 * results['l2sp-official']['overhead'], '%', 'vs plain step'),
             row('transfer', 'l2sp-all overhead', 100 * results['l2sp-all']['overhead'], '%', 'vs plain step'),
             row('transfer', 'delta overhead', 100 * d['overhead_beyond_source'], '%',
                 'beyond the source forward (%+.1f %% in total)' % (100 * d['overhead_total']))]
    write_rows(args.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
