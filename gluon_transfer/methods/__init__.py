"""Fine-tuning methods as plug-ins of ``train_transfer.py``: the interface and what they
share are :mod:`.base`; one module per method, each registered in
:data:`gluon_transfer.registry.METHODS` when this package is imported:

========================  ====================  ==================================================
module                    ``--reg``             what it adds
========================  ====================  ==================================================
:mod:`.plain`             ``l2``                nothing but weight decay (plain fine-tuning)
:mod:`.l2sp`              ``l2sp``              the L2-SP penalty toward the source weights
:mod:`.delta`             ``delta``, ``fea_map``  feature-map distances to the frozen source
:mod:`.afds`              ``afd``               AFD distillation; with ``--afs`` the AFDS phases
:mod:`.afa`               ``afa-ast``/``-act``  AFA's two stages, ``--afa-two-stage``
:mod:`.nonbinary`         every run             layer groups: per-group lrs, re-initialised groups
========================  ====================  ==================================================

:func:`add_arguments` adds the options every method shares (source weights, ``--reg``,
``--taps``, the reference spellings ``--alpha``/``--beta``, ``--eval-ten-crop``) and every
method's own group; :func:`select` picks the methods of a run and refuses options that
belong to none of them.
"""
from ..errors import ConfigError
from ..registry import METHODS, unknown_name_message
from ..options import add_option, given, name_list
from .base import Method, check_given
from . import plain, l2sp, delta, afds, afa, nonbinary  # noqa: F401  (registers the methods)

__all__ = ['Method', 'add_arguments', 'select', 'method_classes', 'all_regs']


def method_classes():
    """Every registered method class, in registry (name) order."""
    return [METHODS.get(name) for name in METHODS]


def all_regs():
    """Every ``--reg`` value some method serves, in registry order."""
    return [r for m in method_classes() for r in (m.regs or ())]


def add_arguments(parser):
    """The shared transfer options, then every registered method's argparse group."""
    classes = method_classes()
    regs = all_regs()
    g = parser.add_argument_group('transfer')
    add_option(g, 'transfer', '--source-params', default=None,
               help='source (e.g. ImageNet) weights of --model, save_parameters layout; loaded with key checks, the '
                    'classifier is replaced')
    add_option(g, 'transfer', '--source-pretrained', action='store_true',
               help="use GluonCV's pretrained file for --model already in $MXNET_HOME/models (never downloads)")
    add_option(g, 'transfer', '--reg', default='l2',
               help='the fine-tuning method, by its regularizer: %s (l2 = weight decay only; afa-act is AFA stage 2, '
                    'with --init-from; afd with or without --afs)' % ', '.join(regs))
    users = [r for m in classes if 'taps' in m.accepts for r in (m.regs or ())]
    add_option(g, 'shared', '--taps', type=name_list, default=None,
               help='%s: feature taps (Conv2D paths, e.g. layer1.2.conv3,...); default: the last conv of the last '
                    'block of each stage (AFA on MobileNetV2: its projection convs)' % ', '.join(users))
    add_option(g, 'transfer', '--eval-ten-crop', action='store_true',
               help="evaluate on ten crops (corners + centre, and mirrored) of the image resized to "
                    "input-size/crop-ratio (AFA's 'improved' evaluation)")
    a = parser.add_argument_group(
        'reference spellings (the DELTA / L2-SP / AFA reference code names the weights alpha and beta)')
    for alias, what in (('alpha', 'first'), ('beta', 'second')):
        meaning = ', '.join('%s for --reg %s' % ('--' + m.aliases[alias].replace('_', '-'), '/'.join(m.regs))
                            for m in classes if alias in m.aliases)
        add_option(a, 'alias', '--' + alias, type=float, default=None,
                   help='the chosen method\'s %s weight: %s; an error with any other --reg' % (what, meaning))
    for cls in classes:
        cls.add_arguments(parser)


def select(args):
    """``(always, chosen)``: instances of the methods applying to every run and of the one
    serving ``--reg`` (or claiming the run by one of its flags when ``--reg`` was not
    given; ``args.reg`` is then set to its first). ConfigError for an unknown ``--reg`` or
    a given option none of them takes (:func:`~gluon_transfer.methods.base.check_given`)."""
    classes = method_classes()
    if 'reg' not in given(args):
        claimed = [m for m in classes if m.regs and m.claims(args)]
        if claimed:
            args.reg = claimed[0].regs[0]
    serving = [m for m in classes if m.regs and args.reg in m.regs]
    if not serving:
        raise ConfigError(unknown_name_message('regularizer', args.reg, all_regs()))
    always = [m for m in classes if m.regs is None]
    check_given(args, always + serving[:1], classes, args.reg)
    return [m(args.reg) for m in always], serving[0](args.reg)
