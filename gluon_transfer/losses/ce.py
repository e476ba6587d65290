"""Softmax cross-entropy, the task loss every method adds its terms to::

    CE(z, y) = -log softmax(z)[y]                     (y a class index)
    CE(z, q) = -sum_k q_k log softmax(z)_k            (q a distribution: mixup / label smoothing)

per sample, computed in float32 whatever the network's dtype (``log_softmax`` of float16
logits loses the small probabilities the loss depends on)."""
import mxnet as mx

from ..registry import LOSSES

__all__ = ['cross_entropy']


def cross_entropy(logits, target):
    """Per-sample softmax cross-entropy (N,), in float32: ``-log softmax(z)[y]`` for class
    indices ``y`` (N,), ``-sum_k q_k log softmax(z)_k`` for a distribution ``q`` (N, K)."""
    logits = logits.astype('float32', copy=False)
    logp = mx.nd.log_softmax(logits, axis=-1)
    if target.ndim == 1:
        return -mx.nd.pick(logp, target, axis=-1)
    return -mx.nd.sum(logp * target, axis=-1)


LOSSES.register('ce', cross_entropy)
