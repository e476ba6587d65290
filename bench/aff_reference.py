"""Reference-style AFF/iAFF fusion blocks, for side-by-side benchmarks only.

These re-derive the formulation of open-aff's MXNet blocks (``ASKCFuse`` and
``ResGlobLocaforGlobLocaChaFuse``, model/fusion.py at 0bcfd8a) from their equations and
operator sequence -- not copied code -- so that ``bench_aff.py`` can time
the reference's way of computing the same function in the same run as ours:

- the attention input ``x + y`` and the local + global logits are added with broadcasting
  operators (``broadcast_add``), the global logits ``(N, C, 1, 1)`` broadcast over H x W;
- the global branch pools with ``GlobalAvgPool2D`` (the ``Pooling`` operator);
- the sigmoid is a parameter-free child ``HybridSequential(prefix='sig')`` holding
  ``Activation('sigmoid')``;
- the fusion is evaluated literally: AFF ``2*x*w + 2*y*(1-w)`` and iAFF ``x*w + y*(1-w)``
  (twice), each product a ``broadcast_mul``, i.e. one elementwise pass per operator.

The blocks subclass :class:`gluon_transfer.nn.fusion.AFF` / ``iAFF``, so their parameters (and
``save_parameters`` keys) are identical to ours and a network can be switched between the two
formulations with the same weights. They register as fusions ``aff_ref`` / ``iaff_ref`` in
``FUSIONS`` when this module is imported (``gt.get_model('cifar_aff_resnet', fusion='aff_ref')``).
"""
from mxnet.gluon import nn

from gluon_transfer.nn.fusion import AFF, iAFF
from gluon_transfer.registry import FUSIONS

__all__ = ['RefAFF', 'RefIAFF']


def _sig():
    seq = nn.HybridSequential(prefix='sig')
    with seq.name_scope():
        seq.add(nn.Activation('sigmoid'))
    return seq


def _ref_global(F, global_att, z):
    """The reference's global branch starts with ``GlobalAvgPool2D`` (a Pooling operator); ours
    uses ``mean`` (gluon_transfer.nn.fusion.GlobalMean). Same parameters, reference operator."""
    g = F.Pooling(z, kernel=(1, 1), global_pool=True, pool_type='avg')
    for blk in list(global_att._children.values())[1:]:
        g = blk(g)
    return g


def _ref_weights(F, local_att, global_att, sig, z):
    return sig(F.broadcast_add(local_att(z), _ref_global(F, global_att, z)))


class RefAFF(AFF):
    """``w = sig(local_att(x+y) + global_att(x+y))``; ``out = 2*x*w + 2*y*(1-w)`` (reference style)."""

    def __init__(self, channels, r=4, **kwargs):
        super().__init__(channels, r, **kwargs)
        with self.name_scope():
            self.sig = _sig()

    def hybrid_forward(self, F, x, y):
        w = _ref_weights(F, self.local_att, self.global_att, self.sig, F.broadcast_add(x, y))
        return 2 * F.broadcast_mul(x, w) + 2 * F.broadcast_mul(y, 1 - w)


class RefIAFF(iAFF):
    """Two-step iAFF in the reference style (no factor 2)."""

    def __init__(self, channels, r=4, **kwargs):
        super().__init__(channels, r, **kwargs)
        with self.name_scope():
            self.sig = _sig()
            self.sig2 = _sig()

    def hybrid_forward(self, F, x, y):
        w1 = _ref_weights(F, self.local_att, self.global_att, self.sig, F.broadcast_add(x, y))
        xi = F.broadcast_mul(x, w1) + F.broadcast_mul(y, 1 - w1)
        w2 = _ref_weights(F, self.local_att2, self.global_att2, self.sig2, xi)
        return F.broadcast_mul(x, w2) + F.broadcast_mul(y, 1 - w2)


for _name, _cls in (('aff_ref', RefAFF), ('iaff_ref', RefIAFF)):
    if _name not in FUSIONS:
        FUSIONS.register(_name, obj=_cls)
