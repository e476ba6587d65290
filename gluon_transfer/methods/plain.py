"""Plain fine-tuning (``--reg l2``): the target starts from the source weights with a new
classifier and trains on cross-entropy alone; the only regulariser is the optimizer's
weight decay (``--wd``, default 1e-4 here: the ``l2`` baseline of DELTA's and AFDS's
reference scripts). No frozen source is kept."""
from ..registry import METHODS
from .base import Method

__all__ = ['Plain']


@METHODS.register('plain')
class Plain(Method):
    name = 'plain'
    regs = ('l2',)
    weights_hint = 'has no penalty weight: the weight decay is --wd'

    def default_wd(self, args):
        return 1e-4

    def regularizer(self, args, batch_size):
        from ..losses.l2sp import L2
        return L2()
