"""What the engine optimises for one device slice.

A task turns ``(net, data, target, label)`` into ``(total, logits, terms)`` inside
``autograd.record()``:

* ``total`` -- the SUM over the slice's samples of the per-sample objective. The engine
  calls ``trainer.step(global_batch)``, which divides gradients by the global batch size,
  so a loss that is a batch mean (attention transfer, a parameter penalty) enters as
  ``n_slice * value``. The gradient then equals the global-batch mean however the batch
  is split over devices: nothing silently scales with the device count;
* ``logits`` -- the student's class scores, for accuracy;
* ``terms`` -- ``{name: scalar NDArray}``, each a per-sample mean over the slice (already
  multiplied by its weight), logged separately every epoch.

``target`` is what cross-entropy uses (class indices, or a (N, K) distribution under
mixup / label smoothing); ``label`` is always the hard class index.
"""
import mxnet as mx
from mxnet import gluon


def logits_of(out):
    """The class scores of a network output (``logits`` or ``(logits, features)``)."""
    return out[0] if isinstance(out, (list, tuple)) else out


class Task:
    name = 'task'

    def blocks(self):
        """Trainable loss modules ``{name: Block}``: trained with the student, saved in
        checkpoints, never exported."""
        return {}

    def setup(self, net, ctx):
        """Called once after the network is initialised on ``ctx`` (a context list)."""

    def loss(self, net, data, target, label):
        raise NotImplementedError

    def predict(self, net, data):
        return logits_of(net(data))


def cross_entropy(logits, target):
    """Per-sample softmax cross-entropy, in float32 whatever the network's dtype:
    ``-log softmax(z)[y]`` for class indices, ``-sum_k q_k log softmax(z)_k`` for a
    distribution ``q`` (mixup / label smoothing)."""
    logits = logits.astype('float32', copy=False)
    logp = mx.nd.log_softmax(logits, axis=-1)
    if target.ndim == 1:
        return -mx.nd.pick(logp, target, axis=-1)
    return -mx.nd.sum(logp * target, axis=-1)


class Classify(Task):
    """Plain supervised training: ``total = sum_i CE(z_i, target_i)``."""
    name = 'classify'

    def loss(self, net, data, target, label):
        logits = logits_of(net(data))
        ce = cross_entropy(logits, target)
        return ce.sum(), logits, {'ce': ce.mean()}
