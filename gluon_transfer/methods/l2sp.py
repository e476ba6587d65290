"""L2-SP (Li, Grandvalet & Davoine, ICML 2018), ``--reg l2sp``: fine-tuning with the
penalty ``alpha * sum 0.5 ||w - w0||^2`` toward the source weights ``w0`` on the
parameters kept from the source and ``beta * sum 0.5 ||w||^2`` on the new ones (math and
the four variants in :mod:`gluon_transfer.losses.l2sp`).

Flags: ``--l2sp-alpha`` / ``--l2sp-beta`` (the reference PyTorch ports' ``--alpha`` /
``--beta`` are accepted as aliases), ``--l2sp-variant official|all|nonbinary|groups`` and,
for ``groups``, ``--l2sp-rates head,upper,lower``. The ``nonbinary`` and ``groups``
variants rate each layer group of the non-binary plan (:mod:`gluon_transfer.methods.nonbinary`:
the ``--num-low-lr-layers k`` groups nearest the input are "lower") and keep SGD weight
decay 1e-4 (Plested et al.'s code adds L2SP on top of it); ``official`` and ``all`` train
with weight decay 0 as both reference configurations do. ``w0`` is copied from the source
network once, so a resumed run rebuilds the same anchor.
"""
from ..errors import ConfigError
from ..registry import METHODS
from ..options import float_list
from .base import Method

__all__ = ['L2SPMethod', 'VARIANTS']

VARIANTS = ('official', 'all', 'nonbinary', 'groups')
LAYERED = ('nonbinary', 'groups')


@METHODS.register('l2sp')
class L2SPMethod(Method):
    name = 'l2sp'
    regs = ('l2sp',)
    title = 'L2-SP (--reg l2sp)'
    aliases = {'alpha': 'l2sp_alpha', 'beta': 'l2sp_beta'}
    weights_hint = 'takes --l2sp-alpha and --l2sp-beta'

    @classmethod
    def arguments(cls, g):
        g.add_argument('--l2sp-alpha', type=float, default=None, metavar='ALPHA',
                       help='weight of 0.5*||w - w0||^2 toward the source weights (default by variant: official 0.1, '
                            'all 0.01, nonbinary 0.004; the reference code\'s --alpha)')
        g.add_argument('--l2sp-beta', type=float, default=None, metavar='BETA',
                       help='weight of 0.5*||w||^2 on the new parameters (classifier, re-initialised groups; default '
                            '0.01, nonbinary 0.0005; the reference code\'s --beta)')
        g.add_argument('--l2sp-variant', default='official', choices=VARIANTS,
                       help='official: kernel weights (holyseven); all: every parameter (DELTA/AFA port); nonbinary: '
                            "Plested et al.'s code; groups: per-group rates (--l2sp-rates); nonbinary and groups need "
                            '--num-low-lr-layers')
        g.add_argument('--l2sp-rates', type=float_list, default=None, metavar='HEAD,UPPER,LOWER',
                       help='--l2sp-variant groups: rates head,upper,lower (head toward 0, the others toward the source)')

    def resolve(self, args, run):
        if args.l2sp_variant in LAYERED and args.num_low_lr_layers is None:
            raise ConfigError('--l2sp-variant %s needs --num-low-lr-layers k (the groups anchored at the source '
                              'weights)' % args.l2sp_variant)

    def default_wd(self, args):
        return 1e-4 if args.l2sp_variant in LAYERED else 0.0

    def uses_layer_split(self, args):
        return args.l2sp_variant in LAYERED

    def regularizer(self, args, batch_size):
        from ..losses.l2sp import L2SP
        return L2SP(alpha=args.l2sp_alpha, beta=args.l2sp_beta, variant=args.l2sp_variant, rates=args.l2sp_rates)
