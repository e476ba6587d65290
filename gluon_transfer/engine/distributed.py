"""Kvstore choice, worker rank helpers and the ``DMLC_*`` environment of a ps-lite job.

Data-parallel training over MXNet's parameter-server kvstore (``dist_sync``) works like
multi-device training, with processes instead of devices:

* every worker holds a full replica of the network and reads its own shard of the data
  (``num_parts = num_workers``, ``part_index = rank``);
* per iteration each worker pushes its gradient ``g_r = sum over its b samples of
  d loss_i / d w``; the servers sum the pushes of all ``W`` workers and every worker pulls
  ``G = sum_r g_r`` (a sum over the global batch of ``B = W * b`` samples);
* every worker then runs the optimizer itself (``update_on_kvstore=False``) with
  ``rescale_grad = 1 / B`` -- the gradient of the mean loss over the global batch -- so
  the per-iteration LR schedule applies, and replicas stay bit-identical because they
  start from the same weights (``kvstore.init`` broadcasts rank 0's) and apply the same
  update to the same ``G``.

BatchNorm running statistics are not gradients: each worker's (and each device's) copy is an
exponential average over the batches *it* saw. At the end of every epoch the engine replaces
every copy by the mean over devices and workers (:func:`average_running_stats`), so that
evaluation, the metrics and the checkpoint see the same network on every worker.

Hence ``--lr`` is the learning rate of the global batch ``B``, and one epoch is
``len(shard) = N / (W * b)`` iterations per worker, which is also what the LR schedule counts.

Roles: the scheduler and the servers are plain ``python -c "import mxnet"`` processes
with ``DMLC_ROLE`` set (importing mxnet with that role runs ps-lite's loop and exits when
the workers finalise); ``gluon_transfer.launch`` starts them.
"""
import os
import socket

import numpy as np

from ..errors import ConfigError
from ..registry import unknown_name_message

__all__ = ['KVSTORES', 'is_distributed', 'create_kvstore', 'global_batch_size', 'allgather',
           'agree_epoch_length', 'broadcast_initial_params', 'running_stat_params', 'average_running_stats',
           'dmlc_env', 'find_free_port', 'DMLC_VARS']

# kvstore names the engine accepts ('none' = no kvstore: the trainer updates locally).
KVSTORES = ('none', 'local', 'device', 'nccl', 'dist_sync', 'dist_device_sync', 'dist_async',
            'dist_device_async')

# The variables ps-lite reads; the launcher sets them for every process it starts.
DMLC_VARS = ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER', 'DMLC_NUM_WORKER',
             'DMLC_NODE_HOST', 'DMLC_INTERFACE')

# A kvstore key the Trainer never uses (it numbers parameters 0..P-1). ps-lite picks a
# server by ``(key * 9973) % num_servers`` in 32-bit ints, so the key must stay below
# 2**31 / 9973 (~215000).
_AGREE_KEY = 199999
_STATS_KEY = 199998         # average_running_stats (same range rule)

# Parameter names of BatchNorm running statistics: Gluon's, and those of imported symbols.
RUNNING_STAT_SUFFIXES = ('running_mean', 'running_var', 'moving_mean', 'moving_var')


def _kv_type(kv):
    if kv is None:
        return 'none'
    return kv if isinstance(kv, str) else kv.type


def is_distributed(kv):
    """True for ``dist_*`` kvstores (a name or an ``mx.kv.KVStore``)."""
    return _kv_type(kv).startswith('dist')


def create_kvstore(kv):
    """A kvstore name (or an existing ``mx.kv.KVStore``) -> ``(kvstore, rank, num_workers)``.

    Single-process names are returned as strings for ``gluon.Trainer`` to create;
    ``'none'``/``''``/``None`` give ``None`` (no kvstore). ``dist_*`` names create the ps-lite
    worker, which needs the ``DMLC_*`` environment set by ``python -m gluon_transfer.launch``.
    Asynchronous kvstores are refused: they run the optimizer on the servers, where the
    per-iteration LR schedule cannot reach and whose state cannot be checkpointed.
    """
    if kv is None or kv in ('none', 'None', ''):
        return None, 0, 1
    if not isinstance(kv, str):
        check_supported(kv.type)
        return kv, kv.rank, kv.num_workers
    check_supported(kv)
    if not kv.startswith('dist'):
        return kv, 0, 1
    missing = [v for v in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_WORKER')
               if v not in os.environ]
    if missing:
        raise ConfigError('--kvstore %s needs the ps-lite environment (%s unset): start the job with '
                          'python -m gluon_transfer.launch -n WORKERS -s SERVERS --local -- COMMAND'
                          % (kv, ', '.join(missing)))
    if os.environ['DMLC_ROLE'] != 'worker':
        raise ConfigError('--kvstore %s: DMLC_ROLE is %r; training runs only in worker processes'
                          % (kv, os.environ['DMLC_ROLE']))
    import mxnet as mx
    store = mx.kv.create(kv)
    return store, store.rank, store.num_workers


