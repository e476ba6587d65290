"""Knowledge distillation (Hinton et al.) as ``szagoruyko/attention-transfer`` computes it
(``utils.distillation`` after PR #30, 2018-07)::

    p = log_softmax(z_s / T),  q = softmax(z_t / T)
    KD = alpha * T^2 * (1/N) * sum_n sum_k q[n,k] (log q[n,k] - p[n,k])  +  (1 - alpha) * mean_n CE(z_s[n], y[n])

i.e. PyTorch's ``kl_div(p, q, size_average=False) * T**2 / N``: the KL divergence summed over
the classes and averaged over the batch (Gluon's ``KLDivLoss`` averages over the classes as
well, which would divide by K -- it is not used). Defaults T = 4, alpha = 0.9 (the README's
KD run). The legacy 2017 code's ``kl_div(...) * 2 * alpha * T^2`` (mean over N*K) differs by
2/K and is not reproduced. ``q log q`` uses ``log_softmax`` of the teacher, so a class whose
probability underflows contributes 0 (``xlogy`` convention).
"""
import mxnet as mx

from ..registry import LOSSES
from .ce import cross_entropy

__all__ = ['kd_loss', 'kd_per_sample', 'kl_per_sample']


def kl_per_sample(student_logits, teacher_logits, temperature=4.0):
    """``sum_k q_k (log q_k - log p_k)`` per sample (N,), with ``p, q`` the softened student
    and teacher distributions; gradients flow into the student only."""
    t = float(temperature)
    logp = mx.nd.log_softmax(student_logits.astype('float32', copy=False) / t, axis=-1)
    logq = mx.nd.log_softmax(teacher_logits.astype('float32', copy=False).detach() / t, axis=-1)
    return (mx.nd.exp(logq) * (logq - logp)).sum(axis=-1)


def kd_per_sample(student_logits, teacher_logits, target, temperature=4.0, alpha=0.9):
    """Per-sample ``(alpha * T^2 * KL_n, (1 - alpha) * CE_n)``, both (N,). ``target`` is class
    indices (N,) or a distribution (N, K) (mixup / label smoothing)."""
    t = float(temperature)
    kd = kl_per_sample(student_logits, teacher_logits, t) * (float(alpha) * t * t)
    ce = cross_entropy(student_logits, target) * (1.0 - float(alpha))
    return kd, ce


def kd_loss(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9):
    """The combined KD + CE loss (a scalar NDArray), the reference's ``distillation``:
    ``alpha * T^2 * mean_n KL_n + (1 - alpha) * mean_n CE_n``."""
    kd, ce = kd_per_sample(student_logits, teacher_logits, labels, temperature, alpha)
    return (kd + ce).mean()


LOSSES.register('kd', kd_loss)
