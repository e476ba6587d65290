"""Attentional feature fusion blocks (Dai et al., "Attentional Feature Fusion", WACV 2021).

Every block fuses two maps of the same shape ``(N, C, H, W)``: ``x``, the residual-branch
output, and ``y``, the identity or projected shortcut. The layouts, attribute names and
formulas follow the reference MXNet code (YimianDai/open-aff ``model/fusion.py`` at commit
0bcfd8a), so ``save_parameters`` keys equal the published checkpoints' keys
(``attention.local_att.0.weight`` ...).

MS-CAM, the multi-scale channel attention ``M(z)`` (``Ci = int(C // r)``)::

    L(z) = BN(Conv1x1_{Ci->C}(ReLU(BN(Conv1x1_{C->Ci}(z)))))            (N, C, H, W)
    G(z) = BN(Conv1x1_{Ci->C}(ReLU(BN(Conv1x1_{C->Ci}(GAP(z))))))       (N, C, 1, 1)
    M(z) = sigmoid(L(z) + G(z))        (G broadcast over H x W)

All four 1x1 convolutions have a bias; BN uses Gluon defaults (eps 1e-5, momentum 0.9).

Child layout (index = position in the HybridSequential, hence the checkpoint key)::

    local_att  = [0 Conv, 1 BN, 2 ReLU, 3 Conv, 4 BN]
    global_att = [0 GAP (GlobalMean), 1 Conv, 2 BN, 3 ReLU, 4 Conv, 5 BN]

Speed (bench/bench_aff.py, docs/benchmarks.md): on float32 CPU the AFF/iAFF tail -- sigmoid of the
local + broadcast global logits and the weighted sum -- runs as one fused kernel
(``gt_aff_fuse``, gluon_transfer/nn/fused.py: one pass forward, one backward). Where the kernel
is unavailable (no compiler, GPU, float16/AMP, export) the blocks use an operator composition
with as few passes as the algebra allows: ``Activation(act_type='sigmoid')`` (``F.sigmoid``
measured about 6x slower on CPU), the global logits broadcast with ``broadcast_like`` (see
``_ms_cam``), and AFF as ``2 * (y + w * (x - y))`` (iAFF reuses ``x - y`` in both steps). Both
give the same outputs and parameter keys.
"""
from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ..errors import ConfigError
from . import fused
from ..registry import FUSIONS, unknown_name_message

__all__ = ['DirectAdd', 'MSCAM', 'AFF', 'iAFF', 'create_fusion', 'FUSION_ALIASES', 'canonical_fusion',
           'neutral_gate_init', 'fusion_blocks']

# Reference (open-aff ``askc_type``) names -> our names.
FUSION_ALIASES = {'DirectAdd': 'add', 'ASKCFuse': 'aff', 'ResGlobLocaforGlobLocaCha': 'iaff'}


