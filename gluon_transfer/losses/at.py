"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): activation-based and gradient-based.

Activation-based AT, as ``szagoruyko/attention-transfer`` (``utils.py``) computes it
----------------------------------------------------------------------------------
For a feature map ``x`` of shape (N, C, H, W)::

    Q[n, :]   = mean_c |x[n, c, :, :]|^p                      flattened to (N, H*W)
    at(x)[n]  = Q[n] / max(||Q[n]||_2, 1e-12)                 per-sample L2 normalisation

(``p = 2`` gives the squared activations of the reference's ``x.pow(2).mean(1)``; the
reference has no ``p`` option and uses the channel mean, the paper a channel sum -- the
normalisation cancels the difference.) The normalisation is PyTorch's ``F.normalize``
(``v / max(||v||, eps)``, eps 1e-12), not MXNet's ``L2Normalization`` (``v / sqrt(sum v^2
+ 1e-10)``). One group's loss in the reference code (``mode='code'``)::

    at_loss(s, t) = mean over N*H*W of (at(s) - at(t))^2

and the objective adds ``beta * sum_groups at_loss`` (beta = 1e3, no 1/2). Student and
teacher may differ in channels; H, W must match.

``mode='paper'``: the paper's eq. (2) uses the un-squared L2 norm of the difference with
``beta/2`` and says beta is "1e3 divided by the number of elements in the attention map
and batch size". What this module computes for ``mode='paper'`` is exactly::

    at_loss_paper(s, t) = 1 / (2 * N * H * W) * sum_n ||at(s)[n] - at(t)[n]||_2

so that ``beta * at_loss_paper`` with beta = 1e3 is the paper's ``beta/2 * sum_n ||.||_2``
with beta normalised by N*H*W. (The paper's wording is unverified, see the reference
notes section 1.1; the reference code's form is the default.)

Multi-device: the reference sums per-GPU shard means, which multiplies beta by the GPU
count. Here the task contract (total = n_slice * mean) makes the loss device-count
independent; :class:`gluon_transfer.engine.tasks.Distill` offers the reference scaling
only as an explicit option (``--at-ngpu-scaling``).

In training (:class:`gluon_transfer.engine.tasks.Distill`), ``at(x)`` is computed inside the
networks' cached graphs by :class:`gluon_transfer.engine.tasks.AttentionTaps` (the same operators as
:func:`attention_map`, via :func:`attention_map_f`), and the group loss by
:func:`at_loss_from_maps` on the (N, H*W) maps.

Gradient-based AT (paper section 3.2; no reference code)
--------------------------------------------------------
``J_S = dL_S/dx`` and ``J_T = dL_T/dx`` (input gradients of the student's and teacher's
losses); the student minimises ``L_S + beta/2 * ||J_S - J_T||_2^2``. MXNet 1.9 cannot
differentiate through ``_backward_Convolution``, so the parameter gradient of the penalty is
obtained from first-order gradients only (:func:`grad_at_param_grads`)::

    d/dtheta (beta/2 ||J_S - J_T||^2) = beta * d/dtheta [J_S(theta) . v],   v = stop_grad(J_S - J_T)
                                      = beta * d/dtheta d/de L_S(x + e v) |_{e=0}
                                      ~ beta * (g(x + h v) - g(x - h v)) / (2 h),   g = dL_S/dtheta

