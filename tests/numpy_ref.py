"""Independent numpy reference operators for tests (float64, NCHW, OIHW weights)."""
import numpy as np


def conv2d(x, w, b=None, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.einsum('nchwij,ocij->nohw', win, w, optimize=True)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out


def bn_eval(x, gamma, beta, mean, var, eps=1e-5):
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) + beta.reshape(shape)


def affine(x, a, b):
    return x * a.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)


def relu(x):
    return np.maximum(x, 0)


def maxpool3s2(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return win.max(axis=(4, 5))


def global_avg(x):
    return x.mean(axis=(2, 3))


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def mean_ce_grad_logits(z, labels):
    """d/dz of the mean softmax cross-entropy over the rows of ``z``: (softmax(z) - onehot) / N."""
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels)
