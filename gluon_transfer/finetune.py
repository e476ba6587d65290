"""train_transfer.py's driver: fine-tune a GluonCV or registered network from source
weights with one of the registered fine-tuning methods, on the shared engine.

The driver knows no method by name (:mod:`gluon_transfer.methods`: the interface, the
order of its hooks and one module per method). :func:`main` parses the ``transfer``
preset's options (the shared ones and every method's group), then
:func:`gluon_transfer.cli.run` runs with the hooks of a :class:`FineTune` object:

* ``prepare``: select the methods (the one serving ``--reg`` and those applying to every
  run), refuse options that belong to none of them, let a method take the run over
  (AFA's ``--afa-two-stage``), resolve every option (:func:`resolve_options`), run the
  methods' ``prepare`` (AFDS's holdout split, the ``--print-param-groups`` dry run) and the
  iteration schedule (:func:`resolve_schedule`);
* ``build_net``: the method builds the **target** and the frozen **source** (by default:
  the source network with the classifier size found in its file, loaded with full
  key/shape checks, or GluonCV's pretrained file; the target a fresh network with one output
  per class whose non-classifier parameters are copies of the source's), then every
  method finishes the target (the non-binary layer-group plan: lr/wd multipliers,
  re-initialised groups, the regularizer's per-parameter rates; AFDS: the gates' lr);
* ``make_task``: the method's :class:`~gluon_transfer.engine.tasks.Transfer` task (the
  frozen source goes to the task only, never to the trainer; ``w0`` is a copy of the source
  weights);
* ``fit``: the method's phases (AFDS: phase 1, masks, phase 2 and its report), by default
  one ``engine.fit``;
* ``build_val`` (``--eval-ten-crop``): the evaluation images at ``input/crop_ratio``
  (256 for 224) for ten-crop evaluation.

Reference defaults (the DELTA and AFA reference scripts): batch 64, SGD momentum 0.9, lr 0.01,
4500 iterations, one x0.1 step at 2/3 of training (AFA: 0.67; per iteration here: the
references step per epoch at ``int(0.67 * epochs)``), optimizer weight decay by method
(1e-4 for ``l2`` and L2-SP's non-binary variants, 0 for the other penalties).
"""
import copy
import math

import mxnet as mx

from .errors import ConfigError
from .methods.base import DEFAULT_ITERS   # re-exported: the references' iteration budget

__all__ = ['resolve_args', 'resolve_options', 'resolve_schedule', 'FineTune', 'main', 'run_stage', 'DEFAULT_ITERS',
           'DEFAULT_LR']

DEFAULT_LR = 0.01


def resolve_options(args, run):
    """Fill the defaults of ``run``'s methods into ``args`` (in place) and check the
    combination; no file is written. Sets ``dataset_name`` (the name given) and ``dataset``
    (its preset, ``transfer`` for unregistered names), maps the reference spellings
    ``--alpha``/``--beta`` onto the chosen method's own weights (and afterwards mirrors the
    resolved weights back into them), ``wd`` and ``lr``."""
    from .data.datasets import get_preset
    from .methods.base import dataset_preset
    from .options import given
    args.dataset_name = getattr(args, 'dataset_name', None) or args.dataset
    args.dataset = dataset_preset(args.dataset)
    if getattr(args, 'params', None):
        raise ConfigError('train_transfer.py takes the source weights with --source-params (the classifier is '
                          'replaced); --params is not used')
    if args.source_params and args.source_pretrained:
        raise ConfigError('give either --source-params FILE or --source-pretrained, not both')
    method, seen = run.method, given(args)
    for alias, own in method.aliases.items():
        if alias in seen and seen[alias][1] == 'alias':
            if own in seen:
                raise ConfigError('give %s or its alias %s, not both' % (seen[own][0], seen[alias][0]))
            setattr(args, own, getattr(args, alias))
    args.preset_note = None
    for plugin in run.plugins:
        plugin.resolve(args, run)
    for alias, own in method.aliases.items():
        setattr(args, alias, getattr(args, own))
    if args.wd is None:
        args.wd = method.default_wd(args)
    if args.lr is None:
        args.lr = DEFAULT_LR
    if args.eval_ten_crop and not get_preset(args.dataset).val_resize:
        raise ConfigError('--eval-ten-crop needs a preset that resizes for evaluation (not %r)' % args.dataset)
    return args


def resolve_schedule(args, method, num_devices=1, num_train=None):
    """Check that there are source weights and derive the iteration schedule: ``max_iter``
    / ``num_epochs`` (``num_train`` records, default: counted in the training split), and
    the single decay step at ``method.decay_at`` of the iterations."""
    from .methods.base import count_train_records
    if not method.has_source(args):
        raise ConfigError('fine-tuning needs source weights: --source-params FILE or --source-pretrained')
    if num_train is None:
        num_train = count_train_records(args)
    gbs = args.batch_size * num_devices
    ipe = int(math.ceil(num_train / float(gbs)))
    explicit_epochs = args.num_epochs > 0
    if args.max_iter is None:
        args.max_iter = 0 if explicit_epochs else DEFAULT_ITERS
    if not explicit_epochs:
        args.num_epochs = int(math.ceil(args.max_iter / float(ipe)))
    total = min(args.max_iter or args.num_epochs * ipe, args.num_epochs * ipe)
    if args.lr_mode == 'step' and not args.lr_decay_epoch and not args.lr_decay_period:
        args.lr_decay_epoch = (int(round(method.decay_at * total)) / float(ipe),)
    args.iters_per_epoch = ipe
    args.total_iters = total
    return args


