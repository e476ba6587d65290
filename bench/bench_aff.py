#!/usr/bin/env python
"""AFF speed, side by side in one run: ours vs the reference-style formulation vs plain adds.

    python bench/bench_aff.py [--quick] [--sections block,cifar,...] [--rounds N] [--json PATH]

Prints a Markdown table; ``--json PATH`` also writes the rows (a list of
``{"section", "name", "value", "unit", "note"}``; ``run()`` returns the same list). The
benchmark suite calls ``python bench/bench_aff.py --quick --json PATH``.

Sections (CPU context, float32; every variant of a comparison is built first, warmed up, then
timed round-robin -- one call of each per round -- so load from other jobs hits all of them
alike; values are medians over the rounds and ratios are of those medians):

- ``block``: one fusion block on (64, 64, 32, 32): forward (inference) and forward+backward
  (training mode) ms for ``add``, ours (fused kernel, gluon_transfer/nn/fused.py), ours as
  operator composition, and the reference-style block (bench/aff_reference.py).
- ``cifar``: AFF-ResNet-32 (CIFAR-100: blocks 5, channel-times 4), batch 64: training step
  (forward, backward, SGD-momentum update) and inference images/s of the same four variants,
  hybridized (``static_alloc, static_shape``) and imperative.
- ``imagenet``: AFF-ResNet-50 vs ResNet-50-D (``aff_resnet50`` with fusion add) vs the
  reference-style AFF-ResNet-50, training images/s, batch 16 at 224 (quick: batch 4), hybridized;
  and AFF-ResNet-50 imperative.
- ``mode``: training images/s of small CIFAR nets (and AFF-ResNet-32) imperative vs
  ``hybridize(static_alloc, static_shape)`` vs plain ``hybridize()`` -- the measurement behind
  ``--mode auto``.
- ``deploy``: inference images/s of cifar_resnet56_v1 and AFF-ResNet-32 (batch 64): imperative,
  hybridized, and the oneDNN-fused graph (``optimize_for(backend='MKLDNN')``, what
  tools/export.py writes by default).
- ``groups`` (only when named): AFF-ResNet-32 training in two smaller round-robin groups that
  mix modes (ours + reference-style, ours + plain add), see bench/README.md.
"""
import argparse
import contextlib
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import numpy as np
    import mxnet as mx
    from mxnet import autograd, gluon
    import gluon_transfer as gt
    from gluon_transfer.nn import fused
    from gluon_transfer.nn.fusion import AFF, DirectAdd
    import aff_reference  # noqa: F401  (registers fusions aff_ref / iaff_ref)
    from aff_reference import RefAFF
    from bench.common import add_json_arg, round_robin, row, write_rows

SECTIONS = ('block', 'cifar', 'imagenet', 'mode', 'deploy', 'groups')
DEFAULT_SECTIONS = SECTIONS[:-1]  # 'groups' only on request
# variant -> (fusion name, use the fused kernel)
VARIANTS = {'ours': ('aff', True), 'ours-composition': ('aff', False), 'reference-style': ('aff_ref', False),
            'plain add': ('add', False)}


def _ctx_for(kernel):
    return contextlib.nullcontext() if kernel else fused.disabled()


def train_step_fn(net, x, y, kernel=True):
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.01, 'momentum': 0.9, 'wd': 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step():
        with _ctx_for(kernel):
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            mx.nd.waitall()
    return step


def infer_fn(net, x, kernel=True):
    def call():
        with _ctx_for(kernel):
            net(x).wait_to_read()
    return call


def _data(batch, size, classes, seed=0):
    rng = np.random.RandomState(seed)
    return (mx.nd.array(rng.uniform(-1, 1, size=(batch, 3, size, size))),
            mx.nd.array(rng.randint(0, classes, size=batch)))


def _net(name, mode, **kw):
    net = gt.get_model(name, **kw)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    if mode == 'hybrid':
        net.hybridize(static_alloc=True, static_shape=True)
    elif mode == 'hybrid-dynamic':
        net.hybridize()
    return net