def _inter_channels(channels, r):
    if int(channels) <= 0 or r is None or r <= 0:
        raise ConfigError('fusion needs channels > 0 and r > 0; got channels=%r, r=%r' % (channels, r))
    inter = int(channels // r)
    if inter < 1:
        raise ConfigError('fusion reduction r=%r leaves no channels for C=%d (int(C // r) = 0)' % (r, channels))
    return inter


def _local_branch(channels, inter, prefix):
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        seq.add(nn.Conv2D(inter, 1, in_channels=channels, use_bias=True))
        seq.add(nn.BatchNorm(in_channels=inter))
        seq.add(nn.Activation('relu'))
        seq.add(nn.Conv2D(channels, 1, in_channels=inter, use_bias=True))
        seq.add(nn.BatchNorm(in_channels=channels))
    return seq


class GlobalMean(HybridBlock):
    """Global average over H x W, ``(N, C, H, W) -> (N, C, 1, 1)``, as ``mean``: same values as
    ``nn.GlobalAvgPool2D`` and no parameters, but on CPU the oneDNN pooling backward took about
    200 ms per AFF block of AFF-ResNet-32 (3.8 s of a 64-image training step; docs/benchmarks.md)
    when its input is in oneDNN's blocked layout, which ``x + y`` of two conv outputs is."""

    def hybrid_forward(self, F, x):
        # over the flattened H*W axis: MXNet's reduction over two axes measured 2x slower
        return F.expand_dims(F.mean(F.reshape(x, shape=(0, 0, -1)), axis=2, keepdims=True), axis=3)


def _global_branch(channels, inter, prefix):
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        seq.add(GlobalMean())
        seq.add(nn.Conv2D(inter, 1, in_channels=channels, use_bias=True))
        seq.add(nn.BatchNorm(in_channels=inter))
        seq.add(nn.Activation('relu'))
        seq.add(nn.Conv2D(channels, 1, in_channels=inter, use_bias=True))
        seq.add(nn.BatchNorm(in_channels=channels))
    return seq


def _ms_cam(F, local_att, global_att, z):
    """``sigmoid(L(z) + G(z))`` with G broadcast over H x W.

    ``broadcast_like`` + ``elemwise_add`` instead of ``broadcast_add``: same result, but its
    backward (the H x W reduction for G's gradient) measured 35 ms vs 51-89 ms for
    ``broadcast_add`` on a (64, 64, 32, 32) map on CPU (forward: 6.6 vs 6.1 ms)."""
    local = local_att(z)
    return F.Activation(F.elemwise_add(local, F.broadcast_like(global_att(z), local)), act_type='sigmoid')


def _plain_layout(F, a):
    """``a`` (N, C, H, W) as (N, C, H*W) in MXNet's plain layout, same values.

    Convolution and BatchNorm outputs on CPU are in oneDNN's blocked layout, and MXNet hands
    external-library operators (``gt_aff_fuse``, ``gt_global_mean``) plain copies of such
    inputs, made anew in the forward and again in the backward pass; with three blocked inputs
    that conversion cost several times the kernel itself (profile in docs/benchmarks.md). A
    reshape converts once, as an ordinary graph node whose output the backward pass reuses
    (its backward passes the gradient through unchanged); the kernels take (N, C, H*W)."""
    return F.reshape(a, shape=(0, 0, -1))


def _fused_tail(F, xp, yp, local_att, global_att, z, scale):
    """``scale * (y + M(z) * (x - y))`` with the kernels of nn/fused.py: the global pooling
    (``gt_global_mean``) and the tail (``gt_aff_fuse``: sigmoid of local + broadcast global
    logits, then the weighted sum) are one pass each; same math as the composition. ``xp``,
    ``yp`` are ``x``, ``y`` through :func:`_plain_layout` (made once per block: iAFF's two
    steps share them), as are the kernels' other full-size inputs; the result is reshaped back
    to ``z``'s shape."""
    g = getattr(F, fused.MEAN_OP)(_plain_layout(F, z))  # the kernel's pooling instead of global_att[0]
    for blk in list(global_att._children.values())[1:]:
        g = blk(g)
    out = getattr(F, fused.OP_NAME)(xp, yp, _plain_layout(F, local_att(z)), g, scale=scale)
    return F.reshape_like(out, z)


class DirectAdd(HybridBlock):
    """Plain residual addition ``out = x + y`` (reference ``DirectAddFuse``); no parameters.

    ``channels`` and ``r`` are accepted (and ignored) so every fusion has one constructor.
    """

    def __init__(self, channels=None, r=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def hybrid_forward(self, F, x, y):
        return F.elemwise_add(x, y)


class MSCAM(HybridBlock):
    """Multi-scale channel attention: ``w = M(z) = sigmoid(L(z) + G(z))`` in (0, 1).

    Input ``z`` (N, C, H, W); output ``w`` of the same shape. The reference MXNet code has no
    standalone class (the attention lives inside ``ASKCFuse``); the PyTorch port's
    ``MS_CAM(x)`` returns ``x * M(x)`` instead -- this block returns the weights ``M(z)``.
    """

    def __init__(self, channels, r=4, **kwargs):
        super().__init__(**kwargs)
        inter = _inter_channels(channels, r)
        self.channels, self.r = channels, r
        with self.name_scope():
            self.local_att = _local_branch(channels, inter, 'local_')
            self.global_att = _global_branch(channels, inter, 'global_')

    def hybrid_forward(self, F, z):
        return _ms_cam(F, self.local_att, self.global_att, z)


class AFF(HybridBlock):
    """Attentional feature fusion (reference ``ASKCFuse``)::

        w   = M(x + y)
        out = 2 * x * w + 2 * y * (1 - w)  =  2 * (y + w * (x - y))

    The factor 2 is in the reference code (it keeps the weights summing to 2, like x + y);
    the paper's Eq. writes ``M(x+y) * x + (1 - M(x+y)) * y`` without it. We follow the code,
    whose published parameters were trained with it. Keys: ``local_att.{0,3}.{weight,bias}``,
    ``local_att.{1,4}.*``, ``global_att.{1,4}.{weight,bias}``, ``global_att.{2,5}.*``.
    """

    def __init__(self, channels, r=4, **kwargs):
        super().__init__(**kwargs)
        inter = _inter_channels(channels, r)
        self.channels, self.r = channels, r
        with self.name_scope():
            self.local_att = _local_branch(channels, inter, 'local_')
            self.global_att = _global_branch(channels, inter, 'global_')

    def attention_weights(self, x, y):
        """``[w]``, the MS-CAM weights this block would use (imperative; for inspection)."""
        import mxnet as mx
        return [_ms_cam(mx.nd, self.local_att, self.global_att, x + y)]

    def hybrid_forward(self, F, x, y):
        z = F.elemwise_add(x, y)
        if fused.kernel_active(F, x, self.local_att[0].weight):
            return _fused_tail(F, _plain_layout(F, x), _plain_layout(F, y), self.local_att, self.global_att, z, 2.0)
        w = _ms_cam(F, self.local_att, self.global_att, z)
        return F.elemwise_add(y, F.elemwise_mul(w, F.elemwise_sub(x, y))) * 2


class iAFF(HybridBlock):  # noqa: N801  (the paper's name)
    """Iterative attentional feature fusion (reference ``ResGlobLocaforGlobLocaChaFuse``)::

        w1  = M1(x + y)                      (local_att,  global_att)
        xi  = x * w1 + y * (1 - w1)          = y + w1 * (x - y)
        w2  = M2(xi)                         (local_att2, global_att2)
        out = x * w2 + y * (1 - w2)          = y + w2 * (x - y)

    There is **no factor 2** in either step, unlike :class:`AFF`: the reference code does
    this, and its author kept the inconsistency with AFF because the published parameters
    depend on it; we follow the code. ``M2`` has its own global
    branch ``global_att2`` (the PyTorch port's iAFF reuses ``global_att``, a bug; the MXNet
    reference does not). Keys: those of :class:`AFF` plus ``local_att2``/``global_att2``
    with the same indices.
    """

    def __init__(self, channels, r=4, **kwargs):
        super().__init__(**kwargs)
        inter = _inter_channels(channels, r)
        self.channels, self.r = channels, r
        with self.name_scope():
            self.local_att = _local_branch(channels, inter, 'local_')
            self.global_att = _global_branch(channels, inter, 'global_')
            self.local_att2 = _local_branch(channels, inter, 'local2_')
            self.global_att2 = _global_branch(channels, inter, 'global2_')

    def attention_weights(self, x, y):
        """``[w1, w2]`` (imperative; for inspection)."""
        import mxnet as mx
        w1 = _ms_cam(mx.nd, self.local_att, self.global_att, x + y)
        xi = y + w1 * (x - y)
        return [w1, _ms_cam(mx.nd, self.local_att2, self.global_att2, xi)]

    def hybrid_forward(self, F, x, y):
        if fused.kernel_active(F, x, self.local_att[0].weight):
            xp, yp = _plain_layout(F, x), _plain_layout(F, y)
            xi = _fused_tail(F, xp, yp, self.local_att, self.global_att, F.elemwise_add(x, y), 1.0)
            return _fused_tail(F, xp, yp, self.local_att2, self.global_att2, xi, 1.0)
        d = F.elemwise_sub(x, y)  # reused by both steps
        w1 = _ms_cam(F, self.local_att, self.global_att, F.elemwise_add(x, y))
        xi = F.elemwise_add(y, F.elemwise_mul(w1, d))
        w2 = _ms_cam(F, self.local_att2, self.global_att2, xi)
        return F.elemwise_add(y, F.elemwise_mul(w2, d))


for _name, _cls in (('add', DirectAdd), ('aff', AFF), ('iaff', iAFF)):
    FUSIONS.register(_name, obj=_cls)
for _alias, _name in FUSION_ALIASES.items():
    FUSIONS.register(_alias, obj=FUSIONS.get(_name))


def canonical_fusion(name):
    """``'ASKCFuse'`` -> ``'aff'`` etc.; unknown names raise ConfigError listing valid ones."""
    if name in FUSION_ALIASES:
        return FUSION_ALIASES[name]
    if name not in FUSIONS:
        raise ConfigError(unknown_name_message('fusion', name, FUSIONS.names()))
    return name


def create_fusion(name, channels, r=4, **kwargs):
    """Build a fusion block by name: ``add``, ``aff``, ``iaff`` or the reference names
    ``DirectAdd``, ``ASKCFuse``, ``ResGlobLocaforGlobLocaCha``. The block is called as
    ``block(x, y)`` with ``x`` the residual branch and ``y`` the shortcut."""
    return FUSIONS.get(canonical_fusion(name))(channels, r, **kwargs)


def neutral_gate_init(net):
    """Make every MS-CAM of ``net`` start at ``w = sigmoid(0) = 0.5``: the gamma of the last
    BatchNorm of each local and global branch (``local_att.4``, ``global_att.5`` and iAFF's
    ``local_att2.4``, ``global_att2.5``) is initialised to zero instead of one, so both
    branches output their beta (zero) until training moves gamma. An AFF block then starts
    as the plain add ``x + y`` exactly, an iAFF block as ``(x + y) / 2``; only the
    initialiser changes (parameter names, shapes and the trained model's math do not).

    The reference initialises these BatchNorms like any other (gamma 1), so each fusion starts
    as a random per-element mixture of ``x`` and ``y`` (the logits are BN-normalised, w spread
    over (0, 1)). On CIFAR-10 that start slowed early training a lot: ResNet-20 after one
    epoch at lr 0.1, training accuracy 28 % (AFF, reference init) vs 45 % (plain add) vs
    46 % (AFF, this init); see docs/aff.md.

    Call before ``net.initialize`` (it sets the parameters' initialisers); parameters loaded
    from a file afterwards keep their values. Returns the number of gammas set; raises
    ConfigError when ``net`` has no AFF/iAFF block."""
    import mxnet as mx
    n = 0
    for _, block in fusion_blocks(net):
        branches = [(block.local_att, 4), (block.global_att, 5)]
        if isinstance(block, iAFF):
            branches += [(block.local_att2, 4), (block.global_att2, 5)]
        for seq, idx in branches:
            seq[idx].gamma.init = mx.init.Zero()
            n += 1
    if not n:
        raise ConfigError('--aff-init neutral: the network has no AFF or iAFF fusion block '
                          '(use it with --fusion aff or iaff)')
    return n


def fusion_blocks(net):
    """``[(structural path, block)]`` of every AFF/iAFF block of ``net``, in network order."""
    found = []

    def walk(block, path):
        for name, child in block._children.items():
            sub = '%s.%s' % (path, name) if path else name
            if isinstance(child, (AFF, iAFF)):
                found.append((sub, child))
            walk(child, sub)
    if isinstance(net, (AFF, iAFF)):
        found.append(('', net))
    walk(net, '')
    return found
