"""The training engine: multi-device equivalence, exact resume, atomic checkpoints,
divergence handling. Tiny nets on generated data."""
import json
import os

import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon

from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.checkpoint import resolve_resume, CheckpointManager
from gluon_transfer.engine.tasks import Classify, Task, cross_entropy
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import CheckpointError, ConfigError, TrainingDiverged
from numpy_ref import log_softmax, mean_ce_grad_logits
from net_helpers import tiny_net


def tiny_data(n=24, bs=8, shuffle=True, seed=0):
    rng = np.random.RandomState(1)
    imgs = rng.randint(0, 256, (n, 3, 8, 8)).astype(np.uint8)
    labels = rng.randint(0, 3, n)
    flip = lambda b, r: b[:, :, :, ::-1] if r.rand() < 0.5 else b  # noqa: E731  (random aug)
    return ArrayIter(imgs, labels, bs, mean=(120, 120, 120), std=(60, 60, 60), shuffle=shuffle,
                     augment=flip, last_batch='rollover', seed=seed)


def params_of(net):
    return {k: v.data(mx.cpu()).asnumpy() for k, v in net._collect_params_with_prefix().items()}


def copy_params(src, dst):
    for (_, a), (_, b) in zip(src.collect_params().items(), dst.collect_params().items()):
        b.set_data(a.data())


def test_one_sgd_step_two_devices_equals_one_device():
    """The engine's step on [cpu(0), cpu(1)] (split_and_load, kvstore 'device') equals the
    step on [cpu(0)] for a BN-free net (BN statistics are per device by design)."""
    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, (8, 3, 8, 8)).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    ref = tiny_net()
    results = []
    for ctx in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        net = tiny_net(seed=9)
        copy_params(ref, net)
        net.collect_params().reset_ctx(ctx)
        data = ArrayIter(imgs, labels, 8, mean=(128,) * 3, std=(64,) * 3, last_batch='rollover')
        cfg = FitConfig(num_epochs=1, lr=0.5, momentum=0.9, wd=1e-3, lr_mode='constant', mode='hybrid',
                        kvstore='device')
        Engine(net, Classify(), ctx, cfg, data, num_classes=3).fit()
        results.append({k: [d.asnumpy() for d in p.list_data()]
                        for k, p in net._collect_params_with_prefix().items()})
    start = {k: p.data().asnumpy() for k, p in ref._collect_params_with_prefix().items()}
    for k, (one,) in ((k, v) for k, v in results[0].items()):
        two = results[1][k]
        np.testing.assert_allclose(two[0], two[1], rtol=0, atol=0)       # replicas identical
        np.testing.assert_allclose(one, two[0], rtol=1e-5, atol=1e-6, err_msg=k)
        assert np.abs(one - start[k]).max() > 1e-5                        # the step did something


def test_engine_step_matches_hand_computed_sgd():
    """One engine iteration on a linear model equals numpy's SGD step on the mean CE."""
    net = gluon.nn.Dense(3, in_units=4 * 2 * 2, use_bias=True, flatten=True)
    net.initialize(mx.init.Normal(0.5))
    w0 = net.weight.data().asnumpy().copy()
    b0 = net.bias.data().asnumpy().copy()
    rng = np.random.RandomState(3)
    imgs = rng.randint(0, 256, (6, 4, 2, 2)).astype(np.uint8)
    labels = np.array([0, 2, 1, 1, 0, 2])
    it = ArrayIter(imgs, labels, 6, mean=(128,) * 4, std=(64,) * 4, last_batch='rollover')
    lr, wd = 0.3, 0.01
    eng = Engine(net, Classify(), [mx.cpu()], FitConfig(num_epochs=1, lr=lr, momentum=0.0, wd=wd, optimizer='sgd',
                                                         lr_mode='constant', mode='imperative'), it, num_classes=3)
    eng.fit()
    x = ((imgs.astype(np.float32) - 128) / 64).reshape(6, -1)
    z = x @ w0.T + b0
    g = mean_ce_grad_logits(z, labels)
    w1 = w0 - lr * (g.T @ x + wd * w0)
    b1 = b0 - lr * (g.sum(0) + wd * b0)
    np.testing.assert_allclose(net.weight.data().asnumpy(), w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bias.data().asnumpy(), b1, rtol=1e-5, atol=1e-6)
    h = eng.history[0]
    assert h['train_loss'] == pytest.approx(float(-log_softmax(z)[np.arange(6), labels].mean()), rel=1e-5)


def _fit(tmp_path, name, epochs, resume=None, net=None, mode='hybrid'):
    net = net or tiny_net(bn=True)
    cfg = FitConfig(num_epochs=3, lr=0.2, lr_mode='cosine', warmup_epochs=1, wd=1e-4, momentum=0.9,
                    mode=mode, seed=7, log_interval=2)
    ckpt = CheckpointManager(str(tmp_path / name), 'toy', save_frequency=0)
    eng = Engine(net, Classify(), [mx.cpu()], cfg, tiny_data(), tiny_data(shuffle=False), num_classes=3,
                 checkpoint=ckpt, metrics_path=str(tmp_path / name / 'metrics.jsonl'), run_info={'model': 'toy'})
    eng.cfg.num_epochs = epochs if resume is None else 3
    if resume is None:
        eng.cfg.max_iters = epochs * len(eng.train_data)
    eng.schedule.total_iters = 3 * len(eng.train_data)  # the schedule always spans 3 epochs
    eng.fit(resume=resume)
    return eng


