"""The fine-tuning method interface of ``train_transfer.py`` and what the methods share.

A method is a :class:`Method` subclass registered in
:data:`gluon_transfer.registry.METHODS`. The fine-tune driver
(:mod:`gluon_transfer.finetune`) knows none by name; for every run it

1. lets every registered method add its flags (:meth:`Method.add_arguments`, one argparse
   group per method; flags are scoped by name: ``--l2sp-alpha``, ``--afd-lambda``...);
2. picks the method serving ``--reg`` (:attr:`Method.regs`; a method may also claim a run
   by one of its flags, :meth:`Method.claims`) plus the methods that apply to every run
   (``regs = None``: the non-binary layer groups);
3. refuses an option given on the command line that belongs to none of them: one line
   naming the flag as typed and the ``--reg`` it belongs to (:func:`check_given`);
   the reference scripts' spellings ``--alpha``/``--beta`` mean the chosen method's own
   weights (:attr:`Method.aliases`) or are refused, never reinterpreted;
4. :meth:`Method.take_over` (AFA's ``--afa-two-stage``: two complete runs instead of this
   one), then :meth:`Method.resolve`: defaults and checks of the method's options (no file
   written);
5. :meth:`Method.prepare`: what happens before the network exists (AFDS: the holdout split;
   DELTA: where its channel weights are; the dry run ``--print-param-groups``: print, then
   stop);
6. :meth:`Method.build` (target and frozen source), :meth:`Method.regularizer`,
   :meth:`Method.finish_target` (every active method, in order), :meth:`Method.make_task`;
7. :meth:`Method.fit`: the training phases (default one ``engine.fit``; AFDS: phase 1,
   masks, phase 2 and its report).

Options given on the command line are recorded by the parser itself
(:mod:`gluon_transfer.options`: ``args.given_options``, ``{dest: (flag as typed, owner)}``;
the owner of a method's option is the method's name).

Shared helpers (each exists once): :func:`dataset_preset`, :func:`train_records_file` /
:func:`count_train_records` (the training split of ``args`` and its size),
:func:`copy_params` (the source-to-target copy with key and shape checks),
:func:`finish_shapes`, :func:`source_head_classes`, :func:`load_source`,
:func:`build_target`.
"""
import os

import mxnet as mx

from ..errors import CheckpointError, ConfigError
from ..options import OwnedGroup, given

# The references' iteration budget of a fine-tuning run (DELTA / L2-SP / AFA: 4500
# iterations of batch 64; the AFDS reproduction: 4500 per phase of batch 48).
DEFAULT_ITERS = 4500

__all__ = ['Method', 'check_given', 'dataset_preset', 'train_records_file', 'count_train_records', 'copy_params',
           'finish_shapes', 'source_head_classes', 'load_source', 'build_target']


def check_given(args, active, methods, reg):
    """ConfigError for the first given option that none of the ``active`` methods takes:
    a method's own option (``owner`` = its name), a shared option another method lists in
    :attr:`Method.accepts`, or a reference spelling (owner ``'alias'``) the chosen method
    does not map (:attr:`Method.aliases`). ``methods``: every registered method class."""
    names = {m.name for m in active}
    accepted = set().union(*(m.accepts for m in active)) if active else set()
    chosen = active[-1]
    by_name = {m.name: m for m in methods}
    for dest, (flag, owner) in given(args).items():          # in command-line order
        if owner == 'alias':
            if dest not in chosen.aliases:
                users = [r for m in methods if dest in m.aliases for r in (m.regs or ())]
                raise ConfigError('%s: not an option of --reg %s (the reference code\'s %s is a weight of --reg %s%s)'
                                  % (flag, reg, flag, ', '.join(users),
                                     '; --reg %s %s' % (reg, chosen.weights_hint) if chosen.weights_hint else ''))
            continue
        if owner == 'shared':
            if dest not in accepted:
                users = [r for m in methods if dest in m.accepts for r in (m.regs or ())]
                raise ConfigError('%s: option of --reg %s, not --reg %s' % (flag, ', '.join(users), reg))
            continue
        if owner in by_name and owner not in names:
            owner_cls = by_name[owner]
            msg = owner_cls.foreign_option(flag, dest, args, reg)
            raise ConfigError(msg or '%s: option of --reg %s, not --reg %s'
                              % (flag, ', '.join(owner_cls.regs or ()), reg))


