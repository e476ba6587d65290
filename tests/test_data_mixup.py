import numpy as np
import pytest
import mxnet as mx

from gluon_transfer.data import mixup_batch, smooth_labels, MixupSchedule


def test_smooth_labels_hand_values():
    got = smooth_labels(np.array([2, 0]), 4, eta=0.1)
    want = np.array([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    nd = smooth_labels(mx.nd.array([1]), 3)
    assert isinstance(nd, mx.nd.NDArray)
    np.testing.assert_array_equal(nd.asnumpy(), [[0, 1, 0]])
    with pytest.raises(ValueError):
        smooth_labels(np.array([3]), 3)


@pytest.mark.parametrize('kind', ['numpy', 'nd'])
def test_mixup_batch_hand_values(kind):
    x = np.array([[1., 2.], [3., 5.], [10., 0.]], np.float32)  # 3 samples, batch reversal
    y = np.array([0, 2, 1])
    if kind == 'nd':
        x, y = mx.nd.array(x), mx.nd.array(y)
    mx_, my = mixup_batch(x, y, 0.7, 3, eta=0.3)
    mx_ = mx_.asnumpy() if kind == 'nd' else mx_
    my = my.asnumpy() if kind == 'nd' else my
    # row 0 mixes with row 2: 0.7*[1,2] + 0.3*[10,0] = [3.7, 1.4]; row 1 with itself
    np.testing.assert_allclose(mx_, [[3.7, 1.4], [3., 5.], [0.7 * 10 + 0.3 * 1, 0.3 * 2]], rtol=1e-6)
    # onehot_eta with eta .3, K 3: 0.8 on the class, 0.1 elsewhere
    # row 0: 0.7*[.8,.1,.1] + 0.3*[.1,.8,.1] = [.59, .31, .1]
    np.testing.assert_allclose(my, [[.59, .31, .1], [.1, .1, .8], [.31, .59, .1]], rtol=1e-5)
    np.testing.assert_allclose(my.sum(axis=1), 1.0, rtol=1e-6)


def test_mixup_lam_one_is_identity():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    mx_, my = mixup_batch(x, np.array([0, 1, 1]), 1.0, 2)
    np.testing.assert_array_equal(mx_, x)
    np.testing.assert_array_equal(my, [[1, 0], [0, 1], [0, 1]])


def test_mixup_schedule():
    s = MixupSchedule(alpha=0.2, off_epoch=5, num_epochs=20)
    rng = np.random.RandomState(7)
    lams = [s.lam(14, rng) for _ in range(3)]
    ref = np.random.RandomState(7)
    np.testing.assert_allclose(lams, [ref.beta(0.2, 0.2) for _ in range(3)])
    assert all(0 <= v <= 1 for v in lams)
    assert s.lam(15, rng) == 1.0 and s.lam(19, rng) == 1.0 and not s.active(15) and s.active(14)
    with pytest.raises(ValueError):
        MixupSchedule(0, 1, 2)
