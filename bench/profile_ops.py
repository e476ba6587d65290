#!/usr/bin/env python
"""Where a training (or inference) step's time goes, per operator, from MXNet's profiler.

    python bench/profile_ops.py --model aff32 [--fusion aff] [--mode imperative] [--batch 32] [--steps 3]
    python bench/profile_ops.py --model cifar_resnet56_v1 --mode imperative --batch 32

Runs ``--warmup`` untimed steps, then ``--steps`` steps under ``mx.profiler`` (aggregate
statistics, every operator; for hybridized graphs bulk execution is switched off with
``MXNET_EXEC_BULK_EXEC_TRAIN=0``/``..._INFERENCE=0`` so that each operator is timed on its
own), and prints the operators' total ms per step, grouped into categories (convolution,
BatchNorm, elementwise, reorders/copies, the fused AFF kernels, pooling/reductions, optimizer
update, other) and, with ``--top N``, the N most expensive operators. It also prints the wall
time per step measured around the profiled steps and the part of it the operators do not
cover (Python, the engine's scheduling, waiting). ``--json PATH`` writes the categories and
operators. The profiler itself adds overhead per operator: compare profiles with each other,
not with ``bench_aff_ratio.py``'s rates.

``--torch-python PATH`` (or the variable ``GLUON_TRANSFER_TORCH_PYTHON``; a separate
environment with PyTorch, never this project's) also profiles the same network, batch and step
in PyTorch (``bench/torch_side.py --profile``: NCHW float32, the operators' self CPU time, the
same thread count) and prints the two frameworks' categories side by side; for the networks
``torch_side.py`` defines (``cifar_resnet<6n+2>_v1``, ``resnet50_v1b``).

``--model``: ``aff32`` (AFF-ResNet-32, CIFAR-100 config: blocks 5, channel-times 4, 32 px),
``aff50`` (AFF-ResNet-50, 224 px), ``block`` (one AFF fusion block on a (N, 64, 32, 32) pair,
forward + backward, no update), or any model name of ``gluon_transfer.get_model`` /
GluonCV's ``get_model`` (e.g. ``cifar_resnet56_v1``, 32 px, 10 classes).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# (category, predicate on the operator name) in the order they are tried
CATEGORIES = [
    ('fused AFF kernels', lambda n: 'gt_aff_fuse' in n or 'gt_global_mean' in n),
    ('optimizer update', lambda n: 'sgd' in n.lower() or 'update' in n.lower()),
    ('convolution', lambda n: 'Convolution' in n or 'FullyConnected' in n),
    ('BatchNorm', lambda n: 'BatchNorm' in n),
    ('pooling / reductions', lambda n: 'Pooling' in n or n.lstrip('_').replace('backward_', '') in ('mean', 'sum')),
    ('reorders / copies', lambda n: n in ('Cast', '_backward_Cast', 'amp_cast', '_backward_amp_cast') or any(
        k in n.lower() for k in ('reorder', 'copy', 'reshape', 'flatten', 'transpose', 'expand_dims', 'broadcast_like'))),
    ('loss / softmax', lambda n: any(k in n.lower() for k in ('softmax', 'pick'))),
    ('activation / elementwise', lambda n: any(k in n for k in ('Activation', 'relu', 'sigmoid', 'elemwise', 'add_n',
                                                                 'broadcast_', '_plus', '_minus', '_mul', '_div',
                                                                 'ElementWise', 'scalar', 'negative', 'square'))),
    ('engine bookkeeping', lambda n: n in ('DeleteVariable', 'SetValueOp', 'WaitForVar', 'CopyCPU2CPU')),
]


def category(name):
    for cat, pred in CATEGORIES:
        if pred(name):
            return cat
    return 'other'


def build(a):
    """(callable running one step, description) for the options."""
    import mxnet as mx
    from mxnet import autograd
    import gluon_transfer as gt
    from bench.common import infer_fn, train_step_fn
    mx.random.seed(0)
    if a.model == 'block':
        from gluon_transfer.nn.fusion import create_fusion
        blk = create_fusion(a.fusion, 64)
        blk.initialize()
        if a.mode == 'hybrid':
            blk.hybridize(static_alloc=True, static_shape=True)
        x = mx.nd.random.normal(shape=(a.batch, 64, 32, 32))
        y = mx.nd.random.normal(shape=(a.batch, 64, 32, 32))
        x.attach_grad()
        y.attach_grad()

        def step():
            with autograd.record():
                out = blk(x, y)
            out.backward()
            mx.nd.waitall()
        return step, 'one %s fusion block on (%d, 64, 32, 32), forward + backward' % (a.fusion, a.batch)
    if a.model == 'aff32':
        net, size, classes = gt.get_model('cifar_aff_resnet', blocks=5, channel_times=4, fusion=a.fusion,
                                          classes=100), 32, 100
    elif a.model == 'aff50':
        net, size, classes = gt.get_model('aff_resnet', num_layers=50, fusion=a.fusion), 224, 1000
    else:
        try:
            net = gt.get_model(a.model)
        except Exception:
            from gluoncv.model_zoo import get_model
            net = get_model(a.model)
        size, classes = (32, 10) if 'cifar' in a.model or 'wrn' in a.model else (224, 1000)
    net.initialize(mx.init.Xavier())
    if a.mode == 'hybrid':
        net.hybridize(static_alloc=True, static_shape=True)
    fn = train_step_fn(net, a.batch, size, classes) if a.what == 'train' else infer_fn(net, a.batch, size)
    fusion = ' (fusion %s)' % a.fusion if a.model in ('aff32', 'aff50') else ''
    return fn, '%s%s %s, %s, batch %d' % (a.model, fusion, a.what, a.mode, a.batch)


def profile(a):
    import mxnet as mx
    step, desc = build(a)
    for _ in range(a.warmup):
        step()
    mx.nd.waitall()
    mx.profiler.set_config(profile_all=True, aggregate_stats=True, continuous_dump=False,
                           filename=os.path.join(a.tmpdir, 'profile_%d.json' % os.getpid()))
    mx.profiler.set_state('run')
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    mx.nd.waitall()
    wall = (time.perf_counter() - t) / a.steps * 1e3
    mx.profiler.set_state('stop')
    stats = json.loads(mx.profiler.dumps(format='json'))
    ops = {}
    for domain, entries in stats.get('Time', {}).items():
        if not isinstance(entries, dict):
            continue
        for name, e in entries.items():
            if domain.startswith(('operator', 'Operator', 'MXNET_C_API')) or domain == 'operator':
                if domain.startswith('MXNET_C_API'):
                    continue
                tot = e.get('Total', e.get('total', 0.0))
                cnt = e.get('Count', e.get('count', 0))
                o = ops.setdefault(name, [0.0, 0])
                o[0] += tot / a.steps
                o[1] += cnt / a.steps
    cats = {}
    for name, (ms, cnt) in ops.items():
        c = cats.setdefault(category(name), [0.0, 0])
        c[0] += ms
        c[1] += cnt
    return desc, wall, ops, cats


def torch_profile(a, torch_python):
    """PyTorch's profile of the same step (torch_side.py --profile), parsed; raises SystemExit on failure."""
    import subprocess
    from bench.bench_torch import command
    env = dict(os.environ)
    if os.environ.get('OMP_NUM_THREADS'):
        env['BENCH_THREADS'] = os.environ['OMP_NUM_THREADS']
    cmd = command('pytorch', a.model, a.what, 'nchw', torch_python, a.batch, a.steps, a.warmup) + ['--profile']
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        tail = (res.stderr.strip().splitlines() or ['no output'])[-1]
        raise SystemExit('error: the PyTorch profile failed: %s' % tail)
    return json.loads(res.stdout.strip().splitlines()[-1])


