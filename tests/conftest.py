import os
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import mxnet as mx  # noqa: F401

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture
def cifar10_shared():
    """Path of the real CIFAR-10 RecordIO set beside the checkout, or skip."""
    path = os.path.join(SHARED_DATA, 'cifar10')
    if not os.path.isfile(os.path.join(path, 'val.rec')):
        pytest.skip('real CIFAR-10 not present at %s' % path)
    return path