class Rows(list):
    def add(self, section, name, value, unit, note=''):
        self.append(row(section, name, value, unit, note))
        print('  %-10s %-62s %10.3f %s' % (section, name, value, unit), file=sys.stderr, flush=True)


def bench_block(rows, warmup, rounds):
    shape = (64, 64, 32, 32)
    rng = np.random.RandomState(0)
    x, y = mx.nd.array(rng.randn(*shape)), mx.nd.array(rng.randn(*shape))
    x.attach_grad()
    y.attach_grad()
    blocks = {'plain add': (DirectAdd(), False), 'ours': (AFF(64), True), 'ours-composition': (AFF(64), False),
              'reference-style': (RefAFF(64), False)}
    for hybrid in (True, False):
        fwd, fwdbwd = {}, {}
        for name, (blk, kernel) in blocks.items():
            blk = type(blk)(64) if name != 'plain add' else DirectAdd()
            blk.initialize()
            if hybrid:
                blk.hybridize(static_alloc=True, static_shape=True)

            def f(blk=blk, kernel=kernel):
                with _ctx_for(kernel):
                    blk(x, y).wait_to_read()

            def fb(blk=blk, kernel=kernel):
                with _ctx_for(kernel):
                    with autograd.record():
                        out = blk(x, y)
                    out.backward()
                    mx.nd.waitall()
            fwd[name], fwdbwd[name] = f, fb
        mode = 'hybrid' if hybrid else 'imperative'
        for what, fns in (('forward', fwd), ('forward+backward', fwdbwd)):
            t = round_robin(fns, warmup + 1, rounds + 2)
            for name in fns:
                rows.add('block', 'AFF block %s, %s, %s, %s' % (shape, what, mode, name) if name != 'plain add' else
                         'plain add %s, %s, %s' % (shape, what, mode), t[name] * 1e3, 'ms', name)
            rows.add('block', 'ratio AFF/add time, ours, %s, %s' % (what, mode), t['ours'] / t['plain add'], 'x',
                     'the <= 1.5 goal is per network, not per block')
            rows.add('block', 'ratio AFF/add time, reference-style, %s, %s' % (what, mode),
                     t['reference-style'] / t['plain add'], 'x')
            rows.add('block', 'speed-up ours vs reference-style, %s, %s' % (what, mode),
                     t['reference-style'] / t['ours'], 'x', 'goal >= 1.5')


def bench_cifar(rows, warmup, rounds, quick):
    batch = 64
    x, y = _data(batch, 32, 100)
    best = {}
    for mode in ('hybrid', 'imperative'):
        variants = VARIANTS if not quick else {k: v for k, v in VARIANTS.items() if k != 'ours-composition'}
        nets = {name: (_net('cifar_aff_resnet', mode, blocks=5, channel_times=4, fusion=fu, classes=100), kernel)
                for name, (fu, kernel) in variants.items()}
        for what in ('train', 'inference'):
            fns = {name: (train_step_fn(net, x, y, kernel) if what == 'train' else infer_fn(net, x, kernel))
                   for name, (net, kernel) in nets.items()}
            t = round_robin(fns, warmup, rounds)
            for name in fns:
                rate = batch / t[name]
                best[(what, name)] = max(best.get((what, name), 0), rate)
                rows.add('cifar', 'AFF-ResNet-32 %s, %s, %s' % (what, name, mode), rate, 'img/s',
                         'CIFAR-100 config (blocks 5, channel-times 4), batch 64')
            rows.add('cifar', 'ratio ours/reference-style img/s, %s, %s' % (what, mode),
                     t['reference-style'] / t['ours'], 'x', 'goal >= 1.5')
            rows.add('cifar', 'ratio AFF/add time, ours, %s, %s' % (what, mode), t['ours'] / t['plain add'], 'x',
                     'goal <= 1.5')
            rows.add('cifar', 'ratio AFF/add time, reference-style, %s, %s' % (what, mode),
                     t['reference-style'] / t['plain add'], 'x')
        del nets, fns
    for what in ('train', 'inference'):
        rows.add('cifar', 'ratio ours best mode / reference-style best mode, %s' % what,
                 best[(what, 'ours')] / best[(what, 'reference-style')], 'x', 'each in its faster mode')


