"""Precision: loss scaling, the float16 cast and optimizer flags, bfloat16 settings.

float16 arithmetic cannot run on CPU in MXNet 1.9.1 (no float16 GEMM): what is tested here is
every CPU-runnable part of the float16 path -- the loss scaler's rule (with injected
overflows, against hand-computed scale sequences), its overflow detection on real gradients,
the cast (BatchNorm stays float32), the multi_precision optimizer update (float32 master
weights, checked against numpy), the engine's scaled step (float32 with a power-of-two scale
must equal the unscaled step) and the scaler's checkpoint round-trip. A float16 forward /
backward pass on a GPU is not tested here (see README, "Precision").
"""
import json

import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon

from gluon_transfer import cli
from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine import precision
from gluon_transfer.engine.checkpoint import CheckpointManager
from gluon_transfer.engine.precision import LossScaler, make_loss_scaler, resolve_loss_scale
from gluon_transfer.engine.tasks import Classify
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import ConfigError
from numpy_ref import mean_ce_grad_logits
from net_helpers import tiny_net as _tiny_net


def tiny_net(bn=True, seed=0):
    return _tiny_net(bn=bn, seed=seed)


def tiny_data(n=24, bs=8):
    rng = np.random.RandomState(1)
    imgs = rng.randint(0, 256, (n, 3, 8, 8)).astype(np.uint8)
    labels = rng.randint(0, 3, n)
    return ArrayIter(imgs, labels, bs, mean=(120,) * 3, std=(60,) * 3, shuffle=True, last_batch='rollover', seed=0)


# ---------------------------------------------------------------- the scaling rule
def run_rule(scaler, overflows):
    """Scale in effect at each step, and whether each step's update ran."""
    scales, stepped = [], []
    for ov in overflows:
        scales.append(scaler.scale)
        stepped.append(scaler.update(ov))
    return scales, stepped


def test_dynamic_scaler_sequence_hand_computed():
    # init 8, window 3, factor 2: three finite steps double, an overflow halves at once.
    s = LossScaler(init_scale=8, window=3)
    ov = [0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0]
    scales, stepped = run_rule(s, [bool(v) for v in ov])
    assert scales == [8, 8, 8, 16, 16, 8, 8, 4, 2, 2, 2, 4]
    assert stepped == [True, True, True, True, False, True, False, False, True, True, True, True]
    assert s.skipped == 3 and s.good_steps == 1 and s.scale == 4


def test_dynamic_scaler_floor_and_ceiling():
    s = LossScaler(init_scale=2, window=1, min_scale=1, max_scale=8)
    scales, _ = run_rule(s, [True, True, True, False, False, False, False, False])
    # 2 -> 1 (overflow), stays at the floor 1, then doubles every finite step up to the ceiling 8
    assert scales == [2, 1, 1, 1, 2, 4, 8, 8]
    assert s.scale == 8


def test_static_scaler_keeps_scale_and_skips_overflow():
    s = LossScaler(init_scale=128, window=2, dynamic=False)
    scales, stepped = run_rule(s, [False, False, False, True, False])
    assert scales == [128] * 5
    assert stepped == [True, True, True, False, True]
    assert s.skipped == 1


def test_resolve_and_bad_values():
    assert resolve_loss_scale('auto', 'float16') == 'dynamic'
    assert resolve_loss_scale('auto', 'bfloat16') == 'none'
    assert resolve_loss_scale('auto', 'float32') == 'none'
    assert resolve_loss_scale('static', 'bfloat16') == 'static'
    assert make_loss_scaler('auto', 'bfloat16') is None
    sc = make_loss_scaler('auto', 'float16')
    assert sc.dynamic and sc.scale == 2.0 ** 16 and sc.window == 2000
    with pytest.raises(ConfigError, match='--amp-loss-scale'):
        resolve_loss_scale('sometimes', 'float16')
    with pytest.raises(ConfigError, match='--amp-init-scale'):
        LossScaler(init_scale=0)
    with pytest.raises(ConfigError, match='--amp-scale-window'):
        LossScaler(window=0)


