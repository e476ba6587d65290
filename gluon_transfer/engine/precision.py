"""Numeric precision: float32, float16 (GPU) and bfloat16 AMP (CPU).

* ``float16``: the network is cast (GluonCV/Gluon BatchNorm keeps float32 statistics),
  inputs are cast, the optimizer keeps float32 master weights (``multi_precision=True``)
  and the loss is computed in float32. MXNet 1.9.1 has no float16 GEMM on CPU
  (``FP16 gemm on cpu not implemented``), so it is refused on CPU contexts. On GPU,
  ``export MXNET_SAFE_ACCUMULATION=1`` is recommended (as open-aff's command lines do).
* ``bfloat16``: ``mx.contrib.amp`` with ``target_dtype='bfloat16'``; ``amp.init`` must run
  before the network is built, and ``amp.init_trainer`` after the trainer. It runs on
  CPU but was measured slower than float32 on the project machine (oneDNN 2.4 uses no
  AMX): it is an option, not a default.
"""
from ..errors import ConfigError

DTYPES = ('float32', 'float16', 'bfloat16')
_amp_initialised = []


def check_precision(dtype, ctx):
    if dtype not in DTYPES:
        raise ConfigError('unknown --dtype %r; valid: %s' % (dtype, ', '.join(DTYPES)))
    if dtype == 'float16' and any(c.device_type == 'cpu' for c in ctx):
        raise ConfigError('--dtype float16 needs GPUs: MXNet 1.9.1 has no float16 GEMM on CPU '
                          '(use --dtype float32, or bfloat16 AMP)')


def setup_precision(dtype, ctx):
    """Validate ``dtype`` for ``ctx``; for bfloat16 switch AMP on. Call before building nets."""
    check_precision(dtype, ctx)
    if dtype == 'bfloat16' and not _amp_initialised:
        from mxnet.contrib import amp
        amp.init(target_dtype='bfloat16')
        _amp_initialised.append(True)


def prepare_net(net, dtype):
    if dtype == 'float16':
        net.cast('float16')


def prepare_trainer(trainer, dtype):
    if dtype == 'bfloat16':
        from mxnet.contrib import amp
        amp.init_trainer(trainer)


def input_dtype(dtype):
    return 'float16' if dtype == 'float16' else 'float32'
