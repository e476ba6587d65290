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
from mxnet import autograd, gluon

from ..losses.ce import cross_entropy


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

    def after_backward(self, net):
        """Called by the engine after ``autograd.backward`` of every slice's ``total`` and
        before ``trainer.step``, outside ``autograd.record()``. A task may add gradients it
        computes itself to the parameters' ``.grad`` buffers here (gradient-based attention
        transfer adds a finite-difference second-order term); the default does nothing."""


class Classify(Task):
    """Plain supervised training: ``total = sum_i CE(z_i, target_i)``."""
    name = 'classify'

    def loss(self, net, data, target, label):
        logits = logits_of(net(data))
        ce = cross_entropy(logits, target)
        return ce.sum(), logits, {'ce': ce.mean()}


# ------------------------------------------------------------------ distillation
import warnings  # noqa: E402  (used by AttentionTaps and Distill only)


class AttentionTaps(gluon.SymbolBlock):
    """``view(x) -> (logits, [at(map_g) for each tap])``: one cached graph of ``net``'s forward
    that also computes the attention maps (N, H*W) of the tapped feature maps (taps as in
    :func:`~gluon_transfer.nn.feature.feature_symbols`; ``at`` is
    :func:`gluon_transfer.losses.at.attention_map_f`, the operators of
    :func:`~gluon_transfer.losses.at.attention_map`). It shares ``net``'s parameters, so
    training through it trains ``net``. Compared with tapping the (N, C, H, W) maps and
    reducing them imperatively, the graph outputs only the small maps, the reductions run
    inside the cached op's memory plan, and no per-op Python dispatch remains
    (docs/benchmarks.md, distillation). The maps are computed in float32 when the network
    is not (float16 parameters, or bfloat16 AMP switched on by
    :func:`~gluon_transfer.engine.precision.setup_precision`)."""

    def __init__(self, net, names, p=2):
        import numpy as np
        from ..losses.at import attention_map_f
        from ..nn.feature import feature_symbols
        from . import precision
        names = tuple([names] if isinstance(names, str) else names)
        data, logits, maps = feature_symbols(net, names)
        cast = bool(precision._amp_initialised) or any(
            par.dtype not in ('float32', np.float32) for par in net.collect_params().values())
        ats = [attention_map_f(mx.sym, m, p, cast=cast) for m in maps]
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'Cannot decide type')   # the input dtype comes with the first call
            super().__init__([logits] + ats, data, params=net.collect_params())
        self.feature_names = names
        self.p = p

    def forward(self, x, *args):
        out = super().forward(x, *args)
        return out[0], list(out[1:])