def test_state_round_trip():
    s = LossScaler(init_scale=8, window=3)
    run_rule(s, [False, True, False, False])
    t = LossScaler(init_scale=8, window=3)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert (t.scale, t.good_steps, t.skipped) == (4, 2, 1)
    # both continue identically
    assert run_rule(s, [False, False, True]) == run_rule(t, [False, False, True])
    with pytest.raises(ConfigError, match='good_steps'):
        t.load_state_dict({'scale': 2.0})


# ---------------------------------------------------------------- overflow detection
@pytest.mark.parametrize('bad', [np.inf, -np.inf, np.nan])
def test_has_overflow_on_real_gradients(bad):
    net = tiny_net()
    x = mx.nd.array(np.random.RandomState(0).randn(2, 3, 8, 8))
    with mx.autograd.record():
        loss = net(x).sum()
    loss.backward()
    params = list(net.collect_params().values())
    assert LossScaler.has_overflow(params) is False
    g = net[4].weight.grad()
    g[1, 2] = bad
    assert LossScaler.has_overflow(params) is True


# ---------------------------------------------------------------- float16 cast and optimizer
def test_float16_cast_keeps_batchnorm_float32():
    net = tiny_net(bn=True)
    precision.prepare_net(net, 'float16')
    dtypes = {k: np.dtype(p.dtype).name for k, p in net._collect_params_with_prefix().items()}
    assert dtypes['0.weight'] == 'float16' and dtypes['4.weight'] == 'float16' and dtypes['4.bias'] == 'float16'
    for k in ('gamma', 'beta', 'running_mean', 'running_var'):
        assert dtypes['1.' + k] == 'float32', k
    assert net[0].weight.data().dtype == np.float16
    assert net[1].running_var.data().dtype == np.float32
    # float32 and bfloat16 (AMP converts operators, not parameters) leave the parameters alone
    net2 = tiny_net(bn=True)
    precision.prepare_net(net2, 'bfloat16')
    assert all(np.dtype(p.dtype) == np.float32 for p in net2.collect_params().values())


def test_multi_precision_optimizer_keeps_float32_master_weights():
    assert precision.optimizer_kwargs('float16') == {'multi_precision': True}
    assert precision.optimizer_kwargs('bfloat16') == {} and precision.optimizer_kwargs('float32') == {}
    net = tiny_net(bn=True)
    precision.prepare_net(net, 'float16')
    tr = gluon.Trainer(net.collect_params(), 'sgd', dict(learning_rate=0.1, momentum=0.9, wd=0.01,
                                                         **precision.optimizer_kwargs('float16')))
    assert tr._optimizer.multi_precision is True
    # the float16 update itself (elementwise, runs on CPU) against numpy in float32
    opt = tr._optimizer
    w = mx.nd.array([1.0, -2.0, 0.5], dtype='float16')
    st = opt.create_state_multi_precision(0, w)
    assert st[1].dtype == np.float32 and st[0].dtype == np.float32
    g = mx.nd.array([0.5, 0.25, -1.0], dtype='float16')
    opt.update_multi_precision(0, w, g, st)
    w32 = np.array([1.0, -2.0, 0.5], np.float32)
    expect = w32 - 0.1 * (np.array([0.5, 0.25, -1.0], np.float32) + 0.01 * w32)   # momentum buffer starts at 0
    np.testing.assert_allclose(st[1].asnumpy(), expect, rtol=1e-6)
    np.testing.assert_allclose(w.asnumpy().astype(np.float32), expect.astype(np.float16), rtol=1e-3)