# ------------------------------------------------------------------ the interface
class Method:
    """One fine-tuning method (module docstring for the order of the hooks).

    Class attributes: ``name`` (registry name), ``regs`` (the ``--reg`` values it serves;
    None: it applies to every run), ``title`` (its argparse group), ``aliases``
    (``{'alpha': 'l2sp_alpha', ...}``: reference spellings that mean its own options),
    ``accepts`` (shared transfer options it uses, e.g. ``('taps',)``), ``weights_hint``
    (how its weights are given, for errors: 'takes --afd-lambda ...'), ``decay_at``
    (where the default single x0.1 step of the learning rate sits, as a fraction of the
    iterations).

    The hooks get ``run``, the driver's :class:`gluon_transfer.finetune.FineTune`: the
    chosen ``method``, the active ``plugins``, ``model_kwargs``, and as the run goes on
    the frozen ``source``, the regularizer ``reg``, the parameter plan ``rows`` and the
    re-initialised groups ``fresh``; ``run.run_stage(args)`` runs one more complete run."""
    name = None
    regs = ()
    title = None
    aliases = {}
    accepts = ()
    weights_hint = ''
    decay_at = 2.0 / 3.0

    def __init__(self, reg=None):
        self.reg = reg

    # ---------------------------------------------------------------- flags
    @classmethod
    def add_arguments(cls, parser):
        """Add this method's argparse group (:meth:`arguments`); its options are recorded
        as owned by :attr:`name`."""
        if cls.title is None:
            return None
        group = OwnedGroup(parser.add_argument_group(cls.title), cls.name)
        cls.arguments(group)
        return group

    @classmethod
    def arguments(cls, group):
        """Declare the flags: ``group.add_argument(...)`` as with argparse."""

    @classmethod
    def claims(cls, args):
        """True when a flag of this method selects it although ``--reg`` was not given."""
        return False

    @classmethod
    def foreign_option(cls, flag, dest, args, reg):
        """A specific message for one of this method's options given with another ``--reg``
        (None: the generic 'option of --reg X, not --reg Y')."""
        return None

    # ---------------------------------------------------------------- settings
    def resolve(self, args, run):
        """Fill this method's defaults into ``args`` and check its options (ConfigError);
        write no file. Idempotent."""

    def default_wd(self, args):
        """The optimizer's weight decay when ``--wd`` is not given (0 for the penalties)."""
        return 0.0

    def uses_layer_split(self, args):
        """True when the method itself uses ``--num-low-lr-layers`` (L2-SP's per-group variants)."""
        return False

    def has_source(self, args):
        return bool(args.source_params or args.source_pretrained)

    # ---------------------------------------------------------------- run
    def take_over(self, args, run):
        """Before anything is resolved: run something else instead of this run and return
        its exit status (AFA's ``--afa-two-stage`` runs two complete runs), or None."""
        return None

    def prepare(self, args, ctx, run):
        """Before the network is built; return an exit status to stop the run there."""
        return None

    def build(self, args, num_classes, ctx, init, kw, log):
        """``(target, frozen source)``: the source network with its weights, and a
        ``num_classes`` target holding copies of every non-classifier source parameter."""
        source = load_source(args.model, ctx, args.source_params, args.source_pretrained, kw, log)
        return build_target(args.model, num_classes, ctx, source, init, kw, seed=args.seed), source

    def regularizer(self, args, batch_size):
        """The registered regularizer of this run (``batch_size``: the global batch)."""
        return None

    def finish_target(self, args, net, run, init, ctx, log):
        """Adjust the target after it was built (every active method, in order)."""
        return net

    def make_task(self, args, net, run, ctx, log):
        """The :class:`~gluon_transfer.engine.tasks.Transfer` task: the regularizer, the
        frozen source (only when it compares feature maps) and ``w0``, the source weights
        (only when a penalty is anchored at them; copied once, never updated)."""
        from ..engine.tasks import Transfer
        reg = run.reg
        source_weights = None
        if getattr(reg, 'uses_w0', False):
            source_weights = {k: p.data(p.list_ctx()[0]) for k, p in run.source._collect_params_with_prefix().items()}
        source = run.source if reg.needs_features else None
        task = Transfer([reg], source=source, taps=getattr(args, 'taps', None), source_weights=source_weights,
                        ten_crop=args.eval_ten_crop, crop=args.input_size)
        if source is None:
            run.source = None    # nothing else needs it (w0 is copied at setup)
        return task

    def fit(self, engine, args, log, plain_fit):
        """Train: by default one ``plain_fit(engine, args, log)`` (``engine.fit`` with the
        resume options)."""
        return plain_fit(engine, args, log)

    def describe(self, reg):
        """One phrase for the log: the regularizer and its weights."""
        parts = [reg.name]
        for attr in ('variant', 'alpha', 'beta', 'lam'):
            if hasattr(reg, attr):
                parts.append('%s=%s' % ('lambda' if attr == 'lam' else attr, getattr(reg, attr)))
        return ' '.join(parts)