def check_supported(name):
    if name not in KVSTORES:
        raise ConfigError(unknown_name_message('kvstore', name, KVSTORES))
    if name.startswith('dist') and 'async' in name:
        raise ConfigError('--kvstore %s is not supported: asynchronous kvstores update on the servers, so the '
                          'per-iteration LR schedule and the optimizer-state checkpoints cannot work; use dist_sync'
                          % name)


def global_batch_size(batch_size, num_workers):
    """Samples whose gradients one synchronous step sums: ``batch_size * num_workers``
    (every worker's training batches are full, by the iterator contract)."""
    return int(batch_size) * int(num_workers)


def allgather(kv, values):
    """Every worker's ``values`` (a short list of numbers), as a ``(num_workers, k)`` array.

    Built from the kvstore's sum: worker ``r`` pushes a ``(W, k)`` array that is zero
    except row ``r``; the servers add the ``W`` pushes. Values travel as float32, so they
    must be integers below 2**24 to come back exact (checked)."""
    import mxnet as mx
    values = np.asarray(values, dtype=np.float64).ravel()
    if np.any(np.abs(values) >= 2 ** 24) or np.any(values != np.round(values)):
        raise ValueError('allgather carries integers below 2**24, got %s' % values)
    w, k = kv.num_workers, values.size
    mine = np.zeros((w, k), dtype=np.float32)
    mine[kv.rank] = values
    # A second init of a key would reach the servers as a push (and hang a sync job).
    inited = getattr(kv, '_gluon_transfer_allgather', None)
    if inited is None:
        kv.init(_AGREE_KEY, mx.nd.zeros((w, k)))
        kv._gluon_transfer_allgather = k
    elif inited != k:
        raise ValueError('allgather on this kvstore carries %d values per worker, not %d' % (inited, k))
    out = mx.nd.zeros((w, k))
    kv.pushpull(_AGREE_KEY, mx.nd.array(mine), out=out)
    return out.asnumpy().astype(np.int64)


def agree_epoch_length(kv, num_batches, batch_size):
    """The iterations per epoch all workers run: the smallest shard's batch count.

    Shards differ by at most one sample, which can give one worker an extra batch; in a
    synchronous job that worker would wait forever for the others' pushes, and its LR
    schedule would count a different epoch length. Unequal batch sizes would make the
    gradient normalisation ``1 / (b * W)`` wrong, so they are an error."""
    table = allgather(kv, [num_batches, batch_size])
    sizes = sorted(set(int(b) for b in table[:, 1]))
    if len(sizes) > 1:
        raise ConfigError('workers disagree on the batch size (%s); every worker needs the same --batch-size '
                          'and number of devices' % ', '.join(map(str, sizes)))
    return int(table[:, 0].min())


def broadcast_initial_params(trainer):
    """Create the trainer's kvstore keys, broadcast rank 0's weights to every worker and
    wait until they arrived. Call it once every parameter is initialised (no deferred
    shapes left), before the first ``trainer.step``; best before the first forward pass.

    ``gluon.Trainer`` does this lazily inside the first ``step()``. Its broadcast (init +
    pull of the weights) and the push-pull of the first gradients then use the same keys
    with no dependency between them, and in MXNet 1.9.1 with ``update_on_kvstore=False``
    the server sometimes answers the weight pull with the summed gradients (2 runs in 6 in
    a loopback test), silently corrupting the weights. Waiting for the broadcast removes
    the race; doing it before the first forward also makes the first gradients come from
    rank 0's weights on every worker, as in a single-process run.

    Any forward pass before it must run in training mode (inside ``autograd.record()`` or
    ``autograd.train_mode()``): an inference-mode forward of a hybridized conv net lets
    oneDNN reorder the weights in place into its blocked layout, and pushing those fails
    ("can't generate TBlob for MKLDNN data") or, after re-assigning copies, made the
    servers see pulls before inits ("init K first") in loopback tests. The engine's
    first forward is a training one. (Uses Trainer internals of MXNet 1.9.1.)"""
    if any(p._deferred_init for p in trainer._params):
        raise ValueError('broadcast_initial_params: run a forward pass first (deferred parameter shapes)')
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    for p in trainer._params:
        for d in p.list_data():
            d.wait_to_read()


