"""Mixup and label smoothing as open-aff's train_cifar.py / train_imagenet.py apply them.

* ``onehot_eta(y) = (1 - eta) * onehot(y) + eta / K``  (K classes; eta = 0.1 when label
  smoothing is on, 0 otherwise);
* mixup with ``lam ~ Beta(alpha, alpha)`` drawn once per batch::

      X' = lam * X + (1 - lam) * X[::-1]
      Y' = lam * onehot_eta(y) + (1 - lam) * onehot_eta(y[::-1])

  i.e. each sample is mixed with the sample at the mirrored batch position (batch
  reversal), as the reference does within each device slice;
* mixup is switched off (lam = 1) for the last ``off_epoch`` epochs.
The paper (Zhang et al., 2018) pairs samples by a random permutation; the reference's
reversal is what is implemented here.
"""
import numpy as np
import mxnet as mx

__all__ = ['smooth_labels', 'mixup_batch', 'MixupSchedule']


def _is_nd(x):
    return isinstance(x, mx.nd.NDArray)


def smooth_labels(label, num_classes, eta=0.0):
    """Soft targets ``(1 - eta) * onehot(label) + eta / num_classes``, shape (N, K).

    ``label``: integer class ids (N,) as numpy or NDArray; returns the same kind (float32)."""
    nd = _is_nd(label)
    y = (label.asnumpy() if nd else np.asarray(label)).astype(np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError('labels must lie in [0, %d), got %d..%d' % (num_classes, y.min(), y.max()))
    out = np.full((y.size, num_classes), eta / float(num_classes), dtype=np.float32)
    out[np.arange(y.size), y] += 1.0 - eta
    return mx.nd.array(out, ctx=label.context, dtype='float32') if nd else out


def mixup_batch(data, label, lam, num_classes, eta=0.0):
    """``(lam * X + (1 - lam) * X[::-1], lam * onehot_eta(y) + (1 - lam) * onehot_eta(y[::-1]))``.

    ``data`` (N, ...) and ``label`` (N,) as numpy arrays or NDArrays (same kind back).
    With ``lam == 1`` the data is returned unchanged and the labels are ``onehot_eta(y)``.
    """
    lam = float(lam)
    soft = smooth_labels(label, num_classes, eta)
    if _is_nd(data):
        rev = mx.nd.flip(data, axis=0)
        soft_rev = mx.nd.flip(soft, axis=0) if _is_nd(soft) else soft[::-1]
    else:
        rev, soft_rev = data[::-1], soft[::-1]
    if lam == 1.0:
        return data, soft
    return lam * data + (1.0 - lam) * rev, lam * soft + (1.0 - lam) * soft_rev


class MixupSchedule:
    """Per-batch mixing coefficients: ``lam ~ Beta(alpha, alpha)`` from the given
    ``np.random.RandomState``, and ``lam = 1`` (no mixing, no draw) once
    ``epoch >= num_epochs - off_epoch`` (open-aff: ``--mixup-off-epoch``)."""

    def __init__(self, alpha, off_epoch, num_epochs):
        if alpha <= 0:
            raise ValueError('mixup alpha must be > 0, got %r' % (alpha,))
        self.alpha, self.off_epoch, self.num_epochs = float(alpha), int(off_epoch), int(num_epochs)

    def active(self, epoch):
        return epoch < self.num_epochs - self.off_epoch

    def lam(self, epoch, rng):
        """lam for one batch of ``epoch``."""
        if not self.active(epoch):
            return 1.0
        return float(rng.beta(self.alpha, self.alpha))