def bench_groups(rows, warmup, rounds):
    """AFF-ResNet-32 training in two small round-robin groups mixing modes (ours + reference-style,
    ours + plain add; each hybrid and imperative): the 'cifar' section's all-hybrid group slows ours."""
    x, y = _data(64, 32, 100)
    for group in (('aff', 'aff_ref'), ('aff', 'add')):
        fns = {}
        for fu in group:
            for mode in ('imperative', 'hybrid'):
                net = _net('cifar_aff_resnet', mode, blocks=5, channel_times=4, fusion=fu, classes=100)
                fns[(fu, mode)] = train_step_fn(net, x, y)
        t = round_robin(fns, warmup, rounds)
        label = {'aff': 'ours', 'aff_ref': 'reference-style', 'add': 'plain add'}
        for (fu, mode), v in t.items():
            rows.add('groups', 'AFF-ResNet-32 train, %s, %s (group %s)' % (label[fu], mode, '+'.join(group)),
                     64 / v, 'img/s')
        for mode in ('hybrid', 'imperative'):
            if group[1] == 'aff_ref':
                rows.add('groups', 'ratio ours/reference-style img/s, train, %s' % mode,
                         t[('aff_ref', mode)] / t[('aff', mode)], 'x', 'goal >= 1.5')
            else:
                rows.add('groups', 'ratio AFF/add time, ours, train, %s' % mode, t[('aff', mode)] / t[('add', mode)],
                         'x', 'goal <= 1.5')


def bench_imagenet(rows, warmup, rounds, quick):
    batch = 4 if quick else 16
    x, y = _data(batch, 224, 1000)
    nets = {'AFF-ResNet-50': _net('aff_resnet', 'hybrid', num_layers=50, fusion='aff'),
            'ResNet-50-D (fusion add)': _net('aff_resnet', 'hybrid', num_layers=50, fusion='add'),
            'AFF-ResNet-50 reference-style': _net('aff_resnet', 'hybrid', num_layers=50, fusion='aff_ref'),
            'AFF-ResNet-50 imperative': _net('aff_resnet', 'imperative', num_layers=50, fusion='aff')}
    fns = {name: train_step_fn(net, x, y) for name, net in nets.items()}
    t = round_robin(fns, warmup, rounds)
    for name in fns:
        rows.add('imagenet', '%s train, %s, batch %d, 224' % (name.replace(' imperative', ''),
                                                               'imperative' if 'imperative' in name else 'hybrid',
                                                               batch), batch / t[name], 'img/s')
    rows.add('imagenet', 'ratio AFF-ResNet-50/ResNet-50-D time, train', t['AFF-ResNet-50'] /
             t['ResNet-50-D (fusion add)'], 'x', '')
    rows.add('imagenet', 'ratio ours/reference-style img/s, AFF-ResNet-50 train',
             t['AFF-ResNet-50 reference-style'] / t['AFF-ResNet-50'], 'x')


def bench_mode(rows, warmup, rounds, quick):
    batch = 64
    x, y10 = _data(batch, 32, 10)
    models = [('cifar_resnet20_v1', {}), ('cifar_resnet56_v1', {}), ('wrn16_2', {})]
    if not quick:
        models.append(('cifar_aff_resnet32', {'classes': 10}))
    for name, kw in models:
        fns = {mode: train_step_fn(_net(name, mode, **kw), x, y10)
               for mode in ('imperative', 'hybrid', 'hybrid-dynamic')}
        t = round_robin(fns, warmup, rounds)
        for mode in fns:
            rows.add('mode', '%s train, %s' % (name, {'hybrid': 'hybrid static', 'hybrid-dynamic':
                                                      'hybridize() (no static alloc)'}.get(mode, mode)),
                     batch / t[mode], 'img/s', 'batch 64')
        rows.add('mode', '%s ratio hybrid static / imperative img/s, train' % name, t['imperative'] / t['hybrid'], 'x',
                 '--mode auto picks %s' % gt_mode(name))