def running_stat_params(params):
    """The BatchNorm running statistics among ``params`` (Parameters, or a ParameterDict):
    parameters with ``grad_req='null'`` whose names end with one of ``RUNNING_STAT_SUFFIXES``
    (other no-gradient parameters, e.g. the AFS gates' masks, are set by code, not averaged
    from data, and are left alone). Unique by name, in the given order."""
    if hasattr(params, 'values'):
        params = params.values()
    seen, out = set(), []
    for p in params:
        if p.grad_req == 'null' and p.name.endswith(RUNNING_STAT_SUFFIXES) and p.name not in seen:
            seen.add(p.name)
            out.append(p)
    return out


def average_running_stats(kv, params):
    """Replace every copy of each BatchNorm running statistic in ``params`` by its mean over
    the devices and the workers; returns how many parameters were averaged (0 when there is
    one copy of each: one device, no ``dist_*`` kvstore with more than one worker).

    For a statistic with copy ``s_{r,d}`` on device ``d`` of worker ``r`` (``D`` devices,
    ``W`` workers), every copy becomes ``s = (1/W) sum_r (1/D) sum_d s_{r,d}``. Each copy
    is an exponential moving average ``s <- m s + (1 - m) b_t`` of its own batches'
    statistics ``b_t`` (mean, or unbiased variance, of a device's slice); the update is
    linear, so the mean of the copies is the same moving average of the per-step mean of
    the slices' statistics, whenever (and how often) the averaging happens. For the mean
    that is the global batch's mean; for the variance it is the mean within-slice variance
    (the spread between the slices' means is not in it), as with per-device BatchNorm on
    several GPUs. The device mean is what ``save_parameters`` already stored.

    Distributed: one push-pull of all statistics as one float32 vector under a key the
    Trainer never uses; the servers sum the ``W`` pushes and every worker divides the same
    sum by ``W``, so the copies are bit-identical on all workers afterwards. Every worker
    must call it at the same point (it is collective), with the same parameter set."""
    import mxnet as mx
    stats = running_stat_params(params)
    dist = kv is not None and is_distributed(kv) and kv.num_workers > 1
    if not stats or not (dist or any(len(p.list_ctx()) > 1 for p in stats)):
        return 0
    cpu = mx.cpu()
    local = []
    for p in stats:
        copies = [d.copyto(cpu).astype('float32').reshape((-1,)) for d in p.list_data()]
        local.append(copies[0] if len(copies) == 1 else mx.nd.add_n(*copies) / len(copies))
    flat = mx.nd.concat(*local, dim=0) if len(local) > 1 else local[0]
    if dist:
        n = int(flat.size)
        inited = getattr(kv, '_gluon_transfer_stats_size', None)
        if inited is None:      # a key is initialised once per kvstore (a second init would hang)
            kv.init(_STATS_KEY, mx.nd.zeros((n,)))
            kv._gluon_transfer_stats_size = n
        elif inited != n:
            raise ValueError('average_running_stats: this kvstore carries %d statistics, not %d' % (inited, n))
        total = mx.nd.zeros((n,))
        kv.pushpull(_STATS_KEY, flat, out=total)
        flat = total / kv.num_workers
    start = 0
    for p in stats:
        size = int(np.prod(p.shape))
        p.set_data(flat[start:start + size].reshape(p.shape).astype(p.dtype))
        start += size
    return len(stats)


def dmlc_env(role, root_uri, root_port, num_workers, num_servers, node_host=None, interface=None):
    """The ``DMLC_*`` variables of one ps-lite process (all values strings).

    ``node_host`` is the address this process binds and announces (ps-lite otherwise picks
    the first non-loopback interface, so loopback jobs need ``127.0.0.1``); ``interface``
    names the network interface instead."""
    if role not in ('scheduler', 'server', 'worker'):
        raise ValueError('unknown DMLC role %r' % role)
    env = {'DMLC_ROLE': role, 'DMLC_PS_ROOT_URI': str(root_uri), 'DMLC_PS_ROOT_PORT': str(int(root_port)),
           'DMLC_NUM_WORKER': str(int(num_workers)), 'DMLC_NUM_SERVER': str(int(num_servers))}
    if node_host:
        env['DMLC_NODE_HOST'] = str(node_host)
    if interface:
        env['DMLC_INTERFACE'] = str(interface)
    return env


def find_free_port(host='127.0.0.1'):
    """A TCP port nobody listens on now: bind port 0 and read what the kernel chose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
