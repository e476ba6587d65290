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

    def setup(self, net, ctx):
        from ..losses.transfer_common import bottleneck_taps, stage_end_taps
        if self.needs_features:
            names = list(self.taps) if self.taps else stage_end_taps(net)
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
                feats_s = list(self._source(data))
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
    torchvision's TenCrop; how it combines the crops' outputs is not recorded in
    transfer-methods.md -- averaging the outputs is the usual TenCrop recipe.)"""
    crops = ten_crops(data, crop)
    n = data.shape[0]
    z = logits_of(net(mx.nd.concat(*crops, dim=0)))
    return z.reshape((len(crops), n, -1)).mean(axis=0)