def test_float16_refused_on_cpu_and_safe_accumulation_advice(caplog, monkeypatch):
    with pytest.raises(ConfigError, match='float16 needs GPUs'):
        precision.setup_precision('float16', [mx.cpu()])
    monkeypatch.delenv('MXNET_SAFE_ACCUMULATION', raising=False)
    import logging
    with caplog.at_level(logging.INFO, logger='gluon_transfer'):
        precision.setup_precision('float16', [mx.gpu(0)])    # validation only; nothing runs on the GPU
    assert 'MXNET_SAFE_ACCUMULATION' in caplog.text
    caplog.clear()
    monkeypatch.setenv('MXNET_SAFE_ACCUMULATION', '1')
    with caplog.at_level(logging.INFO, logger='gluon_transfer'):
        precision.setup_precision('float16', [mx.gpu(0)])
    assert 'MXNET_SAFE_ACCUMULATION' not in caplog.text


def test_cli_flags_reach_fit_config():
    p = cli.build_parser('cifar', 'x')
    args = p.parse_args(['--amp-loss-scale', 'static', '--amp-init-scale', '1024', '--amp-scale-window', '10'])
    cfg = cli.fit_config(args)
    assert (cfg.amp_loss_scale, cfg.amp_init_scale, cfg.amp_scale_window) == ('static', 1024.0, 10)
    d = cli.fit_config(p.parse_args([]))
    assert (d.amp_loss_scale, d.amp_init_scale, d.amp_scale_window) == ('auto', 65536.0, 2000)
    with pytest.raises(SystemExit):
        p.parse_args(['--amp-loss-scale', 'always'])


# ---------------------------------------------------------------- the engine's scaled step
def _linear_fit(scale_mode, init_scale=1024.0):
    net = gluon.nn.Dense(3, in_units=16, flatten=True)
    net.initialize(mx.init.Normal(0.5))
    rng = np.random.RandomState(3)
    imgs = rng.randint(0, 256, (6, 4, 2, 2)).astype(np.uint8)
    labels = np.array([0, 2, 1, 1, 0, 2])
    it = ArrayIter(imgs, labels, 6, mean=(128,) * 4, std=(64,) * 4, last_batch='rollover')
    cfg = FitConfig(num_epochs=1, lr=0.3, momentum=0.0, wd=0.01, lr_mode='constant', mode='imperative',
                    amp_loss_scale=scale_mode, amp_init_scale=init_scale)
    w0 = net.weight.data().asnumpy().copy()
    b0 = net.bias.data().asnumpy().copy()
    eng = Engine(net, Classify(), [mx.cpu()], cfg, it, num_classes=3)
    eng.fit()
    return eng, imgs, labels, w0, b0