@pytest.mark.parametrize('mode', ['hybrid', 'imperative'])
def test_resume_is_exact(tmp_path, mode):
    full = _fit(tmp_path, 'full', 3, mode=mode)
    part = _fit(tmp_path, 'part', 1, mode=mode)
    ref0 = tiny_net(bn=True)
    resumed = _fit(tmp_path, 'resumed', 3, resume=str(tmp_path / 'part'), net=ref0, mode=mode)
    a, b = params_of(full.net), params_of(resumed.net)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert full.lr_trace == part.lr_trace + resumed.lr_trace
    assert len(full.lr_trace) == 9
    lines = [json.loads(l) for l in (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in lines] == [2, 3]


def test_checkpoint_pointer_survives_crash_during_save(tmp_path):
    eng = _fit(tmp_path, 'run', 1)
    d = tmp_path / 'run'
    meta, _ = resolve_resume(str(d))
    assert meta['epoch'] == 1
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != 'metrics.jsonl'}

    class Crash(Exception):
        pass

    def crashing_save(path):
        with open(path, 'wb') as f:
            f.write(b'partial')
        raise Crash()

    eng.net.save_parameters = crashing_save
    with pytest.raises(Crash):
        eng.ckpt.save(2, eng.net, eng.trainer, {'global_step': 6})
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != 'metrics.jsonl'}
    assert after == before            # no temp file left, nothing overwritten
    meta, _ = resolve_resume(str(d))
    assert meta['epoch'] == 1
    fresh = tiny_net(bn=True, seed=5)
    _fit(tmp_path, 'again', 3, resume=str(d), net=fresh)  # still resumable


def test_periodic_and_best_checkpoints(tmp_path):
    net = tiny_net(bn=True)
    cfg = FitConfig(num_epochs=4, lr=0.1, lr_mode='constant', mode='imperative', save_frequency=2, log_interval=0)
    ckpt = CheckpointManager(str(tmp_path), 'toy', save_frequency=2)
    Engine(net, Classify(), [mx.cpu()], cfg, tiny_data(), tiny_data(shuffle=False), 3, checkpoint=ckpt).fit()
    names = sorted(os.listdir(tmp_path))
    assert 'toy-0002.params' in names and 'toy-0004.params' in names and 'toy-0004.states' in names
    assert 'toy-0001.params' not in names and 'toy-0003.params' not in names
    best = [n for n in names if n.endswith('-best.params')]
    assert len(best) == 1 and best[0].split('-')[0].replace('.', '').isdigit()


class NaNAfter(Task):
    def __init__(self, k):
        self.k, self.calls = k, 0

    def loss(self, net, data, target, label):
        self.calls += 1
        logits = net(data)
        ce = cross_entropy(logits, target)
        if self.calls >= self.k:
            ce = ce * float('nan')
        return ce.sum(), logits, {'ce': ce.mean()}


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    net = tiny_net()
    cfg = FitConfig(num_epochs=3, lr=0.1, lr_mode='constant', mode='imperative', log_interval=2)
    ckpt = CheckpointManager(str(tmp_path), 'toy')
    eng = Engine(net, NaNAfter(5), [mx.cpu()], cfg, tiny_data(), None, 3, checkpoint=ckpt)
    with pytest.raises(TrainingDiverged) as e:
        eng.fit()
    msg = str(e.value)
    assert 'epoch 2, iteration 2 (global step 5)' in msg and 'epoch 1' in msg and '\n' not in msg
    meta, _ = resolve_resume(str(tmp_path))
    assert meta['epoch'] == 1


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint.json'):
        resolve_resume(str(tmp_path))
    _fit(tmp_path, 'run', 1)
    os.remove(tmp_path / 'run' / 'toy-0001.states')
    with pytest.raises(CheckpointError, match='toy-0001.states'):
        resolve_resume(str(tmp_path / 'run'))


def test_float16_refused_on_cpu():
    with pytest.raises(ConfigError, match='float16 needs GPUs'):
        Engine(tiny_net(), Classify(), [mx.cpu()], FitConfig(dtype='float16'), tiny_data(), num_classes=3)


def test_no_wd_on_bn_and_bias():
    net = tiny_net(bn=True)
    eng = Engine(net, Classify(), [mx.cpu()], FitConfig(no_wd=True), tiny_data(), num_classes=3)
    eng._build_trainer()
    mults = {k: p.wd_mult for k, p in net.collect_params().items()}
    assert all(v == 0 for k, v in mults.items() if k.endswith(('_gamma', '_beta', '_bias')))
    assert all(v == 1 for k, v in mults.items() if k.endswith('_weight'))