a central difference along ``v`` (error O(h^2)). For ReLU networks ``J`` jumps where the
activation pattern flips, so the penalty is only piecewise continuous in theta: exact double
back-propagation (what PyTorch would compute) differentiates within the current pattern,
the central difference averages over the patterns met within ``x +- h v`` (h small).
"""
import mxnet as mx
from mxnet import autograd

from ..errors import ConfigError
from ..registry import LOSSES

__all__ = ['attention_map', 'attention_map_f', 'at_loss', 'at_loss_from_maps', 'check_spatial',
           'AT_MODES', 'input_gradient', 'grad_at_param_grads']

AT_MODES = ('code', 'paper')
NORM_EPS = 1e-12


def attention_map(x, p=2):
    """``at(x)``: (N, C, H, W) -> (N, H*W), the per-sample L2-normalised channel mean of
    ``|x|^p`` (the reference's ``F.normalize(x.pow(p).mean(1).view(N, -1))``).

    ``max(||q||, 1e-12)`` is computed as ``sqrt(max(sum q^2, 1e-24))`` -- the same value,
    but its gradient is 0 (not NaN) for an all-zero map, as PyTorch's clamp gives."""
    return attention_map_f(mx.nd, x, p, cast=x.dtype != 'float32')


def attention_map_f(F, x, p=2, cast=True):
    """:func:`attention_map` for ``F`` = ``mx.nd`` or ``mx.sym`` (the same operators, so the
    value inside a cached graph is the imperative one). ``cast``: compute in float32 (a
    float16/bfloat16 network's maps); off for float32 maps, to spare a copy."""
    if cast:
        x = F.cast(x, dtype='float32')
    if p == 2:
        q = F.square(x)
    elif p == 1:
        q = F.abs(x)
    else:
        q = F.abs(x) ** p
    # Channel mean as a 1x1 convolution with the constant weight 1/C (built from the map
    # itself: a symbol does not know C). MXNet's CPU reduction over axis 1 of NCHW is ~6x
    # slower, a batch_dot with a (N, 1, C) row ~2x (docs/benchmarks.md, distillation).
    w = F.slice_axis(F.slice_axis(F.slice_axis(q, axis=0, begin=0, end=1), axis=2, begin=0, end=1),
                     axis=3, begin=0, end=1)                         # (1, C, 1, 1)
    w = F.BlockGrad(F.ones_like(w))
    w = F.broadcast_div(w, F.sum(w, axis=1, keepdims=True))          # 1/C
    q = F.reshape(F.Convolution(q, w, kernel=(1, 1), num_filter=1, no_bias=True), (0, -1))   # (N, HW)
    norm = F.sqrt(F.maximum(F.sum(F.square(q), axis=1, keepdims=True), NORM_EPS ** 2))
    return F.broadcast_div(q, norm)


def check_spatial(s, t, group=None):
    """Raise ConfigError if the student and teacher maps differ in batch or spatial size."""
    if s.ndim != 4 or t.ndim != 4:
        raise ConfigError('attention transfer%s needs (N, C, H, W) maps, got student %s and teacher %s'
                          % (_gname(group), tuple(s.shape), tuple(t.shape)))
    if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ConfigError('attention transfer%s: student map %s and teacher map %s differ in batch or spatial '
                          'size (channels may differ, N/H/W may not)' % (_gname(group), tuple(s.shape), tuple(t.shape)))


def _gname(group):
    return '' if group is None else ' group %s' % group


def at_loss(s, t, p=2, mode='code', group=None):
    """One group's attention-transfer loss (a scalar NDArray; gradients flow into ``s``).

    ``mode='code'`` (default, the reference code): ``mean_{n,hw} (at(s) - at(t))^2``.
    ``mode='paper'``: ``sum_n ||at(s)[n] - at(t)[n]||_2 / (2 N H W)`` (see the module doc).
    ``t`` is treated as a constant (the teacher). ``group`` only names the group in errors.
    """
    if mode not in AT_MODES:
        raise ConfigError('unknown attention-transfer mode %r; valid: %s' % (mode, ', '.join(AT_MODES)))
    check_spatial(s, t, group)
    return at_loss_from_maps(attention_map(s, p), attention_map(t, p), mode)


def at_loss_from_maps(a_s, a_t, mode='code'):
    """:func:`at_loss` from attention maps ``a_s = at(s)``, ``a_t = at(t)`` (N, H*W) already
    computed (e.g. by :class:`AttentionTaps`); ``a_t`` is treated as a constant."""
    diff = a_s - a_t.detach()
    if mode == 'code':
        return mx.nd.square(diff).mean()
    n, hw = diff.shape
    # sqrt(max(., tiny)): the norm's gradient is 0 instead of NaN when the maps coincide.
    norms = mx.nd.sqrt(mx.nd.maximum(mx.nd.square(diff).sum(axis=1), 1e-30))
    return norms.sum() / (2.0 * n * hw)


LOSSES.register('at', at_loss)


# --------------------------------------------------------------------- gradient-based AT
def input_gradient(net_loss, x, train_mode=True):
    """``dL/dx`` for ``L = sum(net_loss(x))`` with ``x`` a constant input: a separate forward
    and backward that touches neither parameter ``.grad`` buffers nor an enclosing graph."""
    with autograd.pause():
        xv = x.copy()
        xv.attach_grad()
        with autograd.record(train_mode=train_mode):
            loss = net_loss(xv)
        return autograd.grad(loss, [xv], retain_graph=True, train_mode=train_mode)[0]


def grad_at_param_grads(net_loss, x, v, params, step=1e-3, train_mode=True):
    """Central-difference parameter gradient of ``J(theta) . v`` along the input direction ``v``.

    Returns ``(grads, h)``: ``grads[i] ~ d/dtheta_i [J_S . v]`` for each NDArray in ``params``
    (``J_S = dL/dx``, ``L = sum(net_loss(x))``), computed as
    ``(g(x + h v) - g(x - h v)) / (2 h)`` with ``g = dL/dtheta`` (two forward+backward passes),
    and the step ``h = step / rms(v)`` so that the perturbation's RMS is ``step`` in input
    units. The default 1e-3 balances O(h^2) truncation against float32 rounding (relative
    error ~1e-4 on the test network; 1e-2 gives ~1e-3, 1e-5 ~1e-2). ReLU networks are only
    piecewise smooth, so the difference averages the second derivative over the kinks
    within ``h v``. Parameter ``.grad`` buffers are left untouched (``autograd.grad``). Multiply by
    beta to get the gradient of ``beta/2 ||J_S - J_T||^2`` with ``v = J_S - J_T``.
    """
    rms = float(mx.nd.sqrt(mx.nd.square(v.astype('float32')).mean()).asscalar())
    if rms == 0.0:
        return [mx.nd.zeros_like(p) for p in params], 0.0
    h = step / rms
    out = []
    with autograd.pause():
        for sign in (1.0, -1.0):
            xv = x + sign * h * v
            with autograd.record(train_mode=train_mode):
                loss = net_loss(xv)
            out.append(autograd.grad(loss, params, train_mode=train_mode))
    return [(gp - gm) / (2.0 * h) for gp, gm in zip(*out)], h
