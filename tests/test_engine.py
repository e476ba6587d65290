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


def _fit(tmp_path, name, epochs, resume=None, net=None, mode='hybrid', iters=None, **kw):
    net = net or tiny_net(bn=True)
    cfg = FitConfig(num_epochs=3, lr=0.2, lr_mode='cosine', warmup_epochs=1, wd=1e-4, momentum=0.9,
                    mode=mode, seed=7, log_interval=2, **kw)
    ckpt = CheckpointManager(str(tmp_path / name), 'toy', save_frequency=0)
    eng = Engine(net, Classify(), [mx.cpu()], cfg, tiny_data(), tiny_data(shuffle=False), num_classes=3,
                 checkpoint=ckpt, metrics_path=str(tmp_path / name / 'metrics.jsonl'), run_info={'model': 'toy'})
    if resume is None:     # stop after `epochs` of the 3-epoch schedule (a resume must keep the schedule)
        eng.cfg.max_iters = iters or epochs * len(eng.train_data)
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
    # a resume into another folder starts its metrics with the resumed run's epochs
    assert [l['epoch'] for l in lines] == [1, 2, 3]
    assert lines[0] == json.loads((tmp_path / 'part' / 'metrics.jsonl').read_text().splitlines()[0])


@pytest.mark.parametrize('stop,kw', [(4, {}), (5, {'mixup_alpha': 0.4, 'label_smoothing': 0.1})])
def test_resume_continues_an_epoch_stopped_part_way(tmp_path, stop, kw):
    """--max-iter 4 or 5 with 3 iterations per epoch stops inside epoch 2; the resume trains
    that epoch's remaining iterations (the same batches, augmentation and mixup draws) instead
    of skipping to epoch 3, so it ends where an uninterrupted run ends."""
    full = _fit(tmp_path, 'full', 3, **kw)
    part = _fit(tmp_path, 'part', None, iters=stop, **kw)
    assert len(part.lr_trace) == stop
    resumed = _fit(tmp_path, 'resumed', 3, resume=str(tmp_path / 'part'), net=tiny_net(bn=True), **kw)
    assert full.lr_trace == part.lr_trace + resumed.lr_trace       # 9 iterations in all, none twice
    a, b = params_of(full.net), params_of(resumed.net)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    lines = [json.loads(l) for l in (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in lines] == [1, 2, 3]
    assert (lines[1]['first_iteration'], lines[1]['iterations']) == (stop - 3 + 1, 6 - stop)
    assert 'first_iteration' not in lines[2] and lines[2]['iterations'] == 3


def test_resume_of_a_run_stopped_part_way_with_the_same_budget_trains_nothing(tmp_path):
    """The same --max-iter again: nothing left to train, the partial epoch's line is kept."""
    _fit(tmp_path, 'part', None, iters=4)
    before = (tmp_path / 'part' / 'metrics.jsonl').read_text()
    ckpt = CheckpointManager(str(tmp_path / 'part'), 'toy', save_frequency=0)
    eng = Engine(tiny_net(bn=True), Classify(), [mx.cpu()],
                 FitConfig(num_epochs=3, lr=0.2, lr_mode='cosine', warmup_epochs=1, wd=1e-4, momentum=0.9,
                           seed=7, max_iters=4), tiny_data(), tiny_data(shuffle=False), num_classes=3,
                 checkpoint=ckpt, metrics_path=str(tmp_path / 'part' / 'metrics.jsonl'), run_info={'model': 'toy'})
    eng.fit(resume=str(tmp_path / 'part'))
    assert eng.lr_trace == [] and eng.global_step == 4
    assert (tmp_path / 'part' / 'metrics.jsonl').read_text() == before


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
    eng = Engine(net, Classify(), [mx.cpu()], cfg, tiny_data(), tiny_data(shuffle=False), 3, checkpoint=ckpt)
    eng.fit()
    names = sorted(os.listdir(tmp_path))
    assert 'toy-0002.params' in names and 'toy-0004.params' in names and 'toy-0004.states' in names
    assert 'toy-0001.params' not in names and 'toy-0003.params' not in names
    # one stable best file per run folder, its record naming the first epoch of the highest val top-1
    assert [n for n in names if 'best' in n] == ['best.json', 'best.params']
    tops = [h['val_top1'] for h in eng.history]
    record = json.loads((tmp_path / 'best.json').read_text())
    assert record['epoch'] == int(np.argmax(tops)) + 1 and record['val_top1'] == pytest.approx(max(tops))
    assert record['params'] == 'best.params' and record['prefix'] == 'toy'
    meta, _ = resolve_resume(str(tmp_path))
    assert meta['best_epoch'] == record['epoch'] and meta['best_top1'] == pytest.approx(max(tops))
    # best.params holds that epoch's network: its top-1 on val, computed here with numpy, is the record's
    best = tiny_net(bn=True, seed=3)
    best.load_parameters(str(tmp_path / 'best.params'))
    val = tiny_data(shuffle=False)
    val.set_epoch(0)
    hits = n = 0
    for batch in val:
        keep = batch.data.shape[0] - int(batch.pad)
        pred = best(batch.data).asnumpy()[:keep].argmax(axis=1)
        hits += int((pred == batch.label.asnumpy()[:keep]).sum())
        n += keep
    assert hits / n == pytest.approx(record['val_top1'])


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


# ---------------------------------------------------------------- nothing lost, nothing silent
def _engine(save, task=None, val=True, **cfg_kw):
    """A 3-epoch toy run (3 iterations per epoch) checkpointing into ``save``."""
    kw = dict(num_epochs=3, lr=0.1, lr_mode='constant', mode='imperative', log_interval=0, seed=4)
    kw.update(cfg_kw)
    ckpt = CheckpointManager(str(save), 'toy')
    return Engine(tiny_net(bn=True), task or Classify(), [mx.cpu()], FitConfig(**kw), tiny_data(),
                  tiny_data(shuffle=False) if val else None, 3, checkpoint=ckpt,
                  metrics_path=str(save / 'metrics.jsonl'), run_info={'model': 'toy'})


class PoisonAt(Classify):
    """Classify, but the ``k``-th backward pass puts NaN into the first conv weight: the
    loss of that iteration (computed before) is finite, the network after the update is not."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def after_backward(self, net):
        self.calls += 1
        if self.calls == self.k:
            p = list(net.collect_params().values())[0]
            p.set_data(p.data() * float('nan'))


@pytest.mark.parametrize('val', [True, False])
def test_divergence_in_the_last_update_of_an_epoch_is_not_saved(tmp_path, val):
    """The epoch's last update makes the network NaN (its training loss is finite): the end of
    epoch 2 stops with TrainingDiverged before writing, epoch 1's checkpoint (and best) stay."""
    eng = _engine(tmp_path, PoisonAt(6), val=val)          # 3 iterations per epoch: the last of epoch 2
    with pytest.raises(TrainingDiverged) as e:
        eng.fit()
    msg = str(e.value)
    assert '\n' not in msg and 'epoch 2' in msg and 'checkpoint of epoch 1' in msg, msg
    assert '1 parameter(s) hold NaN/inf (conv' in msg, msg   # ReLU maps NaN to 0: val loss alone can miss it
    meta, _ = resolve_resume(str(tmp_path))
    assert meta['epoch'] == 1
    names = os.listdir(tmp_path)
    assert not any(n.startswith('toy-0002') for n in names) and 'toy-0001.params' in names
    assert [json.loads(l)['epoch'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()] == [1]
    saved = mx.nd.load(str(tmp_path / 'toy-0001.params'))
    assert all(np.isfinite(v.asnumpy()).all() for v in saved.values())
    if val:       # epoch 1 was the best so far: best.params is its network, untouched
        assert 'and best.params' in msg
        assert (tmp_path / 'best.params').read_bytes() == (tmp_path / 'toy-0001.params').read_bytes()
        assert json.loads((tmp_path / 'best.json').read_text())['epoch'] == 1
    else:
        assert 'best.params' not in names


class NaNPredictions(Classify):
    """Finite training, NaN evaluation outputs from epoch 2 on (a val loss of NaN)."""

    def __init__(self):
        self.evals = 0

    def predict(self, net, data):
        self.evals += 1
        out = net(data)
        return out * float('nan') if self.evals > 3 else out     # 3 val batches per evaluation


def test_nan_val_loss_stops_before_saving(tmp_path):
    with pytest.raises(TrainingDiverged) as e:
        _engine(tmp_path, NaNPredictions()).fit()
    assert 'training diverged in epoch 2 (val loss nan)' in str(e.value)
    assert resolve_resume(str(tmp_path))[0]['epoch'] == 1
    assert json.loads((tmp_path / 'best.json').read_text())['epoch'] == 1


def test_best_is_written_before_the_checkpoint(tmp_path):
    """A kill while the new best is written leaves the old best and a pointer that names it."""
    eng = _engine(tmp_path, max_iters=3)
    calls = []
    for name in ('save', 'save_best'):
        orig = getattr(eng.ckpt, name)
        setattr(eng.ckpt, name, lambda *a, _o=orig, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    eng.fit()
    assert calls == ['save_best', 'save']               # epoch 1 is always a new best
    old_best = (tmp_path / 'best.params').read_bytes()
    pointer = (tmp_path / 'checkpoint.json').read_bytes()

    class Kill(Exception):
        pass

    real = eng.net.save_parameters

    def dies_writing_best(path):
        if os.path.basename(path).startswith('.best.params'):
            with open(path, 'wb') as f:
                f.write(b'partial')
            raise Kill()
        real(path)

    eng.net.save_parameters = dies_writing_best
    stats = dict(eng.history[0], epoch=2, val_top1=2.0)   # better than any real top-1: a new best
    with pytest.raises(Kill):
        eng._end_epoch(1, stats)
    assert (tmp_path / 'best.params').read_bytes() == old_best
    assert (tmp_path / 'checkpoint.json').read_bytes() == pointer
    meta, _ = resolve_resume(str(tmp_path))
    assert meta['epoch'] == 1 and meta['best_epoch'] == 1
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


def test_resume_repairs_a_missing_best(tmp_path):
    run = tmp_path / 'run'
    _engine(run, max_iters=3).fit()
    ckpt_params = (run / 'toy-0001.params').read_bytes()
    os.remove(run / 'best.params')
    os.remove(run / 'best.json')
    eng = _engine(run, max_iters=3)         # same schedule; stops at once (3 iterations done)
    eng.fit(resume=str(run))
    assert (run / 'best.params').read_bytes() == ckpt_params      # epoch 1 = the best epoch = the checkpoint
    assert json.loads((run / 'best.json').read_text())['epoch'] == 1


def test_resume_trims_metrics_past_the_checkpoint(tmp_path):
    """A kill after the metrics line of epoch 2 but before its checkpoint (and a torn line):
    the resume trains epoch 2 again, and metrics.jsonl keeps one line per epoch."""
    run = tmp_path / 'run'
    _engine(run, max_iters=3).fit()
    first = (run / 'metrics.jsonl').read_text().splitlines()[0]
    with open(run / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps(dict(json.loads(first), epoch=2)) + '\n{"epoch": 3, "train_lo')
    _engine(run).fit(resume=str(run))
    lines = (run / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(l)['epoch'] for l in lines] == [1, 2, 3]
    assert lines[0] == first


def test_resume_with_another_schedule_is_refused_unless_allowed(tmp_path):
    run = tmp_path / 'run'
    _engine(run, max_iters=3).fit()
    with pytest.raises(CheckpointError) as e:
        _engine(run, num_epochs=5).fit(resume=str(run))
    msg = str(e.value)
    assert '--num-epochs 3 (checkpoint) vs 5 (now)' in msg and '--allow-schedule-change' in msg and '\n' not in msg
    with pytest.raises(CheckpointError, match=r'--lr 0.1 \(checkpoint\) vs 0.05'):
        _engine(run, lr=0.05).fit(resume=str(run))
    six = _engine(run)
    six.train_data = tiny_data(bs=6)        # 4 iterations per epoch instead of 3
    six.iters_per_epoch = len(six.train_data)
    with pytest.raises(CheckpointError, match='3 iterations per epoch'):
        six.fit(resume=str(run))
    eng = _engine(run, num_epochs=4, allow_schedule_change=True)
    eng.fit(resume=str(run))
    assert eng.start_epoch == 1 and eng.global_step == 12 and [h['epoch'] for h in eng.history] == [2, 3, 4]


@pytest.mark.parametrize('kw, flag', [(dict(num_epochs=0), '--num-epochs'), (dict(num_epochs=-1), '--num-epochs'),
                                      (dict(max_iters=-3), '--max-iter'), (dict(lr=-1.0), '--lr')])
def test_fit_config_values_are_checked_by_flag(kw, flag):
    with pytest.raises(ConfigError) as e:
        Engine(tiny_net(), Classify(), [mx.cpu()], FitConfig(**dict(dict(warmup_epochs=1), **kw)), tiny_data(),
               num_classes=3)
    assert str(e.value).startswith(flag + ' must be') and 'warmup' not in str(e.value)


class KillAt(Classify):
    """Classify that raises KeyboardInterrupt at its ``k``-th loss call (a kill mid-epoch)."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def loss(self, net, data, target, label):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt
        return super().loss(net, data, target, label)


def _interval_engine(run, task=None, net=None, **kw):
    cfg = FitConfig(**dict(dict(num_epochs=7, lr=0.2, lr_mode='cosine', wd=1e-4, momentum=0.9, mode='hybrid',
                                seed=3, log_interval=0, val_interval=3), **kw))
    eng = Engine(net or tiny_net(bn=True), task or Classify(), [mx.cpu()], cfg, tiny_data(), tiny_data(shuffle=False),
                 num_classes=3, checkpoint=CheckpointManager(str(run), 'toy', save_frequency=1),
                 metrics_path=str(run / 'metrics.jsonl'), run_info={'model': 'toy'})
    evaluated = []
    plain = eng.evaluate

    def evaluate(data, progress=0):
        # the epoch being evaluated: the one after the last in the history (or the resume point)
        evaluated.append((eng.history[-1]['epoch'] if eng.history else eng.start_epoch) + 1)
        return plain(data, progress)
    eng.evaluate = evaluate
    return eng, evaluated


def test_val_interval_evaluates_every_n_epochs_and_at_the_last(tmp_path):
    """--val-interval 3 over 7 epochs: evaluation, ranking and checkpoints at epochs 3, 6 and 7
    only; every epoch still has a metrics line; the best is the first maximum among the
    evaluated epochs; resuming from the epoch-6 checkpoint gives the uninterrupted run's
    parameters exactly."""
    full, evaluated = _interval_engine(tmp_path / 'full')
    full.fit()
    assert evaluated == [3, 6, 7]
    lines = [json.loads(l) for l in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in lines] == list(range(1, 8))
    assert [l['epoch'] for l in lines if 'val_top1' in l] == [3, 6, 7]
    assert all('train_loss' in l and not any(k.startswith('val_') for k in l) for l in lines if l['epoch'] in (1, 2, 4, 5))
    names = set(os.listdir(tmp_path / 'full'))
    assert {n for n in names if n.endswith('.states')} == {'toy-0003.states', 'toy-0006.states', 'toy-0007.states'}
    tops = {l['epoch']: l['val_top1'] for l in lines if 'val_top1' in l}
    best = max(tops.values())
    record = json.loads((tmp_path / 'full' / 'best.json').read_text())
    assert record['epoch'] == min(e for e, t in tops.items() if t == best) and record['val_top1'] == pytest.approx(best)
    # resume from the epoch-6 checkpoint into another folder: epoch 7 again, the same network
    resumed, evaluated = _interval_engine(tmp_path / 'resumed', net=tiny_net(bn=True, seed=11))
    resumed.fit(resume=str(tmp_path / 'full' / 'toy-0006.json'))
    assert resumed.start_epoch == 6 and evaluated == [7]
    a, b = params_of(full.net), params_of(resumed.net)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert resumed.history[-1]['val_top1'] == full.history[-1]['val_top1']


def test_val_interval_kill_loses_at_most_n_epochs(tmp_path):
    """A kill in epoch 5 (interval 3) leaves the epoch-3 checkpoint and metrics lines 1-4; the
    resume trims the metrics to epoch 3, trains 4-7 and ends at the uninterrupted run's
    parameters."""
    full, _ = _interval_engine(tmp_path / 'full')
    full.fit()
    ipe = len(tiny_data())
    killed, _ = _interval_engine(tmp_path / 'run', task=KillAt(4 * ipe + 2))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert resolve_resume(str(tmp_path / 'run'))[0]['epoch'] == 3
    assert [json.loads(l)['epoch'] for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()] == [1, 2, 3, 4]
    resumed, evaluated = _interval_engine(tmp_path / 'run', net=tiny_net(bn=True, seed=11))
    resumed.fit(resume=str(tmp_path / 'run'))
    assert resumed.start_epoch == 3 and evaluated == [6, 7]
    assert [json.loads(l)['epoch'] for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()] == \
        list(range(1, 8))
    a, b = params_of(full.net), params_of(resumed.net)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_val_interval_max_iter_end_is_evaluated(tmp_path):
    """A fit that stops at max_iters (how AFDS ends its phase 1) evaluates and checkpoints
    its last epoch even off the interval; --val-interval 0 is refused by name."""
    eng, evaluated = _interval_engine(tmp_path / 'run', max_iters=4 * len(tiny_data()))
    eng.fit()
    assert evaluated == [3, 4] and resolve_resume(str(tmp_path / 'run'))[0]['epoch'] == 4
    with pytest.raises(ConfigError, match='^--val-interval must be >= 1'):
        _interval_engine(tmp_path / 'bad', val_interval=0)
