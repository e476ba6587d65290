#!/usr/bin/env python
"""MXNet (this project's stack) against PyTorch on the same CPU, side by side in one run.

    python bench/bench_torch.py --torch-python /path/to/torch-venv/bin/python [--quick] [--json PATH]

PyTorch never goes into the project's .venv (with torch >= 2 importable, ``import gluoncv``
raises); it runs from a separate environment, given by ``--torch-python`` or the variable
``GLUON_TRANSFER_TORCH_PYTHON``. Make one with, for example::

    python3.11 -m venv ~/torch-venv && ~/torch-venv/bin/pip install torch

Without it the section says so and is reported as skipped (exit 0).

Every configuration runs in its own fresh process (``bench/torch_side.py`` for PyTorch, this
script's ``--worker`` mode for MXNet), and the two frameworks alternate configuration by
configuration for ``--rounds`` rounds, so both see the same machine state; each value is
the median over the rounds of each process's median step rate. Configurations:

* ``cifar_resnet56_v1`` at 32 px, batch 32 and ``resnet50_v1b`` at 224 px, batch 16;
* training step (forward, cross-entropy, backward, SGD momentum 0.9 / wd 1e-4) and inference;
* MXNet: imperative and hybridized (``static_alloc``/``static_shape``), the faster one of each
  counts; PyTorch: NCHW and channels_last, float32, and bfloat16 autocast where asked
  (``--bf16``; MXNet's bfloat16 AMP is measured by the ``precision`` section).

Rows: images/s of each framework and configuration, and the ratio MXNet / PyTorch (NCHW
float32), the number the project's speed goals are stated in (training: >= 0.8, marked met or
missed in the row's note).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from bench.common import add_json_arg, alternating_rounds, row, write_rows  # noqa: E402

ENV_VAR = 'GLUON_TRANSFER_TORCH_PYTHON'
# the speed goal: MXNet training at least this fraction of PyTorch's (NCHW float32) images/s
TRAIN_GOAL = 0.8
NETWORKS = {'cifar_resnet56_v1': (32, 32, 10), 'resnet50_v1b': (224, 16, 1000)}   # size, batch, classes


def mxnet_worker(a):
    """One MXNet configuration in this process: prints one JSON object like torch_side.py."""
    import warnings
    warnings.simplefilter('ignore')
    import mxnet as mx
    from gluoncv.model_zoo import get_model
    from bench.common import infer_fn, median_rate, train_step_fn
    size, _, classes = NETWORKS[a.model]
    mx.random.seed(0)
    net = get_model(a.model, classes=classes)
    net.initialize(mx.init.Xavier())
    if a.mode == 'hybrid':
        net.hybridize(static_alloc=True, static_shape=True)
    fn = train_step_fn(net, a.batch, size, classes) if a.what == 'train' else infer_fn(net, a.batch, size)
    rate = median_rate(fn, a.batch, a.iters, warmup=a.warmup)
    print(json.dumps({'framework': 'mxnet', 'version': mx.__version__, 'images_per_sec': rate}))
    return 0


def find_torch_python(arg):
    """The separate PyTorch interpreter, or ``(None, why)``."""
    path = arg or os.environ.get(ENV_VAR, '')
    if not path:
        return None, 'no PyTorch environment given (--torch-python or %s)' % ENV_VAR
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None, '%s is not an executable Python' % path
    try:
        res = subprocess.run([path, '-c', 'import torch; print(torch.__version__)'], capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, 'cannot run %s: %s' % (path, err)
    if res.returncode:
        return None, '%s cannot import torch' % path
    return path, res.stdout.strip()


def configurations(models, whats, bf16):
    """(framework, model, what, variant) in the order they run within a round."""
    out = []
    for m in models:
        for w in whats:
            out += [('mxnet', m, w, 'imperative'), ('pytorch', m, w, 'nchw'), ('mxnet', m, w, 'hybrid'),
                    ('pytorch', m, w, 'channels_last')]
            if bf16:
                out.append(('pytorch', m, w, 'nchw-bf16'))
    return out


def command(fw, model, what, variant, torch_python, batch, iters, warmup):
    common = ['--model', model, '--batch', str(batch), '--what', what, '--iters', str(iters), '--warmup', str(warmup)]
    if fw == 'mxnet':
        return [sys.executable, os.path.abspath(__file__), '--worker', '--mode', variant] + common
    layout, _, dt = variant.partition('-')
    return [torch_python, os.path.join(HERE, 'torch_side.py'), '--layout', layout,
            '--dtype', 'bfloat16' if dt == 'bf16' else 'float32'] + common


def summarise(samples):
    """``{(fw, model, what, variant): [img/s per round]}`` -> suite rows."""
    rows = []
    med = {k: statistics.median(v) for k, v in samples.items()}
    keys = sorted({(k[1], k[2]) for k in med})
    for model, what in keys:
        mx_best = max((v, k[3]) for k, v in med.items() if k[:3] == ('mxnet', model, what))
        for k, v in sorted(med.items()):
            if k[1:3] == (model, what):
                rows.append(row('torch', '%s %s %s %s img/s' % (k[0], model, what, k[3]), v, 'img/s',
                                'median of %d rounds, each its own process' % len(samples[k])))
        ref = med.get(('pytorch', model, what, 'nchw'))
        if ref:
            ratio = mx_best[0] / ref
            goal = ('goal >= %.2f: %s (%.3f); ' % (TRAIN_GOAL, 'met' if ratio >= TRAIN_GOAL else 'missed', ratio)
                    if what == 'train' else '')
            rows.append(row('torch', 'MXNet/PyTorch %s %s' % (model, what), ratio, 'x',
                            '%sbest MXNet mode (%s) / PyTorch NCHW float32, side by side' % (goal, mx_best[1])))
        cl = med.get(('pytorch', model, what, 'channels_last'))
        if cl:
            rows.append(row('torch', 'MXNet/PyTorch-channels_last %s %s' % (model, what), mx_best[0] / cl, 'x',
                            'best MXNet mode / PyTorch channels_last float32'))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--torch-python', default=None, help='Python of a separate environment with PyTorch '
                   '(default: $%s)' % ENV_VAR)
    p.add_argument('--models', default='cifar_resnet56_v1,resnet50_v1b')
    p.add_argument('--what', default='train,infer')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--bf16', action='store_true', help='also PyTorch bfloat16 autocast')
    p.add_argument('--quick', action='store_true', help='cifar_resnet56_v1 only, 2 rounds of 5 steps')
    p.add_argument('--timeout', type=int, default=900, help='seconds per configuration process')
    p.add_argument('--batch', type=int, default=None, help='override every network\'s batch size')
    # worker mode (one MXNet configuration; used by this script itself)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--mode', default='hybrid', help=argparse.SUPPRESS)
    p.add_argument('--model', default='cifar_resnet56_v1', help=argparse.SUPPRESS)
    add_json_arg(p)
    a = p.parse_args(argv)
    if a.worker:
        a.batch = a.batch or NETWORKS[a.model][1]
        return mxnet_worker(a)
    if a.quick:
        a.models, a.rounds, a.iters, a.warmup = 'cifar_resnet56_v1', 2, 5, 2
    models = [m for m in a.models.split(',') if m]
    unknown = [m for m in models if m not in NETWORKS]
    if unknown:
        raise SystemExit('error: unknown --models %s; valid: %s' % (', '.join(unknown), ', '.join(NETWORKS)))
    torch_python, info = find_torch_python(a.torch_python)
    if torch_python is None:
        print('PyTorch side by side: skipped, %s. PyTorch must live in its own environment, never in the '
              "project's .venv." % info)
        if a.json:
            with open(a.json, 'w') as f:
                json.dump({'skipped': info}, f)
        return 0
    print('PyTorch %s from %s; MXNet from %s' % (info, torch_python, sys.executable))

    def command_of(cfg):
        fw, model, what, variant = cfg
        return command(fw, model, what, variant, torch_python, a.batch or NETWORKS[model][1], a.iters, a.warmup)
    samples = alternating_rounds(configurations(models, a.what.split(','), a.bf16), a.rounds, command_of,
                                 a.timeout, cwd=ROOT, echo=lambda s: print(s + ' img/s', flush=True))
    rows = summarise(samples)
    print()
    print('| measurement | value | unit |')
    print('|---|---|---|')
    for r_ in rows:
        print('| %s | %.3g | %s |' % (r_['name'], r_['value'], r_['unit']))
    write_rows(a.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
