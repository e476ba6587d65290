"""gluon_transfer: attentional fusion, attention transfer and transfer-learning methods
for GluonCV ResNets on MXNet/Gluon, with one data layer and one training engine."""
import warnings as _warnings

from . import threads as _threads

__version__ = '0.1.0'

# one OpenMP thread per physical core where MXNet would take fewer (see gluon_transfer.threads);
# must run before MXNet loads
_threads.apply()

with _warnings.catch_warnings():
    # mxnet 1.9.1 and gluoncv import deprecated numpy/distutils names at import time.
    _warnings.simplefilter('ignore', DeprecationWarning)
    import mxnet as _mx  # noqa: F401

from .errors import GluonTransferError, DataError, ConfigError, CheckpointError  # noqa: E402
from .registry import MODELS  # noqa: E402
from .zoo import get_model, list_models  # noqa: E402

__all__ = ['get_model', 'list_models', '__version__', 'GluonTransferError', 'DataError',
           'ConfigError', 'CheckpointError']