class Distill(Task):
    """Knowledge distillation and attention transfer from a frozen teacher
    (``szagoruyko/attention-transfer`` ``cifar.py``/``imagenet.py``; math in
    :mod:`gluon_transfer.losses.kd` and :mod:`gluon_transfer.losses.at`).

    Per slice of ``n`` samples (the engine divides by the global batch)::

        total = sum_i [ alpha T^2 KL_i + (1 - alpha) CE_i ]                  (alpha = 0: sum_i CE_i)
              + n * beta * s * sum_g at_loss(student_g, teacher_g)             (beta = 0: no AT)
              + sum_i grad_at_beta / 2 * ||J_S[i] - J_T[i]||^2                 (gradient-based AT)

    ``s`` is 1, or the number of devices with ``at_ngpu_scaling=True`` -- the reference's
    multi-GPU behaviour (it sums per-GPU shard means, so its effective beta grows with the
    GPU count); by default the objective does not depend on how the batch is split.

    Logged terms (per-sample means, weighted): ``ce`` ((1 - alpha) CE), ``kd``,
    ``at_g0``, ``at_g1``... (``beta * s * at_loss`` of group g), ``grad_at``.

    The teacher runs in inference mode (BN running statistics) under ``autograd.pause()``
    on every device; its parameters get ``grad_req='null'`` and are never given to the
    trainer (:meth:`blocks` is empty). With attention transfer, student and teacher each run
    as one static cached graph (:class:`AttentionTaps`, sharing the
    network's parameters) that returns the logits and the (N, H*W) attention maps of the
    tapped stages (the network's own feature API when it was built with exactly these taps,
    else symbol internals); only the small maps leave the graphs, and the per-group loss is
    a few element-wise ops on them. Logged terms stay lazy NDArrays (no host sync per step).
    The tap shapes are checked once: at :meth:`setup` with ``input_shape`` (e.g.
    ``(1, 3, 32, 32)``), else at the first batch, by one inference forward of the tapped
    views (``_student``/``_teacher``, returning the raw maps); a group whose spatial sizes
    differ (or, with KD, different class counts) is a one-line ConfigError.

    Gradient-based AT (``grad_at_beta > 0``): ``J = d(sum_i CE_i)/dx`` of the student (train
    mode, as its loss) and of the teacher (inference mode). The penalty's parameter gradient
    ``grad_at_beta * d/dtheta [J_S . v]``, ``v = stop_grad(J_S - J_T)``, is a central
    difference of first-order gradients along ``v`` (:func:`~gluon_transfer.losses.at.
    grad_at_param_grads`, step ``grad_at_step`` in input RMS units), added to the parameters'
    gradients in :meth:`after_backward`. Cost per step on top of distillation: one
    forward+backward of the teacher and three of the student (J_S and the two differences),
    about 5x the time of a distillation step on CPU (docs/benchmarks.md). BN running
    statistics touched by these extra passes are restored, so only the main pass updates
    them; the extra passes synchronise the device (``waitall``) around that. A float16 student
    (``--dtype float16``) is refused with gradient-based AT: the step of the central difference
    (1e-3 of the input RMS) is about one float16 rounding step, so the difference would be noise.
    """
    name = 'distill'

    def __init__(self, teacher, student_taps=(), teacher_taps=None, beta=0.0, alpha=0.0, temperature=4.0,
                 at_mode='code', at_p=2, at_ngpu_scaling=False, grad_at_beta=0.0, grad_at_step=1e-3,
                 input_shape=None):
        from ..errors import ConfigError
        from ..losses.at import AT_MODES
        if at_mode not in AT_MODES:
            raise ConfigError('unknown --at-mode %r; valid: %s' % (at_mode, ', '.join(AT_MODES)))
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError('--kd-alpha must be in [0, 1], got %g' % alpha)
        if temperature <= 0:
            raise ConfigError('--kd-temperature must be positive, got %g' % temperature)
        if beta < 0 or grad_at_beta < 0:
            raise ConfigError('--at-beta and --grad-at-beta must be >= 0')
        if beta == 0 and alpha == 0 and grad_at_beta == 0:
            raise ConfigError('a teacher is given but --at-beta, --kd-alpha and --grad-at-beta are all 0: '
                              'nothing would be transferred')
        student_taps = tuple(student_taps or ())
        teacher_taps = tuple(teacher_taps) if teacher_taps is not None else student_taps
        if beta > 0 and not student_taps:
            raise ConfigError('attention transfer (--at-beta > 0) needs student taps (e.g. stage1,stage2,stage3)')
        if len(student_taps) != len(teacher_taps):
            raise ConfigError('%d student taps (%s) but %d teacher taps (%s): attention transfer pairs them by '
                              'position' % (len(student_taps), ','.join(student_taps), len(teacher_taps),
                                            ','.join(teacher_taps)))
        self.teacher = teacher
        self.student_taps = student_taps if beta > 0 else ()
        self.teacher_taps = teacher_taps if beta > 0 else ()
        self.beta, self.alpha, self.temperature = float(beta), float(alpha), float(temperature)
        self.at_mode, self.at_p = at_mode, at_p
        self.at_ngpu_scaling = bool(at_ngpu_scaling)
        self.grad_at_beta, self.grad_at_step = float(grad_at_beta), float(grad_at_step)
        self.input_shape = tuple(input_shape) if input_shape else None
        self.at_scale = 1.0
        self._student = self._teacher = self._student_at = self._teacher_at = None
        self._sdtype = 'float32'
        self._checked = False
        self._grad_views = None
        self._pending = []

    # ---------------------------------------------------------------- set-up
    def setup(self, net, ctx):
        from ..errors import ConfigError
        from ..nn.feature import net_input_dtype, tapped
        ctx = list(ctx)
        self._sdtype = net_input_dtype(net)
        if self.grad_at_beta > 0 and self._sdtype == 'float16':
            raise ConfigError('--grad-at-beta needs --dtype float32: its central difference moves the input by '
                              '--grad-at-step (%g) in RMS, while float16 resolves only 2^-10 (~1e-3) at unit scale'
                              % self.grad_at_step)
        tparams = self.teacher.collect_params()
        tparams.setattr('grad_req', 'null')
        tparams.reset_ctx(ctx)
        self.at_scale = float(len(ctx)) if self.at_ngpu_scaling else 1.0
        self._student = tapped(net, self.student_taps) if self.student_taps else net
        self._teacher = tapped(self.teacher, self.teacher_taps) if self.teacher_taps else self.teacher
        self._teacher.hybridize(static_alloc=True)
        if self._student is not net:
            self._student.hybridize(static_alloc=True)
        if self.student_taps:
            # The training path: one cached graph per network returning the logits and the
            # (N, H*W) attention maps (see AttentionTaps); the raw views above only serve the
            # start-up shape check and inspection.
            self._student_at = AttentionTaps(net, self.student_taps, self.at_p)
            self._teacher_at = AttentionTaps(self.teacher, self.teacher_taps, self.at_p)
            self._student_at.hybridize(static_alloc=True, static_shape=True)
            self._teacher_at.hybridize(static_alloc=True, static_shape=True)
        self._tdtype = next(iter(tparams.values())).dtype
        if self.input_shape:
            self.check_shapes(ctx[0])
            self._checked = True
        if self.grad_at_beta > 0:
            self._grad_views = (_logits_view(net), _logits_view(self.teacher))
            for view in self._grad_views:
                view.hybridize(static_alloc=True)
            self._trainable = [p for p in net.collect_params().values() if p.grad_req != 'null']
            self._frozen = [p for p in net.collect_params().values() if p.grad_req == 'null']

    def check_shapes(self, ctx):
        """One inference forward of student and teacher at ``input_shape``: the tap counts,
        each group's spatial size and (for KD / gradient AT) the class counts must agree."""
        from ..errors import ConfigError
        x = mx.nd.zeros(self.input_shape, ctx=ctx, dtype=self._sdtype)   # the engine's input dtype
        with autograd.pause(train_mode=False):
            s_logits, s_maps = self._forward(self._student, x, bool(self.student_taps))
            t_logits, t_maps = self._forward(self._teacher, x.astype(self._tdtype), bool(self.teacher_taps))
        for g, (s, t) in enumerate(zip(s_maps, t_maps)):
            if s.shape[2:] != t.shape[2:]:
                raise ConfigError('attention-transfer group g%d (student %r, teacher %r): student map %s vs teacher '
                                  'map %s at input %s: spatial sizes differ' % (
                                      g, self.student_taps[g], self.teacher_taps[g], tuple(s.shape), tuple(t.shape),
                                      self.input_shape))
        if (self.alpha > 0 or self.grad_at_beta > 0) and s_logits.shape[1] != t_logits.shape[1]:
            raise ConfigError('knowledge distillation needs the same classes: the student has %d outputs, the '
                              'teacher %d' % (s_logits.shape[1], t_logits.shape[1]))

    @staticmethod
    def _forward(block, x, with_maps):
        out = block(x)
        if with_maps:
            return out[0], list(out[1])
        return logits_of(out), []

    # ---------------------------------------------------------------- loss
    def loss(self, net, data, target, label):
        from ..losses.at import at_loss_from_maps
        from ..losses.kd import kd_per_sample
        n = data.shape[0]
        t_data = data.astype(self._tdtype, copy=False)
        if self.student_taps:
            if not self._checked:       # once: a clear error instead of a broadcast error
                self.input_shape = self.input_shape or (1,) + tuple(data.shape[1:])
                self.check_shapes(data.context)
                self._checked = True
            logits, s_at = self._student_at(data)
            with autograd.pause(train_mode=False):
                t_logits, t_at = self._teacher_at(t_data)
        else:
            logits = logits_of(net(data))
            with autograd.pause(train_mode=False):
                t_logits = logits_of(self._teacher(t_data))
            s_at = t_at = ()
        terms = {}
        if self.alpha > 0:
            kd, ce = kd_per_sample(logits, t_logits, target, self.temperature, self.alpha)
            total = (kd + ce).sum()
            terms['kd'] = kd.mean()
        else:
            ce = cross_entropy(logits, target)
            total = ce.sum()
        terms['ce'] = ce.mean()
        for g, (a_s, a_t) in enumerate(zip(s_at, t_at)):
            a = at_loss_from_maps(a_s, a_t, self.at_mode) * (self.beta * self.at_scale)
            total = total + a * n
            terms['at_g%d' % g] = a
        if self.grad_at_beta > 0:
            pen = self._grad_at_prepare(data, target)
            total = total + pen.sum()
            terms['grad_at'] = pen.mean()
        return total, logits, terms

    # ---------------------------------------------------------------- gradient-based AT
    def _grad_at_prepare(self, data, target):
        """J_S, J_T and the per-sample penalty ``beta/2 ||J_S[i] - J_T[i]||^2`` (a constant);
        stashes ``(x, target, v)`` for :meth:`after_backward`."""
        from ..losses.at import input_gradient
        s_view, t_view = self._grad_views
        with autograd.pause():
            x = data.astype('float32', copy=False).detach()
            saved = _snapshot(self._frozen, x.context)
            j_s = input_gradient(lambda xv: cross_entropy(s_view(xv), target), x, train_mode=True)
            _restore(saved)
            j_t = input_gradient(lambda xv: cross_entropy(t_view(xv.astype(self._tdtype)), target), x,
                                 train_mode=False)
            v = j_s - j_t.astype('float32')
            pen = mx.nd.square(v).reshape((0, -1)).sum(axis=1) * (0.5 * self.grad_at_beta)
        self._pending.append((x, target, v))
        return pen

    def after_backward(self, net):
        """Adds ``grad_at_beta * d/dtheta [J_S . v]`` (central difference) to the student's
        gradients, slice by slice, on each slice's device."""
        if not self._pending:
            return
        from ..losses.at import grad_at_param_grads
        s_view = self._grad_views[0]
        for x, target, v in self._pending:
            ctx = x.context
            saved = _snapshot(self._frozen, ctx)
            arrays = [p.data(ctx) for p in self._trainable]
            grads, _ = grad_at_param_grads(lambda xv: cross_entropy(s_view(xv), target), x, v, arrays,
                                           step=self.grad_at_step, train_mode=True)
            _restore(saved)
            for p, g in zip(self._trainable, grads):
                p.grad(ctx)[:] += g * self.grad_at_beta
        self._pending = []


