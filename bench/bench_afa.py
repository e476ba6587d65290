#!/usr/bin/env python
"""Training-step throughput of AFA's regularizers against a plain feature distance.

    python bench/bench_afa.py [--quick] [--model resnet50_v1b] [--out bench/out/afa.json]

One optimizer step (forward, backward, SGD-momentum update of the target and, for AFA, the
attention modules) on a CPU context, float32, hybridized tap networks, for:

* ``ce``       -- plain fine-tuning (cross-entropy only; no source);
* ``source``   -- the frozen source's inference alone (the tapped forward, no gradient);
* ``fea_map``  -- CE + ``alpha * 0.5 ||t - s||^2`` at the four taps (the DELTA-like baseline:
  source inference + a parameter-free distance);
* ``afa-ast`` / ``afa-act`` -- CE + the AFA terms (attention modules on the source maps).

AFA's own cost is the step time beyond the ``fea_map`` step, which already pays for the
source's inference: ``overhead = t_afa / t_fea_map - 1`` (target < 10 %). Also reported:
``beyond_ce_and_source = (t_afa - t_ce - t_source) / t_ce``, and the regularizer terms
alone (forward + backward on fixed random maps of the taps' shapes; AFA includes its
attention modules), which isolates the part that differs from ``fea_map``. Default: ResNet-50 at batch 16,
224 px; ``--quick``: batch 4, 112 px. Each figure is the best of ``--iters`` timed steps
after warm-up, the configurations interleaved
(the CPU may be shared).
"""
import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import numpy as np
    import mxnet as mx
    from mxnet import autograd, gluon
    from gluon_transfer import losses  # noqa: F401  (registers the regularizers)
    from gluon_transfer.methods import afa
    from gluon_transfer.engine.tasks import Classify, Transfer
    from gluon_transfer.methods.base import build_target
    from gluon_transfer.losses.transfer_common import bottleneck_taps
    from gluon_transfer.registry import REGULARIZERS
    from gluon_transfer.zoo import get_model


def make_reg(name, bs):
    """A registered regularizer bound to no parameter rows (the feature terms only, no
    classifier term), so the configurations differ by their feature terms alone."""
    cls = REGULARIZERS.get(name)
    reg = cls(batch_size=bs) if name == 'fea_map' else cls()
    if name == 'fea_map':
        reg.alpha = 0.1 / bs          # per-sample scale of AFA's (the bench measures time, not values)
    reg.bind([])
    return reg


def best_times(fns, warmup, iters):
    """Best time of each function over ``iters`` rounds; the rounds interleave the
    configurations so that drifting load on a shared CPU hits them all alike."""
    times = {k: [] for k in fns}
    for r in range(warmup + iters):
        for k, fn in fns.items():
            mx.nd.waitall()
            t0 = time.time()
            fn()
            mx.nd.waitall()
            if r >= warmup:
                times[k].append(time.time() - t0)
    return {k: min(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet50_v1b')
    p.add_argument('--quick', action='store_true', help='batch 4 at 112 px')
    p.add_argument('--batch-size', type=int)
    p.add_argument('--input-size', type=int)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--out')
    args = p.parse_args(argv)
    bs = args.batch_size or (4 if args.quick else 16)
    size = args.input_size or (112 if args.quick else 224)
    ctx = [mx.cpu()]
    mx.random.seed(0)
    source = get_model(args.model, classes=1000)
    source.initialize(mx.init.Xavier(), ctx=ctx)
    source(mx.nd.zeros((1, 3, 32, 32)))          # shapes known before copying
    net = build_target(args.model, 100, ctx, source)
    x = mx.nd.random.uniform(-1, 1, shape=(bs, 3, size, size))
    y = mx.nd.array(np.arange(bs) % 100)

    def step_fn(task):
        task.setup(net, ctx)
        params = gluon.ParameterDict()
        params.update(net.collect_params())
        for b in task.blocks().values():
            params.update(b.collect_params())
        trainer = gluon.Trainer(params, 'sgd', {'learning_rate': 1e-5, 'momentum': 0.9, 'wd': 0.0})

        def step():
            with autograd.record():
                total, _, _ = task.loss(net, x, y, y)
            total.backward()
            trainer.step(bs)
        return step

    net.hybridize(static_alloc=True, static_shape=True)
    src_taps = bottleneck_taps(source, afa.default_taps(source), with_logits=False)
    src_taps.hybridize(static_alloc=True, static_shape=True)

    def infer():
        with autograd.pause():
            src_taps(x)
    fns = {'ce': step_fn(Classify()), 'source': infer}
    for name in ('fea_map', 'afa-ast', 'afa-act'):
        fns[name] = step_fn(Transfer([make_reg(name, bs)], source, crop=size))
    results = best_times(fns, args.warmup, args.iters)

    # The regularizer terms alone (forward + backward on fixed maps of the taps' shapes):
    # the part of the step that differs between fea_map and AFA, without the network's noise.
    shapes = afa.check_taps(source, afa.default_taps(source), size)
    s_maps = [mx.nd.random.normal(shape=(bs,) + sh) for sh in shapes]
    t_maps = [mx.nd.random.normal(shape=(bs,) + sh) for sh in shapes]
    for t in t_maps:
        t.attach_grad()

    def term_fn(name):
        reg = make_reg(name, bs)
        if hasattr(reg, 'set_feature_shapes'):
            reg.set_feature_shapes(shapes)
        reg.setup(net, ctx)

        def run():
            with autograd.record():
                parts = [c for _, c in reg.terms(ctx[0], bs, t_maps, s_maps)]
                total = mx.nd.add_n(*parts) if len(parts) > 1 else parts[0]
            total.backward()
        return run
    terms_only = best_times({k: term_fn(k) for k in ('fea_map', 'afa-ast', 'afa-act')}, args.warmup, 3 * args.iters)
    report = {'model': args.model, 'batch_size': bs, 'input_size': size, 'iters': args.iters,
              'seconds_per_step': results,
              'images_per_sec': {k: bs / v for k, v in results.items()},
              'overhead_vs_fea_map': {k: results[k] / results['fea_map'] - 1 for k in ('afa-ast', 'afa-act')},
              'terms_only_seconds': terms_only,
              'beyond_ce_and_source': {k: (results[k] - results['ce'] - results['source']) / results['ce']
                                       for k in ('fea_map', 'afa-ast', 'afa-act')}}
    print('%s, batch %d, %d px, best of %d steps' % (args.model, bs, size, args.iters))
    print('%-10s %10s %10s' % ('config', 's/step', 'img/s'))
    for k, v in results.items():
        print('%-10s %10.3f %10.2f' % (k, v, bs / v))
    for k, v in report['overhead_vs_fea_map'].items():
        print('%s overhead vs fea_map step: %+.1f %%' % (k, 100 * v))
    for k, v in report['beyond_ce_and_source'].items():
        print('%s beyond CE step + source inference: %+.1f %% of the CE step' % (k, 100 * v))
    for k, v in terms_only.items():
        print('%s terms alone (fwd+bwd): %.1f ms = %.1f %% of the fea_map step' % (k, 1e3 * v, 100 * v / results['fea_map']))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