def test_scaled_step_equals_numpy_sgd():
    """float32 with a power-of-two static scale: backward on 1024 * loss, update divided by
    1024 -- the same SGD step as numpy's on the mean cross-entropy."""
    eng, imgs, labels, w0, b0 = _linear_fit('static')
    assert eng.scaler is not None and eng.scaler.scale == 1024.0
    x = ((imgs.astype(np.float32) - 128) / 64).reshape(6, -1)
    g = mean_ce_grad_logits(x @ w0.T + b0, labels)
    np.testing.assert_allclose(eng.net.weight.data().asnumpy(), w0 - 0.3 * (g.T @ x + 0.01 * w0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eng.net.bias.data().asnumpy(), b0 - 0.3 * (g.sum(0) + 0.01 * b0), rtol=1e-5, atol=1e-6)


class OverflowAt(Classify):
    """Classify whose gradients get an inf at the given global steps (an injected overflow)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = set(steps)
        self.engine = None

    def after_backward(self, net):
        if self.engine.global_step in self.steps:
            g = next(iter(net.collect_params().values())).grad()
            g[:] = np.inf


def _scaled_fit(tmp_path, name, epochs, overflow_steps, resume=None):
    net = tiny_net(bn=True, seed=0)
    cfg = FitConfig(num_epochs=3, lr=0.1, lr_mode='constant', momentum=0.9, wd=1e-4, mode='hybrid', seed=5,
                    log_interval=0, amp_loss_scale='dynamic', amp_init_scale=64.0, amp_scale_window=2)
    task = OverflowAt(overflow_steps)
    ckpt = CheckpointManager(str(tmp_path / name), 'toy')
    eng = Engine(net, task, [mx.cpu()], cfg, tiny_data(), num_classes=3, checkpoint=ckpt, run_info={'model': 'toy'})
    task.engine = eng
    eng.cfg.max_iters = epochs * 3        # stop after `epochs` of the same 3-epoch schedule
    eng.fit(resume=resume)
    return eng


def test_injected_overflow_skips_update_and_checkpoint_round_trip(tmp_path):
    """3 iterations per epoch, window 2, init 64, overflow injected at global steps 1 and 4:
    scales 64, 64(ov)->32, 32, 32->64, 64(ov)->32, 32, 32->64, 64, 64->128 (hand-derived).
    A run resumed after epoch 1 ends with the same scaler state and parameters."""
    full = _scaled_fit(tmp_path, 'full', 3, {1, 4})
    assert (full.scaler.scale, full.scaler.skipped, full.scaler.good_steps) == (128.0, 2, 0)
    part = _scaled_fit(tmp_path, 'part', 1, {1, 4})
    # after epoch 1 (steps 0,1,2): 64 ok (good 1), overflow -> 32 (good 0), 32 ok (good 1)
    assert (part.scaler.scale, part.scaler.skipped, part.scaler.good_steps) == (32.0, 1, 1)
    meta = json.loads((tmp_path / 'part' / 'toy-0001.json').read_text())
    assert meta['loss_scaler']['scale'] == 32.0 and meta['loss_scaler']['good_steps'] == 1
    resumed = _scaled_fit(tmp_path, 'resumed', 3, {1, 4}, resume=str(tmp_path / 'part'))
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    a = {k: v.data().asnumpy() for k, v in full.net._collect_params_with_prefix().items()}
    b = {k: v.data().asnumpy() for k, v in resumed.net._collect_params_with_prefix().items()}
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert np.isfinite(a[k]).all(), k


def test_skipped_step_leaves_parameters_unchanged():
    net = tiny_net(bn=False)
    before = {k: v.data().asnumpy().copy() for k, v in net.collect_params().items()}
    cfg = FitConfig(num_epochs=1, lr=0.1, lr_mode='constant', momentum=0.9, mode='imperative', log_interval=0,
                    amp_loss_scale='dynamic', amp_init_scale=8.0, amp_scale_window=100, max_iters=1)
    task = OverflowAt({0})
    eng = Engine(net, task, [mx.cpu()], cfg, tiny_data(), num_classes=3)
    task.engine = eng
    eng.fit()
    assert eng.scaler.scale == 4.0 and eng.scaler.skipped == 1
    for k, v in net.collect_params().items():
        np.testing.assert_array_equal(v.data().asnumpy(), before[k], err_msg=k)


def test_bfloat16_engine_attaches_no_loss_scaler():
    """bfloat16 needs no loss scaling: no scaler, and no mx.contrib.amp scaler on the trainer
    (amp.init itself is not run here -- it patches MXNet's operators for the whole process)."""
    eng = Engine(tiny_net(), Classify(), [mx.cpu()], FitConfig(dtype='bfloat16'), tiny_data(), num_classes=3)
    eng._build_trainer()
    assert eng.scaler is None
    assert getattr(eng.trainer, '_amp_loss_scaler', None) is None
    assert eng.trainer._optimizer.multi_precision is False


def test_bad_scale_values_refused_even_without_scaling():
    with pytest.raises(ConfigError, match='--amp-init-scale'):
        Engine(tiny_net(), Classify(), [mx.cpu()], FitConfig(amp_init_scale=0.0), tiny_data(), num_classes=3)
    with pytest.raises(ConfigError, match='--amp-scale-window'):
        Engine(tiny_net(), Classify(), [mx.cpu()], FitConfig(amp_scale_window=0), tiny_data(), num_classes=3)