def _logits_view(net):
    """A SymbolBlock computing ``net``'s logits with ``net``'s own parameters: a separate
    cached graph, so the extra passes of gradient AT never reuse the buffers the engine's
    forward keeps for its backward."""
    data = mx.sym.var('data')
    out = net(data)
    if isinstance(out, (list, tuple)):
        out = out[0]
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Cannot decide type')   # the input dtype comes with the first call
        return gluon.SymbolBlock(out, data, params=net.collect_params())


def _snapshot(params, ctx):
    # A hybridized (static_alloc) network writes BN running statistics in its backward
    # without a dependency the copy below would wait for: synchronise first.
    mx.nd.waitall()
    return [(p.data(ctx), p.data(ctx).copy()) for p in params]


def _restore(saved):
    for arr, value in saved:
        value.copyto(arr)
    mx.nd.waitall()


def build_teacher(name, params, classes, ctx, features=(), allow_random=False, logger=None):
    """The teacher network for :class:`Distill`: ``get_model(name, classes=classes)`` (our
    registered networks are built with ``features=features``), initialised on ``ctx`` and
    loaded from ``params`` with key/shape checks. A random teacher is a ConfigError unless
    ``allow_random`` (for tests)."""
    from ..errors import ConfigError
    from ..registry import MODELS
    from ..weights import load_params, describe_load
    from ..zoo import get_model, _register_builtin
    _register_builtin()
    if not params and not allow_random:
        raise ConfigError('teacher %r needs --teacher-params FILE (a random teacher transfers nothing; pass '
                          '--teacher-random to allow it for testing)' % name)
    kwargs = {'classes': classes}
    if name in MODELS and features:
        kwargs['features'] = tuple(features)
    teacher = get_model(name, **kwargs)
    teacher.initialize(mx.init.Xavier(), ctx=list(ctx))
    if params:
        report = load_params(teacher, params, ctx=list(ctx))
        if logger is not None:
            logger.info('teacher %s from %s: %s', name, params, describe_load(report))
    elif logger is not None:
        logger.warning('teacher %s is RANDOM (--teacher-random)', name)
    return teacher