def resolve_args(args, num_devices=1, num_train=None):
    """Resolve the options (:func:`resolve_options`) and the schedule
    (:func:`resolve_schedule`) of parsed ``args`` in place; returns ``args``."""
    run = FineTune()
    run.select(args)
    resolve_options(args, run)
    return resolve_schedule(args, run.method, num_devices, num_train)


class FineTune:
    """One run's hooks for :func:`gluon_transfer.cli.run` and what they share: the
    selected methods (``method``, the one serving ``--reg``; ``plugins``, every active one
    in hook order), ``model_kwargs``, the frozen ``source``, the regularizer ``reg``, the
    parameter plan ``rows`` and the re-initialised groups ``fresh``."""

    def __init__(self):
        self.method = None
        self.plugins = []
        self.model_kwargs = {}
        self.source = None
        self.reg = None
        self.rows = None
        self.fresh = []

    def select(self, args):
        """Pick this run's methods (once) and refuse options that belong to none of them."""
        from .cli import model_kwargs
        from .methods import select
        if self.method is None:
            always, self.method = select(args)
            self.plugins = always + [self.method]
        self.model_kwargs = model_kwargs(args)
        return self.method

    @staticmethod
    def run_stage(args):
        return run_stage(args)

    @staticmethod
    def open_run_dir(args):
        """Create this run's folder now (a method that writes files before training: the
        AFDS holdout split, the two AFA stages); see :func:`gluon_transfer.cli.open_run_dir`."""
        from .cli import open_run_dir
        return open_run_dir(args, 'transfer')

    # ------------------------------------------------------------------ hooks
    def prepare(self, args):
        from .cli import resolve_ctx
        self.select(args)
        status = self.method.take_over(args, self)
        if status is not None:
            return status
        resolve_options(args, self)
        ctx = resolve_ctx(args)
        for plugin in self.plugins:
            status = plugin.prepare(args, ctx, self)
            if status is not None:
                return status
        resolve_schedule(args, self.method, num_devices=len(ctx))
        self.make_regularizer(args, args.batch_size * len(ctx))     # bad regularizer settings fail here
        return None

    def make_regularizer(self, args, batch_size):
        """The chosen method's regularizer for ``args`` (``batch_size``: the global batch)."""
        return self.select(args).regularizer(args, batch_size)

    def build_net(self, args, data, ctx, log):
        self.select(args)
        init = mx.init.Xavier() if args.init == 'xavier' else mx.init.MSRAPrelu()
        net, self.source = self.method.build(args, data.num_classes, ctx, init, self.model_kwargs, log)
        if getattr(args, 'preset_note', None):
            log.info(args.preset_note)
        self.reg = self.make_regularizer(args, args.batch_size * len(ctx))
        for plugin in self.plugins:
            net = plugin.finish_target(args, net, self, init, ctx, log)
        groups = len({r.group for r in self.rows or ()})
        log.info('target %s: %d classes (%s), %d layer groups%s; reg %s, wd %g, %d iterations (%d epochs of %d)',
                 args.model, data.num_classes, args.dataset_name, groups,
                 (', re-initialised: ' + ', '.join(self.fresh)) if self.fresh else '', self.method.describe(self.reg),
                 args.wd, args.total_iters, args.num_epochs, args.iters_per_epoch)
        return net

    def make_task(self, args, net, data, ctx, log):
        return self.method.make_task(args, net, self, ctx, log)

    def fit(self, engine, args, log):
        """The run's ``fit`` hook: the method's phases (default one plain ``engine.fit``)."""
        from .cli import default_fit
        return self.select(args).fit(engine, args, log, default_fit)

    def build_val(self, args, batch_size, num_parts, part_index):
        if not args.eval_ten_crop:
            return None
        from .data import build_data
        size = int(math.ceil(args.input_size / float(args.crop_ratio)))
        bundle = build_data(args.dataset, data_dir=args.data_dir, rec_val=args.rec_val, rec_val_idx=args.rec_val_idx,
                            batch_size=max(1, batch_size // 4), num_workers=args.num_workers, num_parts=num_parts,
                            part_index=part_index, shard_val=False, seed=args.seed, input_size=size, crop_ratio=1.0,
                            with_train=False)
        return bundle.val


def run_stage(args):
    """One ``train_transfer.py`` run on already parsed ``args`` (a copy is resolved);
    returns the engine."""
    from . import cli
    args = copy.deepcopy(args)
    ft = FineTune()
    status = ft.prepare(args)
    if status is not None:
        raise ConfigError('a stage run stopped before training (status %s)' % status)
    return cli.run(args, 'transfer', ft.make_task, build_net=ft.build_net, build_val=ft.build_val, fit=ft.fit)


def main(argv=None):
    from . import cli
    ft = FineTune()
    return cli.main('transfer', 'Fine-tune a network from source weights (DELTA, L2-SP, AFDS, AFA, non-binary, '
                    'feature-map, L2).', argv, make_task=ft.make_task, prepare=ft.prepare, build_net=ft.build_net,
                    build_val=ft.build_val, fit=ft.fit)