# ------------------------------------------------------------------ data
def dataset_preset(name):
    """The data preset for a dataset name: its own when registered, else ``transfer``."""
    from ..data.datasets import PRESETS
    return name if name in PRESETS else 'transfer'


def train_records_file(args, purpose=None):
    """``(kind, path, idx)`` of the training split ``args`` names: ``('recordio', rec,
    idx or None)`` for ``--rec-train`` or ``DATA_DIR/train.rec``, ``('cifar-binary',
    folder, None)`` for the original CIFAR files. ``purpose`` (e.g. ``'--afs'``): the
    option that needs the records split, so that a missing folder or non-RecordIO data is
    an error naming it."""
    from ..data.datasets import get_preset, resolve_data_dir
    if args.rec_train:
        return 'recordio', args.rec_train, args.rec_train_idx
    preset = get_preset(dataset_preset(args.dataset))
    data_dir = args.data_dir or preset.default_dir
    if not data_dir:
        if purpose:
            raise ConfigError('%s needs --data-dir or --rec-train (its training records are split)' % purpose)
        raise ConfigError('pass --data-dir (a folder with train.rec/.idx and val.rec/.idx) or --rec-train')
    kind, path, _ = resolve_data_dir(preset, data_dir)
    if purpose and kind != 'recordio':
        raise ConfigError('%s splits a RecordIO training set; %s holds %s data' % (purpose, data_dir, kind))
    return kind, path, None


def count_train_records(args):
    """Records in the training split of ``args`` (structure-checked, cheap)."""
    from ..data.recordio import default_idx_path, inspect_recordio
    kind, path, idx = train_records_file(args)
    if kind != 'recordio':
        from ..data.cifar import read_cifar_binary
        from ..data.datasets import get_preset
        return len(read_cifar_binary(path, get_preset(dataset_preset(args.dataset)).binary, train=True)[1])
    return inspect_recordio(path, idx or default_idx_path(path)).num_records


# ------------------------------------------------------------------ networks
def finish_shapes(net, ctx, size):
    """Run one tiny ``(1, 3, size, size)`` forward so deferred parameter shapes are known."""
    ctx = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    with mx.autograd.predict_mode():
        net(mx.nd.zeros((1, 3, size, size), ctx=ctx[0]))


