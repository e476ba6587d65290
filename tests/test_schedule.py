import math

import pytest

from gluon_transfer.engine.schedule import LRSchedule
from gluon_transfer.errors import ConfigError


def test_linear_warmup_then_absolute_step_epochs():
    # 10 iterations per epoch, 2 warm-up epochs from 0.0 to 0.4, decay x0.1 at epochs 5 and 8.
    s = LRSchedule('step', 0.4, 10, 10, warmup_epochs=2, decay=0.1, decay_epochs=(5, 8))
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.4 * 5 / 20)
    assert s(19) == pytest.approx(0.4 * 19 / 20)
    assert s(20) == pytest.approx(0.4)
    assert s(49) == pytest.approx(0.4)        # epoch 4 still at base
    assert s(50) == pytest.approx(0.04)       # epoch 5: first decay (absolute, not 5 - warmup)
    assert s(79) == pytest.approx(0.04)
    assert s(80) == pytest.approx(0.004)


def test_warmup_from_nonzero_lr():
    s = LRSchedule('constant', 1.0, 4, 3, warmup_epochs=1, warmup_lr=0.2)
    assert [s(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_cosine_after_warmup():
    s = LRSchedule('cosine', 0.1, 10, 12, warmup_epochs=2, target_lr=0.0)
    # N = 100 iterations after warm-up; t = step - 20.
    assert s(20) == pytest.approx(0.1)
    assert s(70) == pytest.approx(0.05)
    assert s(45) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.25)) / 2)
    assert s(120) == pytest.approx(0.0, abs=1e-12)
    assert s(500) == pytest.approx(0.0, abs=1e-12)


def test_poly():
    s = LRSchedule('poly', 1.0, 5, 4, power=2.0, target_lr=0.1)
    # No warm-up: N = 20, lr = 0.1 + 0.9 * (1 - t/20)^2
    assert s(0) == pytest.approx(1.0)
    assert s(10) == pytest.approx(0.1 + 0.9 * 0.25)
    assert s(20) == pytest.approx(0.1)


def test_bad_schedule_options():
    with pytest.raises(ConfigError, match='lr-mode'):
        LRSchedule('linearish', 0.1, 10, 10)
    with pytest.raises(ConfigError, match='warmup'):
        LRSchedule('step', 0.1, 10, 2, warmup_epochs=3)
    with pytest.raises(ConfigError, match='no iterations'):
        LRSchedule('step', 0.1, 0, 2)