class Transfer(Task):
    """Fine-tuning from a frozen source network with registered regularizers
    (``gluon_transfer.losses``: l2, l2sp, fea_map, delta).

    ``total = sum_i CE(z_i, target_i) + sum_r contribution_r`` where each regularizer
    returns its contribution already in the engine's "sum over the slice" units (see
    :class:`gluon_transfer.losses.transfer_common.Regularizer`); every contribution is
    logged as ``contribution / n``.

    ``source``: the frozen source network (same architecture, source weights). It is
    never handed to the trainer (not in :meth:`blocks`), its parameters have
    ``grad_req='null'``, and it runs under ``autograd.pause()`` -- inference mode, so its
    BatchNorm uses the running statistics and nothing is recorded. When a regularizer
    compares feature maps, the target is run through a tapped view of itself
    (:func:`~gluon_transfer.losses.transfer_common.bottleneck_taps`, the same Parameter
    objects) that returns the logits and the maps at ``taps``.

    ``source_weights``: ``{structural key: NDArray}`` of the source parameters, for
    regularizers anchored at the starting point (L2-SP's ``w0``).
    ``ten_crop``: evaluate on the four corner and the centre ``crop`` x ``crop`` crops of
    each (larger) evaluation image and their mirror images, averaging the logits
    (AFA's ``improved`` evaluation, TenCrop).
    """
    name = 'transfer'

    def __init__(self, regularizers, source=None, taps=None, source_weights=None, ten_crop=False, crop=224):
        self.regs = list(regularizers)
        self.source = source
        self.taps = taps
        self.source_weights = source_weights
        self.ten_crop = bool(ten_crop)
        self.crop = int(crop)
        self.needs_features = any(r.needs_features for r in self.regs)
        if self.needs_features and source is None:
            raise ValueError('feature regularizers need the source network')
        self._target = None
        self._source = None

    def blocks(self):
        """The regularizers' trainable modules (AFD predictors, AFA attention), merged;
        two regularizers may not use the same name."""
        out = {}
        for r in self.regs:
            for name, block in (r.blocks() if hasattr(r, 'blocks') else {}).items():
                if name in out:
                    raise ValueError('two regularizers both name a trainable module %r' % name)
                out[name] = block
        return out

    def default_taps(self, net):
        """``--taps`` if given, else the first regularizer's own ``default_taps(net)``
        (AFA: MobileNetV2 projections), else the stage-end convolutions."""
        from ..losses.taps import stage_end_taps
        if self.taps:
            return list(self.taps)
        for r in self.regs:
            if hasattr(r, 'default_taps'):
                return list(r.default_taps(net))
        return stage_end_taps(net)

    def setup(self, net, ctx):
        from ..losses.taps import bottleneck_taps, conv_output_shapes
        if self.needs_features:
            names = self.default_taps(net)
            self.taps = names
            if any(hasattr(r, 'set_feature_shapes') for r in self.regs):
                # Regularizers with trainable modules size them from the tapped maps at the
                # training crop; both networks must agree (same architecture).
                shape = (1, 3, self.crop, self.crop)
                shapes = conv_output_shapes(net, names, shape)
                src_shapes = conv_output_shapes(self.source, names, shape)
                if shapes != src_shapes:
                    raise ValueError('source and target taps differ in shape: %s vs %s' % (src_shapes, shapes))
                for r in self.regs:
                    if hasattr(r, 'set_feature_shapes'):
                        r.set_feature_shapes(shapes)
            self._target = bottleneck_taps(net, names, with_logits=True)
            self._target.hybridize(static_alloc=True, static_shape=True)
            src_params = self.source.collect_params()
            src_params.setattr('grad_req', 'null')
            src_params.reset_ctx(ctx)
            if any(p.dtype == 'float16' for p in net.collect_params().values()):
                self.source.cast('float16')
            self._source = bottleneck_taps(self.source, names, with_logits=False)
            self._source.hybridize(static_alloc=True, static_shape=True)
            for r in self.regs:
                if hasattr(r, 'set_channels'):
                    r.set_channels(self._target.channels)
        for r in self.regs:
            r.setup(net, ctx, self.source_weights)
        self.source_weights = None       # the regularizers keep their own copies (w0)

    def loss(self, net, data, target, label):
        feats_t = feats_s = None
        if self._target is not None:
            out = self._target(data)
            logits, feats_t = out[0], list(out[1:])
            with autograd.pause():
                feats_s = self._source(data)
            # a SymbolBlock with one output (a single tap) returns the array itself, not a list
            feats_s = list(feats_s) if isinstance(feats_s, (list, tuple)) else [feats_s]
        else:
            logits = logits_of(net(data))
        ce = cross_entropy(logits, target)
        n = data.shape[0]
        total = ce.sum()
        terms = {'ce': ce.mean()}
        for reg in self.regs:
            for name, contrib in reg.terms(data.context, n, feats_t, feats_s):
                total = total + contrib.reshape(total.shape)
                terms[name] = contrib / n
        return total, logits, terms

    def predict(self, net, data):
        if not self.ten_crop:
            return logits_of(net(data))
        return logits_of_ten_crop(net, data, self.crop)


def ten_crops(data, crop):
    """The 10 crops of torchvision's TenCrop: corners (top-left, top-right, bottom-left,
    bottom-right), centre, then the same five of the mirrored image. ``data``: (N, C, H, W)."""
    _, _, h, w = data.shape
    if crop > h or crop > w:
        raise ValueError('ten-crop size %d exceeds the evaluation image %dx%d' % (crop, h, w))
    top, left = (h - crop) // 2, (w - crop) // 2
    boxes = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    out = []
    for flip in (False, True):
        img = data.flip(axis=3) if flip else data
        for y, x in boxes:
            # TenCrop mirrors the image then takes the five crops of the mirror.
            out.append(img[:, :, y:y + crop, x:x + crop])
    return out


def logits_of_ten_crop(net, data, crop):
    """Mean of the logits over the ten crops. (AFA's ``improved`` evaluation uses
    torchvision's TenCrop; how it combines the crops' outputs is not visible in its released
    code -- averaging the outputs is the usual TenCrop recipe.)"""
    crops = ten_crops(data, crop)
    n = data.shape[0]
    z = logits_of(net(mx.nd.concat(*crops, dim=0)))
    return z.reshape((len(crops), n, -1)).mean(axis=0)