def copy_params(net, arrays, skip=(), source='source network', target=None):
    """Copy ``arrays`` (``{structural key: NDArray}``) into ``net``'s parameters, except the
    keys in ``skip`` (the classifier). Every other parameter of ``net`` must be in
    ``arrays`` with the same shape (a deferred shape takes the array's): a CheckpointError
    names the first missing or mismatched key, ``source`` and ``target`` (default the
    network's class). Values are cast to each parameter's dtype and placed on the contexts
    the parameter was initialised on."""
    target = target or type(net).__name__
    skip = set(skip)
    for key, p in net._collect_params_with_prefix().items():
        if key in skip:
            continue
        if key not in arrays:
            raise CheckpointError('%s lacks %r of the target %s' % (source, key, target))
        arr = arrays[key]
        if p.shape is not None and all(s > 0 for s in p.shape) and tuple(p.shape) != tuple(arr.shape):
            raise CheckpointError('%s %r has shape %s but the target %s %s'
                                  % (source, key, tuple(arr.shape), target, tuple(p.shape)))
        p._load_init(arr, None, cast_dtype=True, dtype_source='current')     # on the parameter's own contexts
    return net


def source_head_classes(model, path, model_kwargs):
    """Classifier size stored in a source params file (read from its head weight), or None."""
    from ..losses.transfer_common import head_keys
    from ..weights import read_params
    from ..zoo import get_model
    arrays = read_params(path)
    probe = get_model(model, classes=1, **model_kwargs)
    for key in head_keys(probe):
        if key.endswith('weight') and key in arrays:
            return int(arrays[key].shape[0])
    return None


def load_source(model, ctx, source_params=None, source_pretrained=False, model_kwargs=None, log=None):
    """The source network with its own classifier, weights loaded and checked."""
    from ..weights import load_params, describe_load
    from ..zoo import get_model
    kw = dict(model_kwargs or {})
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    if source_params:
        from ..losses.transfer_common import head_keys
        classes = source_head_classes(model, source_params, kw)
        net = get_model(model, classes=classes or 1000, **kw)
        net.initialize(ctx=ctx)
        heads = set(head_keys(net))
        # a file without a classifier (tools/convert_torch.py --drop-head, a backbone): the
        # source's head is never used (the target gets its own), so only it may be missing
        # (a stray head bias still fails the load: its shape differs from the placeholder's)
        headless = classes is None
        try:
            report = load_params(net, source_params, ctx=ctx, strict=not headless, allow_missing=headless)
            other = [k for k in report['missing'] if k not in heads]
            if other:
                raise CheckpointError('%s does not fit %s: missing key %r (%d missing in total)'
                                      % (os.path.basename(source_params), type(net).__name__, other[0], len(other)))
        except CheckpointError as err:
            raise CheckpointError('--source-params %s is not a %s: %s' % (source_params, model, err)) from None
        if log:
            log.info('source %s from %s: %s (%s)', model, source_params, describe_load(report),
                     'no classifier in the file: a backbone' if headless
                     else 'classifier of %d classes, replaced' % classes)
    elif source_pretrained:
        net = get_model(model, pretrained=True, ctx=ctx[0], **kw)
        if len(ctx) > 1:
            net.collect_params().reset_ctx(ctx)
        if log:
            log.info("source %s: GluonCV's pretrained weights", model)
    else:
        raise ConfigError('no source weights: pass --source-params FILE or --source-pretrained')
    return net


def build_target(model, num_classes, ctx, source=None, init=None, model_kwargs=None, seed=0):
    """A ``num_classes`` network whose non-classifier parameters are copies of ``source``'s
    (same structural keys and shapes, checked: :func:`copy_params`); the classifier keeps
    ``init``'s values."""
    from ..losses.transfer_common import head_keys
    from ..zoo import get_model
    kw = dict(model_kwargs or {})
    ctx = list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]
    try:
        net = get_model(model, classes=num_classes, **kw)
    except TypeError as err:
        raise ConfigError('model %r does not accept %s: %s' % (model, sorted(kw), err)) from None
    mx.random.seed(seed)
    net.initialize(init or mx.init.Xavier(), ctx=ctx)
    if source is None:
        return net
    src = source._collect_params_with_prefix()
    arrays = {k: p.data(p.list_ctx()[0]) for k, p in src.items()}
    return copy_params(net, arrays, skip=head_keys(net), source='source network', target=model)
