"""The Distill task through the engine: KD + AT terms, frozen teacher, device-count
independence, start-up shape validation, gradient-based AT, and the engine's
``after_backward`` hook."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

import gluon_transfer as gt
from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.tasks import Classify, Distill, Task, build_teacher, cross_entropy
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import ConfigError
from gluon_transfer.losses import input_gradient

from numpy_ref import log_softmax
from test_losses_at_kd import np_at

TAPS = ('stage1', 'stage2', 'stage3')


def data(n=8, bs=4, size=8, classes=10, seed=1):
    rng = np.random.RandomState(seed)
    imgs = rng.randint(0, 256, (n, 3, size, size)).astype(np.uint8)
    return ArrayIter(imgs, rng.randint(0, classes, n), bs, mean=(120,) * 3, std=(60,) * 3, last_batch='rollover')


def wrn_pair(seed=0):
    mx.random.seed(seed)
    student = gt.get_model('wrn', depth=10, width=1)
    student.initialize()
    teacher = gt.get_model('wrn', depth=10, width=2, features=TAPS)
    teacher.initialize()
    teacher(mx.nd.zeros((1, 3, 8, 8)))
    return student, teacher


def snapshot(block):
    return {k: [d.asnumpy().copy() for d in p.list_data()] for k, p in block.collect_params().items()}


def test_distill_through_engine_teacher_frozen():
    student, teacher = wrn_pair()
    t0, s0 = snapshot(teacher), snapshot(student)
    task = Distill(teacher, TAPS, beta=1e3, alpha=0.9, temperature=4, input_shape=(1, 3, 8, 8))
    ctx = [mx.cpu(0), mx.cpu(1)]
    student.collect_params().reset_ctx(ctx)
    eng = Engine(student, task, ctx, FitConfig(num_epochs=2, lr=0.1, momentum=0.9, wd=5e-4, lr_mode='constant',
                                               mode='hybrid', log_interval=1), data(), data(), num_classes=10)
    eng.fit()
    terms = eng.history[-1]['terms']
    assert set(terms) == {'ce', 'kd', 'at_g0', 'at_g1', 'at_g2'}
    assert all(np.isfinite(v) and v > 0 for v in terms.values())
    assert eng.history[-1]['train_loss'] == pytest.approx(sum(terms.values()), rel=1e-4)
    # the teacher: same values on both devices, never updated, not in the trainer, no gradients
    t1 = snapshot(teacher)
    for k in t0:
        assert len(t1[k]) == 2
        for arr in t1[k]:
            np.testing.assert_array_equal(arr, t0[k][0], err_msg=k)
    trained = {p.name for p in eng.trainer._params}
    assert not trained & set(teacher.collect_params().keys())
    assert trained == set(student.collect_params().keys())
    assert all(p.grad_req == 'null' for p in teacher.collect_params().values())
    s1 = snapshot(student)
    assert any(np.abs(s1[k][0] - s0[k][0]).max() > 0 for k in s0 if 'weight' in k)


def test_total_matches_numpy():
    student, teacher = wrn_pair(seed=3)
    task = Distill(teacher, TAPS, beta=1e3, alpha=0.7, temperature=3.0)
    task.setup(student, [mx.cpu()])
    x = next(iter(data(n=4))).data
    y = np.array([1, 2, 3, 4])
    with autograd.pause(train_mode=False):            # inference BN: a deterministic reference
        total, logits, terms = task.loss(student, x, mx.nd.array(y), mx.nd.array(y))
        zs, ms = task._student(x)
        zt, mt = teacher(x)
    zs, zt = zs.asnumpy().astype(np.float64), zt.asnumpy().astype(np.float64)
    T, a = 3.0, 0.7
    logp, logq = log_softmax(zs / T), log_softmax(zt / T)
    kd = a * T * T * (np.exp(logq) * (logq - logp)).sum(axis=1)
    ce = (1 - a) * -log_softmax(zs)[np.arange(4), y]
    at = [1e3 * ((np_at(s.asnumpy()) - np_at(t.asnumpy())) ** 2).mean() for s, t in zip(ms, mt)]
    assert float(total.asscalar()) == pytest.approx(kd.sum() + ce.sum() + 4 * sum(at), rel=1e-4)
    assert float(terms['kd'].asscalar()) == pytest.approx(kd.mean(), rel=5e-4)   # float32 KL of near distributions
    assert float(terms['ce'].asscalar()) == pytest.approx(ce.mean(), rel=1e-4)
    for g in range(3):
        assert float(terms['at_g%d' % g].asscalar()) == pytest.approx(at[g], rel=1e-4)


def bn_free(seed, width, classes=3, act='relu'):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(width, 3, padding=1), gluon.nn.Activation(act),
            gluon.nn.Conv2D(width, 3, strides=2, padding=1), gluon.nn.Activation(act),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(classes))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 8, 8)))
    return net


def copy_params(src, dst):
    for (_, a), (_, b) in zip(src.collect_params().items(), dst.collect_params().items()):
        b.set_data(a.data())


@pytest.mark.parametrize('scaling', [False, True])
def test_two_devices_equal_one_device(scaling):
    """The AT loss does not scale with the device count unless --at-ngpu-scaling asks for
    the reference's behaviour (x number of devices)."""
    teacher = bn_free(1, 6)
    ref = bn_free(2, 4)
    out = []
    for ctx in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        net = bn_free(9, 4)
        copy_params(ref, net)
        net.collect_params().reset_ctx(ctx)
        task = Distill(teacher, ('1', '3'), beta=50.0, alpha=0.5, at_ngpu_scaling=scaling)
        eng = Engine(net, task, ctx, FitConfig(num_epochs=1, lr=0.5, momentum=0.0, wd=0, lr_mode='constant',
                                               mode='hybrid', log_interval=0), data(n=8, bs=8, classes=3),
                     num_classes=3)
        eng.fit()
        out.append((list(snapshot(net).values()), eng.history[0]['terms']))
    (one, t_one), (two, t_two) = out
    for g in ('at_g0', 'at_g1'):
        assert t_two[g] == pytest.approx(t_one[g] * (2 if scaling else 1), rel=1e-5)
    if not scaling:
        for a, b in zip(one, two):
            np.testing.assert_allclose(b[0], a[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(b[0], b[1])


def test_tap_mismatch_is_a_clear_startup_error():
    student, teacher = wrn_pair()
    task = Distill(teacher, ('stage1', 'stage2'), ('stage2', 'stage3'), beta=1e3, input_shape=(1, 3, 8, 8))
    with pytest.raises(ConfigError) as e:
        task.setup(student, [mx.cpu()])
    msg = str(e.value)
    assert "group g0 (student 'stage1', teacher 'stage2')" in msg
    assert '(1, 16, 8, 8)' in msg and '(1, 64, 4, 4)' in msg and '\n' not in msg
    with pytest.raises(ConfigError, match='2 student taps.*1 teacher taps'):
        Distill(teacher, ('stage1', 'stage2'), ('stage2',), beta=1.0)
    with pytest.raises(ConfigError, match='nothing would be transferred'):
        Distill(teacher, TAPS)
    other = gt.get_model('wrn', depth=10, width=1, classes=5)
    other.initialize()
    with pytest.raises(ConfigError, match='student has 5 outputs, the teacher 10'):
        Distill(teacher, alpha=0.5, input_shape=(1, 3, 8, 8)).setup(other, [mx.cpu()])


def test_build_teacher(tmp_path):
    with pytest.raises(ConfigError, match='--teacher-params'):
        build_teacher('wrn16_2', None, 10, [mx.cpu()])
    src = gt.get_model('wrn16_2')
    src.initialize()
    src(mx.nd.zeros((1, 3, 32, 32)))
    src.save_parameters(str(tmp_path / 't.params'))
    t = build_teacher('wrn16_2', str(tmp_path / 't.params'), 10, [mx.cpu()], features=TAPS)
    assert t.feature_names == TAPS
    np.testing.assert_array_equal(t.fc.weight.data().asnumpy(), src.fc.weight.data().asnumpy())
    with pytest.raises(gt.CheckpointError):
        build_teacher('wrn16_1', str(tmp_path / 't.params'), 10, [mx.cpu()])


def test_gluoncv_pair_resnet34_teacher_resnet18_student():
    """The ImageNet pairing (post-ReLU stage outputs of v1b ResNets) at a small input."""
    mx.random.seed(0)
    teacher = build_teacher('resnet34_v1b', None, 10, [mx.cpu()], allow_random=True)
    student = gt.get_model('resnet18_v1b', classes=10)
    student.initialize(mx.init.Xavier())
    taps = ('stage1', 'stage2', 'stage3', 'stage4')
    task = Distill(teacher, taps, beta=1e3, input_shape=(1, 3, 32, 32))
    eng = Engine(student, task, [mx.cpu()], FitConfig(num_epochs=1, lr=0.01, lr_mode='constant', log_interval=0),
                 data(n=4, bs=2, size=32), num_classes=10)
    eng.fit()
    assert set(eng.history[0]['terms']) == {'ce', 'at_g0', 'at_g1', 'at_g2', 'at_g3'}
    x = mx.nd.zeros((1, 3, 32, 32))
    assert [m.shape for m in task._student(x)[1]] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2), (1, 512, 1, 1)]


