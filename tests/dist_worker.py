"""Worker program for tests/test_distributed.py (started by ``python -m gluon_transfer.launch``).

Trains a tiny BN-free network (conv + dense on 8x8 images) with the Engine on this
worker's shard of generated data (``num_parts = num_workers``, ``part_index = rank``) and
writes, to ``--out``: ``init_rank<r>.npz`` (its weights before training), ``final_rank<r>.npz``
(after) and ``info_rank<r>.json`` (rank, workers, iterations per epoch, LR trace).
Each worker initialises with a different seed, so equal final weights also show that
the kvstore broadcasts rank 0's initial weights. ``--bn`` puts a BatchNorm after the conv
(its running statistics are then in the .npz files too) and ``--val`` evaluates every epoch
on all samples (not sharded), recording each epoch's val numbers in ``info_rank<r>.json``.
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
    import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.checkpoint import CheckpointManager
from gluon_transfer.engine.distributed import create_kvstore
from gluon_transfer.engine.tasks import Classify
from gluon_transfer.engine.trainer import Engine, FitConfig

# The problem, shared with the test's single-process reference.
N_SAMPLES, BATCH, CLASSES = 17, 4, 3
FIT = dict(optimizer='sgd', lr=0.2, momentum=0.9, wd=1e-3, lr_mode='step', lr_decay=0.1,
           lr_decay_epochs=(1,), mode='hybrid', log_interval=0, seed=5)


def make_net(seed, deferred=False, bn=False):
    """Initialised by a forward pass of zeros, or left with deferred shapes (``deferred``:
    the Engine's first training forward initialises it). ``bn``: conv -> BatchNorm -> relu."""
    net = gluon.nn.HybridSequential()
    if bn:
        net.add(gluon.nn.Conv2D(4, 3, padding=1, use_bias=False), gluon.nn.BatchNorm(momentum=0.8),
                gluon.nn.Activation('relu'))
    else:
        net.add(gluon.nn.Conv2D(4, 3, padding=1, activation='relu'))
    net.add(gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(CLASSES))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    if not deferred:
        net(mx.nd.zeros((1, 3, 8, 8)))
    return net


def make_data():
    rng = np.random.RandomState(1)
    return rng.randint(0, 256, (N_SAMPLES, 3, 8, 8)).astype(np.uint8), rng.randint(0, CLASSES, N_SAMPLES)


def make_shard(num_parts, part_index):
    imgs, labels = make_data()
    return ArrayIter(imgs, labels, BATCH, mean=(120,) * 3, std=(60,) * 3, shuffle=True, last_batch='rollover',
                     num_parts=num_parts, part_index=part_index, seed=3)


def make_val():
    imgs, labels = make_data()
    return ArrayIter(imgs, labels, BATCH, mean=(120,) * 3, std=(60,) * 3, shuffle=False, last_batch='pad')


def params_of(net):
    return {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}


class SlowClassify(Classify):
    """Classify that sleeps per step and prints ``step K`` (keeps the job running for the kill test)."""
    def __init__(self, delay):
        self.delay = delay
        self.calls = 0

    def loss(self, net, data, target, label):
        time.sleep(self.delay)
        self.calls += 1
        print('step %d' % self.calls, flush=True)
        return super().loss(net, data, target, label)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--kvstore', default='dist_sync')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--max-iters', type=int, default=0)
    p.add_argument('--save-dir', default=None)
    p.add_argument('--resume', default=None)
    p.add_argument('--sleep', type=float, default=0.0)
    p.add_argument('--deferred', action='store_true', help='deferred parameter shapes (no init files)')
    p.add_argument('--bn', action='store_true', help='a BatchNorm after the conv')
    p.add_argument('--val', action='store_true', help='evaluate on all samples every epoch')
    a = p.parse_args()
    kv, rank, nw = create_kvstore(a.kvstore)
    train = make_shard(nw, rank)
    net = make_net(seed=100 + rank, deferred=a.deferred, bn=a.bn)
    os.makedirs(a.out, exist_ok=True)
    if not a.deferred:
        np.savez(os.path.join(a.out, 'init_rank%d.npz' % rank), **params_of(net))
    cfg = FitConfig(num_epochs=a.epochs, max_iters=a.max_iters, kvstore=kv, **FIT)
    ckpt = CheckpointManager(a.save_dir, 'tiny') if a.save_dir else None
    metrics = os.path.join(a.save_dir, 'metrics.jsonl') if a.save_dir else None
    task = SlowClassify(a.sleep) if a.sleep else Classify()
    engine = Engine(net, task, [mx.cpu()], cfg, train, make_val() if a.val else None, num_classes=CLASSES,
                    checkpoint=ckpt, metrics_path=metrics, run_info={'model': 'tiny'})
    print('ready rank %d of %d, %d iterations per epoch' % (rank, nw, engine.iters_per_epoch), flush=True)
    engine.fit(resume=a.resume)
    mx.nd.waitall()
    np.savez(os.path.join(a.out, 'final_rank%d.npz' % rank), **params_of(net))
    with open(os.path.join(a.out, 'info_rank%d.json' % rank), 'w') as f:
        json.dump({'rank': rank, 'num_workers': nw, 'iters_per_epoch': engine.iters_per_epoch,
                   'shard_batches': len(train), 'lr_trace': engine.lr_trace,
                   'global_step': engine.global_step,
                   'val': [{k: h[k] for k in h if k.startswith('val_')} for h in engine.history]}, f)
    print('done rank %d' % rank, flush=True)


if __name__ == '__main__':
    main()
