"""Momentum reset at the step schedule's LR drops (FitConfig.reset_momentum_at_drops,
--reset-momentum) against a hand-computed SGD trajectory of a one-parameter model."""
import logging

import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon

from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.tasks import Task
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import ConfigError

X = np.array([3, 1], np.uint8)          # normalised with mean 0, std 2: x = 1.5, 0.5
Y = np.array([2.0, -1.0])
LR, MOM, WD, W0 = 0.1, 0.9, 0.01, 0.7
DROPS, DECAY, EPOCHS = (2, 4), 0.5, 6   # one iteration per epoch: drops at global steps 2 and 4


class Quadratic(Task):
    """total = sum_i (w x_i - y_i)^2 / 2; records the momentum buffer seen before each update."""

    def __init__(self):
        self.engine = None
        self.seen = []

    def loss(self, net, data, target, label):
        z = net(data.reshape((0, -1)))
        per = 0.5 * mx.nd.square(z[:, 0] - target)
        return per.sum(), z, {'mse': per.mean()}

    def after_backward(self, net):
        states = self.engine.trainer._updaters[0].states
        self.seen.append(float(states[0].asscalar()) if states else None)


def run(reset):
    net = gluon.nn.Dense(1, in_units=1, use_bias=False)
    net.initialize(mx.init.Constant(W0))
    task = Quadratic()
    it = ArrayIter(X.reshape(2, 1, 1, 1), Y, 2, mean=(0.0,), std=(2.0,), last_batch='rollover')
    cfg = FitConfig(num_epochs=EPOCHS, optimizer='sgd', lr=LR, momentum=MOM, wd=WD, lr_mode='step', lr_decay=DECAY,
                    lr_decay_epochs=DROPS, mode='imperative', reset_momentum_at_drops=reset)
    eng = Engine(net, task, [mx.cpu()], cfg, it, num_classes=1, logger=logging.getLogger('test'))
    task.engine = eng
    eng.fit()
    return float(net.weight.data().asscalar()), task.seen


def hand(reset):
    """MXNet sgd_mom: mom = m * mom - lr * (g + wd * w); w += mom, with g the batch-mean gradient."""
    x = X / 2.0
    w, mom, seen = W0, 0.0, []
    for step in range(EPOCHS):
        lr = LR * DECAY ** sum(step >= d for d in DROPS)
        seen.append(None if step == 0 else mom)       # the buffer before this iteration's update
        if reset and step in DROPS:
            mom = 0.0
        g = np.mean((w * x - Y) * x)
        mom = MOM * mom - lr * (g + WD * w)
        w += mom
    return w, seen


@pytest.mark.parametrize('reset', [False, True])
def test_momentum_trajectory_matches_hand_computed_sgd(reset):
    w, seen = run(reset)
    w_ref, seen_ref = hand(reset)
    assert w == pytest.approx(w_ref, rel=1e-5)
    assert seen[0] is None
    np.testing.assert_allclose(seen[1:], seen_ref[1:], rtol=1e-5)


def test_buffer_zero_at_drop_and_untouched_otherwise():
    _, seen = run(True)
    x = X / 2.0
    # replay the engine's recorded buffers: at the drop steps the update starts from zero
    w = W0
    mom = 0.0
    for step in range(EPOCHS - 1):
        lr = LR * DECAY ** sum(step >= d for d in DROPS)
        before = 0.0 if step in DROPS else mom
        g = np.mean((w * x - Y) * x)
        mom = MOM * before - lr * (g + WD * w)
        w += mom
        assert seen[step + 1] == pytest.approx(mom, rel=1e-5)
        if step in DROPS:                        # the buffer right after the drop holds only this update
            assert seen[step + 1] == pytest.approx(-lr * (g + WD * (w - mom)), rel=1e-5)
    assert run(False)[1][3] != pytest.approx(seen[3], rel=1e-3)   # without the reset it differs


def test_reset_momentum_needs_sgd_and_step_schedule():
    it = ArrayIter(X.reshape(2, 1, 1, 1), Y, 2, mean=(0.0,), std=(2.0,))
    net = gluon.nn.Dense(1, in_units=1)
    net.initialize()
    for kw in (dict(lr_mode='cosine'), dict(optimizer='adam', lr_mode='step')):
        with pytest.raises(ConfigError, match='--reset-momentum needs'):
            Engine(net, Quadratic(), [mx.cpu()], FitConfig(reset_momentum_at_drops=True, **kw), it, num_classes=1)


def test_cli_reset_momentum_and_reference_cifar_schedule():
    from gluon_transfer import cli
    args = cli.parse_args(cli.build_parser('cifar', 'x'), [
        '--optimizer', 'sgd', '--momentum', '0.9', '--wd', '5e-4', '--lr', '0.1', '--num-epochs', '200',
        '--lr-mode', 'step', '--lr-decay-epoch', '60,120,160', '--lr-decay', '0.2', '--reset-momentum',
        '--pad-mode', 'reflect'])
    cfg = cli.fit_config(args)
    assert (cfg.optimizer, cfg.momentum, cfg.wd, cfg.lr, cfg.num_epochs, cfg.lr_mode, cfg.lr_decay_epochs,
            cfg.lr_decay, cfg.reset_momentum_at_drops) == ('sgd', 0.9, 5e-4, 0.1, 200, 'step', (60, 120, 160), 0.2,
                                                           True)
    assert cli.augment_kwargs(args)['pad_mode'] == 'reflect'
    assert cli.fit_config(cli.parse_args(cli.build_parser('cifar', 'x'), [])).reset_momentum_at_drops is False