# ----------------------------------------------------------------- gradient-based AT
def test_grad_at_gradient_matches_numeric_derivative_of_objective():
    """d/dtheta [sum CE + beta/2 ||J_S - J_T||^2] from task.loss + backward + after_backward
    equals central differences of the objective itself (J by first-order autograd). Smooth
    activations: with ReLU, J jumps where activation patterns flip, so the objective is
    only piecewise continuous in theta and numeric differences are meaningless."""
    teacher = bn_free(1, 6, act='tanh')
    net = bn_free(4, 4, act='softrelu')
    beta = 200.0
    task = Distill(teacher, alpha=0.0, grad_at_beta=beta, grad_at_step=1e-3)
    task.setup(net, [mx.cpu()])
    x = next(iter(data(n=4, classes=3))).data
    y = mx.nd.array([0, 1, 2, 1])
    with autograd.record():
        total, _, terms = task.loss(net, x, y, y)
    total.backward()
    task.after_backward(net)
    params = [p for p in net.collect_params().values()]
    got = [p.grad().asnumpy().copy() for p in params]

    def objective():
        ce = float(cross_entropy(net(x), y).sum().asscalar())
        js = input_gradient(lambda z: cross_entropy(net(z), y), x)
        jt = input_gradient(lambda z: cross_entropy(teacher(z), y), x, train_mode=False)
        return ce + 0.5 * beta * float(mx.nd.square(js - jt).sum().asscalar())

    assert float(total.asscalar()) == pytest.approx(objective(), rel=1e-5)
    assert float(terms['grad_at'].asscalar()) > 0
    rng = np.random.RandomState(0)
    checked = 0
    for p, g in zip(params, got):
        base = p.data().asnumpy()
        for _ in range(3):
            idx = tuple(rng.randint(0, s) for s in base.shape)
            vals = []
            for sign in (1, -1):
                q = base.copy()
                q[idx] += sign * 1e-2
                p.set_data(mx.nd.array(q))
                vals.append(objective())
            p.set_data(mx.nd.array(base))
            num = (vals[0] - vals[1]) / 2e-2
            assert g[idx] == pytest.approx(num, rel=3e-2, abs=3e-3), (p.name, idx)
            checked += 1
    assert checked == 3 * len(params)