def gt_mode(name):
    from gluon_transfer.cli import resolve_mode
    return resolve_mode('auto', name, [mx.cpu()])


def bench_deploy(rows, warmup, rounds):
    batch = 64
    x, _ = _data(batch, 32, 10)
    for name, kw in (('cifar_resnet56_v1', {}), ('cifar_aff_resnet32', {})):
        nets = {mode: _net(name, mode, **kw) for mode in ('imperative', 'hybrid', 'fused')}
        with fused.disabled():
            for net in nets.values():  # finishes deferred initialisation (GluonCV models)
                net(x)
        for key, p in nets['imperative']._collect_params_with_prefix().items():
            for other in ('hybrid', 'fused'):
                nets[other]._collect_params_with_prefix()[key].set_data(p.data())
        with fused.disabled(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            nets['fused'].optimize_for(x, backend='MKLDNN', static_alloc=True, static_shape=True)
        want = nets['imperative'](x).asnumpy()
        diff = float(np.abs(nets['fused'](x).asnumpy() - want).max())
        t = round_robin({mode: infer_fn(net, x) for mode, net in nets.items()}, warmup, rounds)
        for mode in nets:
            label = {'fused': "optimize_for('MKLDNN') (export default)", 'hybrid': 'hybrid static'}.get(mode, mode)
            rows.add('deploy', '%s inference, %s' % (name, label), batch / t[mode], 'img/s',
                     'batch 64' + (', max |diff| vs imperative %.1e' % diff if mode == 'fused' else ''))
        rows.add('deploy', '%s ratio fused/hybrid img/s, inference' % name, t['hybrid'] / t['fused'], 'x')


def run(quick=False, sections=None, rounds=None):
    """Run the chosen sections (default: all); returns the list of row dicts."""
    sections = list(sections or DEFAULT_SECTIONS)
    for s in sections:
        if s not in SECTIONS:
            raise ValueError('unknown section %r; valid: %s' % (s, ', '.join(SECTIONS)))
    warmup = 1
    rounds = rounds or (3 if quick else 5)
    rows = Rows()
    kernel = fused.load_kernel()
    rows.add('setup', 'fused AFF kernel loaded', float(kernel), 'bool',
             'gluon_transfer/nn/fused.py' + ('' if kernel else ' (%s)' % fused._state['error']))
    for s in sections:
        if s == 'block':
            bench_block(rows, warmup, rounds)
        elif s == 'cifar':
            bench_cifar(rows, warmup, rounds, quick)
        elif s == 'imagenet':
            bench_imagenet(rows, warmup, rounds if not quick else 2, quick)
        elif s == 'mode':
            bench_mode(rows, warmup, rounds, quick)
        elif s == 'deploy':
            bench_deploy(rows, warmup, rounds)
        elif s == 'groups':
            bench_groups(rows, warmup, rounds)
    return list(rows)


def markdown(rows):
    lines = ['| section | measurement | value | unit | note |', '|---|---|---|---|---|']
    for r in rows:
        lines.append('| %s | %s | %.3g | %s | %s |' % (r['section'], r['name'], r['value'], r['unit'], r['note']))
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer rounds, smaller ImageNet batch, fewer variants')
    p.add_argument('--sections', default=','.join(DEFAULT_SECTIONS),
                   help='comma-separated subset of %s (default %%(default)s)' % ','.join(SECTIONS))
    p.add_argument('--rounds', type=int, help='timed rounds per variant (default 3 quick, 5 full)')
    add_json_arg(p)
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(',') if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error('unknown section(s) %s; valid: %s' % (', '.join(bad), ', '.join(SECTIONS)))
    rows = run(quick=args.quick, sections=sections, rounds=args.rounds)
    print(markdown(rows))
    write_rows(args.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
