"""Non-binary transfer (Plested, Shen & Gedeon; docs/nonbinary.md): the target is
not "copied layers + new head" but a plan over layer groups -- per-group learning rates,
re-initialised top groups, per-group L2-SP rates -- applied with every ``--reg``.

The plan (:func:`gluon_transfer.param_groups.plan`; groups, sections and rates are defined
there): ``--lrs head,upper,lower`` with ``--num-low-lr-layers k`` gives the ``k`` groups
nearest the input the "lower" rate, the others the "upper" one and the classifier the
"head" one (``--lrs`` replaces ``--lr``: the base rate becomes ``head`` and every group's
``lr_mult`` is its rate / ``head``); ``--new-layers n`` re-draws the top ``n - 1`` backbone
groups from the initializer (``n`` counts the classifier); the regularizer's per-parameter
rates (L2-SP's ``nonbinary`` and ``groups`` variants, :mod:`gluon_transfer.methods.l2sp`)
are bound to the same rows. ``--print-param-groups`` prints every parameter's row and
exits before anything trains.
"""
from ..errors import ConfigError
from ..registry import METHODS
from ..options import float_list
from .base import Method, build_target, finish_shapes

__all__ = ['NonBinary']


@METHODS.register('nonbinary')
class NonBinary(Method):
    """Applies to every run (``regs = None``): the layer-group plan of the target."""
    name = 'nonbinary'
    regs = None
    title = 'non-binary transfer: layer groups (any --reg)'

    @classmethod
    def arguments(cls, g):
        g.add_argument('--lrs', type=float_list, default=None, metavar='HEAD,UPPER,LOWER',
                       help='learning rates of the classifier, the upper and the lower layer groups (replaces '
                            '--lr); needs --num-low-lr-layers')
        g.add_argument('--num-low-lr-layers', type=int, default=None, metavar='K',
                       help='the K layer groups nearest the input are "lower" (as the reference code does; its '
                            'help text says the opposite): --lrs gives them the third rate, --l2sp-variant '
                            'nonbinary/groups anchors them at the source weights')
        g.add_argument('--new-layers', type=int, default=1, metavar='N',
                       help='layer groups re-initialised, counting the classifier (1 = classifier only, 2 = also '
                            'the top backbone group, ...)')
        g.add_argument('--print-param-groups', action='store_true',
                       help='print every parameter with its group, lr/wd multipliers and L2-SP rate, then exit')

    def resolve(self, args, run):
        if args.lrs is not None:
            if len(args.lrs) != 3:
                raise ConfigError('--lrs takes three rates head,upper,lower; got %r' % (args.lrs,))
            if args.num_low_lr_layers is None:
                raise ConfigError('--lrs needs --num-low-lr-layers k (the k groups nearest the input get the third '
                                  'rate)')
            args.lr = args.lrs[0]
        elif args.num_low_lr_layers is not None and not run.method.uses_layer_split(args):
            raise ConfigError('--num-low-lr-layers: only used with --lrs (or --reg l2sp --l2sp-variant '
                              'nonbinary|groups), not with --reg %s alone' % args.reg)

    def plan(self, args, net, reg):
        from ..param_groups import plan
        return plan(net, lrs=args.lrs, num_low=args.num_low_lr_layers, new_layers=args.new_layers,
                    no_wd=args.no_wd, rates=reg.param_rates)

    def finish_target(self, args, net, run, init, ctx, log):
        """Plan the rows, bind the regularizer's rates to them, re-initialise the new
        groups and set every parameter's lr/wd multipliers."""
        from ..param_groups import apply_multipliers, reinit_new_groups
        run.rows = self.plan(args, net, run.reg)
        run.reg.bind(run.rows)
        run.fresh = reinit_new_groups(net, run.rows, init, ctx)
        apply_multipliers(net, run.rows)
        return net

    def prepare(self, args, ctx, run):
        """``--print-param-groups``: the dry run (print, exit status 0)."""
        if args.print_param_groups:
            return self.print_groups(args, ctx, run)
        return None

    def print_groups(self, args, ctx, run, out=None):
        import sys
        from ..param_groups import format_rows
        out = out or sys.stdout
        num_classes, note = 1000, ' (no data given: shown with 1000 classes)'
        if args.data_dir or args.rec_train or args.rec_val:
            from ..data import build_data
            bundle = build_data(args.dataset, data_dir=args.data_dir, rec_train=args.rec_train,
                                rec_val=args.rec_val, rec_train_idx=args.rec_train_idx, rec_val_idx=args.rec_val_idx,
                                batch_size=1, verify=False)
            num_classes, note = bundle.num_classes, ''
        net = build_target(args.model, num_classes, ctx, None, None, run.model_kwargs, args.seed)
        finish_shapes(net, ctx, args.input_size)      # one image; Inception needs >= 75 px
        reg = run.method.regularizer(args, args.batch_size * len(ctx))
        rows = self.plan(args, net, reg)
        out.write('%s, %d classes%s; --reg %s; base lr %g%s\n' % (
            args.model, num_classes, note, run.method.describe(reg), args.lr,
            '; --lrs %s with --num-low-lr-layers %d' % (','.join('%g' % v for v in args.lrs), args.num_low_lr_layers)
            if args.lrs else ''))
        out.write(format_rows(rows, base_lr=args.lr) + '\n')
        out.flush()
        return 0