def test_grad_at_through_engine_restores_bn_statistics():
    student, teacher = wrn_pair()
    task = Distill(teacher, alpha=0.9, grad_at_beta=10.0)
    ref_student, _ = wrn_pair()
    runs = []
    for net, t in ((student, task), (ref_student, Distill(teacher, alpha=0.9))):
        Engine(net, t, [mx.cpu()], FitConfig(num_epochs=1, lr=0.0, momentum=0.0, wd=0, lr_mode='constant',
                                             log_interval=0), data(), num_classes=10).fit()
        runs.append({k: v.data().asnumpy() for k, v in net.collect_params('.*running.*').items()})
    for k in runs[0]:        # lr 0: only the main forwards touch BN statistics, as without grad-AT
        np.testing.assert_allclose(runs[0][k], runs[1][k.replace(student.prefix, ref_student.prefix)],
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- engine hook
class AddToBias(Task):
    """Classify plus a constant added to the bias gradient after backward."""

    def __init__(self, c):
        self.c, self.calls = c, 0

    def loss(self, net, data, target, label):
        return Classify().loss(net, data, target, label)

    def after_backward(self, net):
        self.calls += 1
        net.bias.grad()[:] += mx.nd.array(self.c)


def test_after_backward_hook_runs_between_backward_and_step():
    net = gluon.nn.Dense(3, in_units=8, flatten=True)
    net.initialize(mx.init.Normal(0.5))
    w0, b0 = net.weight.data().asnumpy().copy(), net.bias.data().asnumpy().copy()
    rng = np.random.RandomState(3)
    imgs = rng.randint(0, 256, (6, 2, 2, 2)).astype(np.uint8)
    labels = np.array([0, 2, 1, 1, 0, 2])
    it = ArrayIter(imgs, labels, 6, mean=(128,) * 2, std=(64,) * 2, last_batch='rollover')
    task = AddToBias(np.array([0.6, -1.2, 3.0], dtype=np.float32))
    lr = 0.3
    Engine(net, task, [mx.cpu()], FitConfig(num_epochs=1, lr=lr, momentum=0.0, wd=0.0, optimizer='sgd',
                                            lr_mode='constant', mode='imperative'), it, num_classes=3).fit()
    assert task.calls == 1
    x = ((imgs.astype(np.float32) - 128) / 64).reshape(6, -1)
    z = x @ w0.T + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(6), labels] -= 1
    np.testing.assert_allclose(net.bias.data().asnumpy(), b0 - lr * (p.sum(0) + task.c) / 6, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.weight.data().asnumpy(), w0 - lr * (p.T @ x) / 6, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- CLI wiring
def test_cli_flags_reference_cifar_recipe():
    import logging
    from gluon_transfer import cli
    p = cli.build_parser('cifar', 'x')
    args = cli.parse_args(p, ['--model', 'wrn16_1', '--teacher-model', 'wrn16_2', '--teacher-random', '--beta', '1e3',
                              '--alpha', '0.9', '--temperature', '4', '--at-mode', 'paper', '--at-p', '2',
                              '--optimizer', 'sgd', '--momentum', '0.9', '--wd', '5e-4', '--lr', '0.1',
                              '--batch-size', '128', '--num-epochs', '200', '--lr-mode', 'step',
                              '--lr-decay-epoch', '60,120,160', '--lr-decay', '0.2', '--input-size', '8'])
    cfg = cli.fit_config(args)
    assert (cfg.optimizer, cfg.momentum, cfg.wd, cfg.lr, cfg.num_epochs, cfg.lr_decay_epochs, cfg.lr_decay) == \
        ('sgd', 0.9, 5e-4, 0.1, 200, (60, 120, 160), 0.2)
    factory = cli.distill_task_factory(args)
    assert factory is cli.make_distill_task

    class Data:
        num_classes = 10
    student = gt.get_model('wrn16_1')
    student.initialize()
    task = factory(args, student, Data(), [mx.cpu()], logging.getLogger('test'))
    assert isinstance(task, Distill)
    assert (task.beta, task.alpha, task.temperature, task.at_mode) == (1e3, 0.9, 4.0, 'paper')
    assert task.student_taps == TAPS and task.teacher.feature_names == TAPS
    task.setup(student, [mx.cpu()])                    # the input-size check passes at 8x8

    imagenet = cli.parse_args(cli.build_parser('imagenet', 'x'), ['--teacher', 'resnet34_v1b', '--beta', '1e3'])
    assert imagenet.teacher_model == 'resnet34_v1b' and cli._taps(imagenet.at_taps) == (
        'stage1', 'stage2', 'stage3', 'stage4')
    with pytest.raises(ConfigError, match='--teacher-params'):
        cli.make_distill_task(imagenet, student, Data(), [mx.cpu()], logging.getLogger('test'))
    with pytest.raises(ConfigError, match='--beta given without --teacher-model'):
        cli.distill_task_factory(cli.parse_args(p, ['--beta', '1e3']))
    assert cli.distill_task_factory(cli.parse_args(p, [])) is None

