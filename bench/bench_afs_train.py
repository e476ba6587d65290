#!/usr/bin/env python
"""AFS gates in training: what the gate costs per step, and its two training-path formulations.

    python bench/bench_afs_train.py [--quick] [--rounds N] [--json PATH]

Sections (CPU, float32, imperative mode -- what ``--mode auto`` picks for the CIFAR ResNets;
every variant of a comparison is warmed up, then timed round-robin, one call of each per
round, so load from other jobs hits all of them alike; values are medians over the rounds,
ratios are of those medians):

- ``ops``: forward+backward ms (batch 48) on the maps of a CIFAR ResNet-20 (16 x 32 x 32,
  32 x 16 x 16, 64 x 8 x 8) of the two operations an AFS gate adds, each in the formulation
  MXNet's stock operators give and in the one the gate uses while recording
  (:func:`gluon_transfer.nn.gates.global_avg_pool`, :func:`~gluon_transfer.nn.gates.scale_channels`):
  global average pooling as ``Pooling`` vs as one matrix product, and the per-sample
  channel scaling ``y * mult[:, :, None, None]`` as ``broadcast_mul`` vs with its hand-written
  backward. Ratio rows: stock / gate (> 1: the gate's formulation is faster).
- ``net``: training steps (forward, backward, SGD-momentum update) of GluonCV's
  ``cifar_resnet20_v1`` and of ``afs_cifar_resnet20_v1`` with every gate on (d = 0.9, all
  channels dynamic), batch 48 at 32 px: images/s and the time ratio AFS / plain.
"""
import argparse
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd
    import gluon_transfer as gt
    from gluon_transfer.nn.gates import global_avg_pool, scale_channels
    from bench.common import add_json_arg, cpu_name, markdown_rows, round_robin, row, train_step_fn, write_rows

SHAPES = [(48, 16, 32, 32), (48, 32, 16, 16), (48, 64, 8, 8)]
WARMUP = 2          # untimed calls of each variant before the timed rounds


def _fwd_bwd(fn, *arrays):
    """A callable running ``fn(*arrays)`` recorded, then its backward with ones; waits."""
    for a in arrays:
        a.attach_grad()

    def call():
        with autograd.record():
            out = fn(*arrays)
        out.backward(mx.nd.ones_like(out))
        for a in arrays:
            a.grad.wait_to_read()
    return call


def ops_rows(rounds):
    rows = []
    for shape in SHAPES:
        n, c, h, w = shape
        x = mx.nd.random.uniform(shape=shape)
        m = mx.nd.random.uniform(shape=(n, c))
        tag = '%dx%dx%d' % (c, h, w)
        res = round_robin({
            'gap_pool': _fwd_bwd(lambda a: mx.nd.Pooling(a, global_pool=True, pool_type='avg',
                                                         kernel=(1, 1)).reshape((0, -1)), x.copy()),
            'gap_gate': _fwd_bwd(lambda a: global_avg_pool(mx.nd, a), x.copy()),
            'scale_bmul': _fwd_bwd(lambda a, b: mx.nd.broadcast_mul(a, b.reshape((0, 0, 1, 1))), x.copy(), m.copy()),
            'scale_gate': _fwd_bwd(lambda a, b: scale_channels(mx.nd, a, b), x.copy(), m.copy()),
        }, WARMUP, rounds)
        for k in ('gap_pool', 'gap_gate', 'scale_bmul', 'scale_gate'):
            rows.append(row('afs-train', 'ops %s %s' % (tag, k), 1000 * res[k], 'ms', 'batch 48, forward+backward'))
        rows.append(row('afs-train', 'ops %s GAP Pooling / matrix product' % tag, res['gap_pool'] / res['gap_gate'],
                        'x', '> 1: the gate\'s training formulation is faster'))
        rows.append(row('afs-train', 'ops %s scaling broadcast_mul / hand backward' % tag,
                        res['scale_bmul'] / res['scale_gate'], 'x', '> 1: the gate\'s training formulation is faster'))
    return rows


def _train_step(model, batch):
    net = gt.get_model(model, classes=10)
    net.initialize(mx.init.Xavier())
    return train_step_fn(net, batch, 32, classes=10)


def net_rows(rounds, batch=48):
    res = round_robin({'plain': _train_step('cifar_resnet20_v1', batch),
                       'afs': _train_step('afs_cifar_resnet20_v1', batch)}, WARMUP, rounds)
    return [row('afs-train', 'net cifar_resnet20_v1 train', batch / res['plain'], 'img/s', 'batch %d, imperative' % batch),
            row('afs-train', 'net afs_cifar_resnet20_v1 train', batch / res['afs'], 'img/s',
                'batch %d, imperative, every gate on, d = 0.9' % batch),
            row('afs-train', 'net AFS / plain step time', res['afs'] / res['plain'], 'x', 'training step, batch %d' % batch)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer rounds (5)')
    p.add_argument('--rounds', type=int, default=None, help='timed rounds per comparison (default 15; quick 5)')
    p.add_argument('--sections', default='ops,net', help='comma-separated: ops, net')
    add_json_arg(p)
    args = p.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    sections = [s for s in args.sections.split(',') if s]
    unknown = set(sections) - {'ops', 'net'}
    if unknown or rounds < 1:
        p.error('unknown section(s) %s' % ', '.join(sorted(unknown)) if unknown else '--rounds must be >= 1')
    rows = []
    if 'ops' in sections:
        rows += ops_rows(rounds)
    if 'net' in sections:
        rows += net_rows(rounds)
    print('AFS gates in training, %s, %d rounds, OMP_NUM_THREADS=%s\n' % (cpu_name(), rounds,
                                                                        os.environ.get('OMP_NUM_THREADS', 'unset')))
    print(markdown_rows(rows))
    write_rows(args.json, rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