def side_by_side(wall, total, cats, tp):
    """Markdown lines: MXNet's and PyTorch's ms per step by category."""
    t_total = sum(v[0] for v in tp['operators'].values())
    names = sorted(set(cats) | set(tp['categories']), key=lambda c: -(cats.get(c, [0])[0]))
    lines = ['| category | MXNet ms/step | PyTorch ms/step | MXNet - PyTorch |', '|---|---|---|---|']
    for c in names:
        m = cats.get(c, [0.0])[0]
        t = tp['categories'].get(c, [0.0])[0]
        lines.append('| %s | %.1f | %.1f | %+.1f |' % (c, m, t, m - t))
    lines.append('| all operators | %.1f | %.1f | %+.1f |' % (total, t_total, total - t_total))
    lines.append('| not in operators | %.1f | %.1f | %+.1f |' % (wall - total, tp['wall_ms'] - t_total,
                                                                 (wall - total) - (tp['wall_ms'] - t_total)))
    lines.append('| wall | %.1f | %.1f | %+.1f (MXNet / PyTorch time %.2f) |'
                 % (wall, tp['wall_ms'], wall - tp['wall_ms'], wall / tp['wall_ms']))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='aff32')
    p.add_argument('--fusion', default='aff', help='aff, iaff or add (AFF models and --model block)')
    p.add_argument('--mode', default='imperative', choices=('imperative', 'hybrid'))
    p.add_argument('--what', default='train', choices=('train', 'infer'))
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--top', type=int, default=15, help='list the N most expensive operators')
    p.add_argument('--json', default=None, metavar='PATH', help='also write the categories and operators to PATH')
    p.add_argument('--torch-python', default=None, metavar='PATH',
                   help='a separate Python with PyTorch: also profile the same step in PyTorch, side by side '
                        '(default: $GLUON_TRANSFER_TORCH_PYTHON when set)')
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.warmup < 0:
        raise SystemExit('error: --steps and --batch must be >= 1, --warmup >= 0')
    torch_python = None
    if a.torch_python or os.environ.get('GLUON_TRANSFER_TORCH_PYTHON'):
        from bench import torch_side
        from bench.bench_torch import find_torch_python
        if not torch_side.knows(a.model):
            raise SystemExit('error: --torch-python profiles %s, not %r' % (torch_side.KNOWN, a.model))
        torch_python, why = find_torch_python(a.torch_python)
        if torch_python is None:
            raise SystemExit('error: ' + why)
    if a.mode == 'hybrid':
        os.environ.setdefault('MXNET_EXEC_BULK_EXEC_TRAIN', '0')
        os.environ.setdefault('MXNET_EXEC_BULK_EXEC_INFERENCE', '0')
    import tempfile
    import warnings
    warnings.simplefilter('ignore')
    from bench.common import cpu_name, thread_settings
    with tempfile.TemporaryDirectory() as tmp:
        a.tmpdir = tmp
        desc, wall, ops, cats = profile(a)
    total = sum(v[0] for v in ops.values())
    print('%s; %s on %s; %d profiled steps' % (desc, thread_settings(), cpu_name(), a.steps))
    print('wall %.1f ms/step; operators %.1f ms/step; not in operators %.1f ms (%.0f %%)'
          % (wall, total, wall - total, 100.0 * (wall - total) / wall))
    print()
    print('| category | ms/step | share of operator time | calls/step |')
    print('|---|---|---|---|')
    for c, (ms, cnt) in sorted(cats.items(), key=lambda kv: -kv[1][0]):
        print('| %s | %.1f | %.1f %% | %d |' % (c, ms, 100.0 * ms / total if total else 0.0, round(cnt)))
    if a.top:
        print()
        print('| operator | category | ms/step | calls/step |')
        print('|---|---|---|---|')
        for name, (ms, cnt) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:a.top]:
            print('| %s | %s | %.1f | %d |' % (name, category(name), ms, round(cnt)))
    tp = None
    if torch_python:
        tp = torch_profile(a, torch_python)
        print()
        print('Side by side with PyTorch %s (NCHW float32, %d thread(s), self CPU time of its operators):'
              % (tp['version'], tp['threads']))
        print()
        print('\n'.join(side_by_side(wall, total, cats, tp)))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'description': desc, 'wall_ms': wall, 'operators': ops, 'categories': cats,
                       'threads': thread_settings(), 'cpu': cpu_name(), 'pytorch': tp}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
