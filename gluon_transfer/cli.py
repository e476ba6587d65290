"""Argument groups and the run driver shared by train_cifar.py, train_imagenet.py and
train_transfer.py. The scripts only pick a preset; everything else happens here and in
the engine, so the three trainers never copy code from each other.

Flags follow GluonCV / open-aff conventions (``--batch-size`` is per device, ``--gpus``,
``--num-gpus``, ``--lr-decay-epoch 40,60``, ``--resume-params``...).

Where a run writes (:func:`plan_run_dir`, :func:`open_run_dir`; the files are described in
``engine/checkpoint.py``): ``--save-dir DIR`` when given, refused when ``DIR`` already holds a
run (continue that one with ``--resume DIR``); ``--resume DIR`` alone continues in ``DIR``;
otherwise a new folder ``runs/<script>/<model>-<YYYYmmdd-HHMMSS>`` (``runs/demo/...`` for
``--demo``), with ``runs/<script>/latest`` pointing at the newest. Distributed runs
(``--kvstore dist_*``) need ``--save-dir`` (or ``--resume``): every worker process must
write into the same folder. Arguments are checked (:func:`validate_args`) and data, network
and task are built before the folder or any file is created, so a run refused for bad
arguments leaves nothing behind. A run ends with a summary: best val top-1 and its epoch,
wall time, the files left and the commands to evaluate and export the best network.
"""
import argparse
import copy
import difflib
import fnmatch
import logging
import os
import shlex
import sys
import time
import warnings

from .errors import ConfigError, GluonTransferError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-preset defaults (GluonCV's / open-aff's scripts, without their known bugs).
PRESET_DEFAULTS = {
    'cifar': dict(model='cifar_resnet20_v1', dataset='cifar10', batch_size=128, num_epochs=200, lr=0.1,
                  wd=1e-4, optimizer='nag', lr_mode='step', lr_decay_epoch='100,150', warmup_epochs=0,
                  mode='auto', init='xavier', save_frequency=10, log_interval=50, input_size=32),
    'imagenet': dict(model='resnet50_v1b', dataset='imagenet', batch_size=32, num_epochs=120, lr=0.1,
                     wd=1e-4, optimizer='nag', lr_mode='cosine', lr_decay_epoch='40,60', warmup_epochs=5,
                     mode='auto', init='msra', save_frequency=10, log_interval=50, input_size=224),
    # Fine-grained transfer (the DELTA / AFA / L2-SP reference settings): batch 64,
    # SGD momentum 0.9, lr 0.01, 4500 iterations (--max-iter; num_epochs 0 = derived from it),
    # step decay x0.1 at 2/3 of training (lr_decay_epoch '' = derived), weight decay by --reg.
    'transfer': dict(model='resnet101_v1b', dataset='transfer', batch_size=64, num_epochs=0, lr=0.01,
                     wd=None, optimizer='sgd', lr_mode='step', lr_decay_epoch='', warmup_epochs=0,
                     mode='auto', init='xavier', save_frequency=0, log_interval=20, input_size=224),
}

# `make demo`: a short real run on the CIFAR-10 sample committed in data/cifar10_sample.
DEMO_DEFAULTS = dict(data_dir=os.path.join(REPO_ROOT, 'data', 'cifar10_sample'), model='cifar_resnet20_v1',
                     dataset='cifar10', batch_size=64, num_epochs=8, lr=0.2, lr_mode='cosine',
                     warmup_epochs=1, wd=5e-4, log_interval=20)

# Model options forwarded to get_model() when given (None = the model's own default).
MODEL_OPTIONS = []

# open-aff's script names (``--model resnet|resnext``) for our registered AFF networks.
MODEL_ALIASES = {
    'cifar': {'resnet': 'cifar_aff_resnet', 'resnext': 'cifar_aff_resnext'},
    'imagenet': {'resnet': 'aff_resnet', 'resnext': 'aff_resnext'},
}


def add_model_option(flags, kwarg, help, type=str, choices=None):
    """Register a model constructor option (``--flag`` -> ``get_model(**{kwarg: value})``);
    ``flags`` is one flag or a tuple of aliases."""
    MODEL_OPTIONS.append((flags if isinstance(flags, tuple) else (flags,), kwarg, help, type, choices))


add_model_option(('--fusion', '--askc-type'), 'fusion',
                 'AFF networks: add, aff or iaff (open-aff names DirectAdd, ASKCFuse, ResGlobLocaforGlobLocaCha)')
add_model_option('--blocks', 'blocks', 'CIFAR AFF networks: blocks per stage (ResNet depth 6b+2, ResNeXt 9b+2)',
                 type=int)
add_model_option('--channel-times', 'channel_times', 'CIFAR AFF ResNet: width multiplier of 16/16/32/64', type=int)
add_model_option('--start-layer', 'start_layer', 'AFF networks: first stage (1-based) that fuses with attention',
                 type=int)
add_model_option(('--num-layers', '--num-layer'), 'num_layers', 'AFF ImageNet networks: 50, 101 or 152', type=int)


def add_model_options(group):
    """Add every registered model option to an argparse group (scripts and tools share them)."""
    for flags, kwarg, help_, type_, choices in MODEL_OPTIONS:
        group.add_argument(*flags, dest='model_' + kwarg, default=None, type=type_, choices=choices, help=help_)


def _int_list(text):
    try:
        return tuple(float(t) if '.' in t else int(t) for t in str(text).split(',') if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated numbers, got %r' % text) from None


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr (``error: ...``, exit
    status 2), and which names the closest known option for a mistyped one
    (``--epochs`` -> ``did you mean --num-epochs?``, by ``difflib`` similarity)."""

    def error(self, message):
        prefix = 'unrecognized arguments: '
        if message.startswith(prefix):
            message = self.unknown_options_message(message[len(prefix):].split())
        self.exit(2, 'error: %s\n' % message)

    def unknown_options_message(self, tokens):
        known = sorted({o for a in self._actions for o in a.option_strings})
        unknown = [t for t in tokens if t.startswith('-') and not _is_number(t)]
        if not unknown:
            return 'unrecognized arguments: %s (see --help)' % ' '.join(tokens)
        parts = []
        for tok in unknown:
            name = tok.split('=', 1)[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            parts.append('%s (did you mean %s?)' % (name, close[0]) if close else name)
        return 'unknown option%s %s; see --help' % ('s' if len(parts) > 1 else '', ', '.join(parts))


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def build_parser(preset, description):
    d = PRESET_DEFAULTS[preset]
    p = ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--list-models', nargs='?', const='', default=None, metavar='PATTERN',
                   help='print the model names (registered and GluonCV) matching PATTERN (a glob such as '
                        "'*aff*', or a substring; none: all) and exit")
    g = p.add_argument_group('model')
    aliases = MODEL_ALIASES.get(preset, {})
    g.add_argument('--model', default=d['model'], help='registered or GluonCV model name, see --list-models%s' % (
        ' (open-aff aliases: %s)' % ', '.join('%s = %s' % kv for kv in sorted(aliases.items())) if aliases else ''))
    g.add_argument('--params', default=None, help='initialise the network from this .params file (checked)')
    g.add_argument('--init', default=d['init'], choices=['xavier', 'msra'],
                   help='initializer for parameters not loaded from a file')
    if preset != 'transfer':      # a fine-tuned network starts from its source's fusion weights
        g.add_argument('--aff-init', default='reference', choices=['reference', 'neutral'],
                       help='AFF/iAFF networks trained from scratch: how the fusion weights start. reference: as '
                            'open-aff (every MS-CAM BatchNorm gamma 1: a random per-element mixture of the two '
                            'inputs); neutral: the last BN gamma of each attention branch 0, so every weight starts '
                            'at 0.5 (AFF = x + y), which trains much faster in the first epochs')
    add_model_options(g)

    g = p.add_argument_group('data')
    g.add_argument('--dataset', default=d['dataset'], help='dataset preset')
    g.add_argument('--data-dir', default=None,
                   help='directory with train.rec/.idx and val.rec/.idx (or test.*), or original CIFAR binaries')
    g.add_argument('--rec-train', default=None, help='training .rec (its .idx beside it unless --rec-train-idx)')
    g.add_argument('--rec-train-idx', default=None)
    g.add_argument('--rec-val', default=None)
    g.add_argument('--rec-val-idx', default=None)
    g.add_argument('--use-rec', action='store_true', help='accepted for GluonCV compatibility; RecordIO is the default')
    g.add_argument('--input-size', type=int, default=d['input_size'])
    g.add_argument('--crop-ratio', type=float, default=0.875, help='val: resize to input/crop-ratio, center crop')
    g.add_argument('--coarse-labels', action='store_true', help='CIFAR-100: the 20 superclasses')
    g.add_argument('-j', '--num-data-workers', dest='num_workers', type=int, default=2,
                   help='decoding/augmentation threads')

    g = p.add_argument_group('optimisation')
    g.add_argument('--batch-size', type=int, default=d['batch_size'], help='per device')
    g.add_argument('--num-epochs', type=int, default=d['num_epochs'])
    g.add_argument('--max-iter', type=int, default=0, help='stop after this many iterations (0: all epochs)')
    g.add_argument('--optimizer', default=d['optimizer'], choices=['sgd', 'nag', 'adam'])
    g.add_argument('--lr', type=float, default=d['lr'], help='base learning rate (for the global batch)')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--wd', type=float, default=d['wd'],
                   help='weight decay' + (' (default: 1e-4 for --reg l2, 0 for the penalties)' if d['wd'] is None else ''))
    g.add_argument('--no-wd', action='store_true', help='no weight decay on BN gamma/beta and biases')
    g.add_argument('--lr-mode', default=d['lr_mode'], choices=['step', 'cosine', 'poly', 'constant'])
    g.add_argument('--lr-decay', type=float, default=0.1, help='step mode: factor at each decay epoch')
    g.add_argument('--lr-decay-epoch', type=_int_list, default=_int_list(d['lr_decay_epoch']),
                   help='step mode: absolute epochs at which the LR is multiplied by --lr-decay')
    g.add_argument('--lr-decay-period', type=int, default=0, help='step mode: decay every N epochs instead')
    g.add_argument('--reset-momentum', action='store_true',
                   help='step mode, sgd/nag: zero the momentum buffers at each LR drop (the attention-transfer '
                        'reference re-creates its optimizer there)')
    g.add_argument('--warmup-epochs', type=float, default=d['warmup_epochs'], help='linear warm-up from --warmup-lr')
    g.add_argument('--warmup-lr', type=float, default=0.0)
    g.add_argument('--label-smoothing', type=float, nargs='?', const=0.1, default=0.0,
                   help='label smoothing eta (flag alone: 0.1)')
    g.add_argument('--mixup', action='store_true', help='mixup training')
    g.add_argument('--mixup-alpha', type=float, default=0.2 if preset in ('imagenet', 'transfer') else 1.0)
    g.add_argument('--mixup-off-epoch', type=int, default=0, help='no mixup in the last N epochs')

    g = p.add_argument_group('runtime')
    g.add_argument('--mode', default=d['mode'], choices=['auto', 'hybrid', 'imperative'],
                   help='hybrid = hybridize(static_alloc, static_shape); auto (default) = whichever trained faster '
                        'on CPU (docs/benchmarks.md, "Training mode"): imperative for GluonCV\'s cifar_resnet*, hybrid for '
                        'every other network (WRNs, AFF networks, ImageNet models) and on GPUs')
    g.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'],
                   help='float16 needs GPUs; bfloat16 = AMP on CPU: faster than float32 on some CPUs (an AMD EPYC '
                        'with avx512_bf16: 1.09x training, 1.30x inference), slower on others; '
                        'bench/bench_precision.py --quick measures yours')
    g.add_argument('--amp-loss-scale', default='auto', choices=['auto', 'none', 'static', 'dynamic'],
                   help='loss scaling; auto = dynamic for float16, none for float32/bfloat16')
    g.add_argument('--amp-init-scale', type=float, default=2.0 ** 16,
                   help='initial (static: constant) loss scale (default 65536)')
    g.add_argument('--amp-scale-window', type=int, default=2000,
                   help='dynamic: double the scale after this many steps without overflow')
    g.add_argument('--gpus', default='', help='GPU ids, e.g. 0,1 (empty: CPU)')
    g.add_argument('--num-gpus', type=int, default=0, help='use GPUs 0..N-1')
    g.add_argument('--ctx', default='', help='explicit contexts, e.g. cpu:0,cpu:1 or gpu:0,gpu:1')
    g.add_argument('--kvstore', default='device', help='local, device, dist_sync, dist_device_sync, dist_async')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--log-interval', type=int, default=d['log_interval'], help='batches between progress lines')

    g = p.add_argument_group('checkpoints and logs')
    g.add_argument('--save-dir', default=None,
                   help='run folder for checkpoints, best.params, metrics.jsonl, train.log; must not hold another '
                        'run (default: a new folder runs/%s/MODEL-YYYYmmdd-HHMMSS%s, linked as runs/%s/latest)'
                        % (preset, ' (runs/demo/... with --demo)' if preset == 'cifar' else '', preset))
    g.add_argument('--save-frequency', type=int, default=d['save_frequency'],
                   help='keep every N-th epoch checkpoint (the latest is always kept; with --val-interval only '
                        'evaluated epochs are checkpointed)')
    g.add_argument('--val-interval', type=int, default=1, metavar='N',
                   help='evaluate on the val split, rank the best and write a checkpoint every N epochs and at the '
                        'last epoch (AFDS: also at the end of phase 1, where the masks are chosen); metrics.jsonl '
                        'still gets a line per epoch (val keys only where evaluated); a kill loses at most N epochs')
    g.add_argument('--resume', default=None,
                   help='run folder or checkpoint .json to continue from (exact); the run continues in that folder '
                        'unless --save-dir names a new one')
    g.add_argument('--allow-schedule-change', action='store_true',
                   help='--resume with other schedule options (--num-epochs, --lr, --lr-mode, decay, warm-up, batch '
                        'size) than the checkpoint\'s: continue on the new schedule (default: refused)')
    g.add_argument('--resume-params', default='', help='GluonCV-style: parameters to resume from')
    g.add_argument('--resume-states', default='', help='GluonCV-style: trainer states to resume from')
    g.add_argument('--resume-epoch', type=int, default=0, help='GluonCV-style: epochs already done')
    g.add_argument('--logging-file', default=None, help='log file (default: SAVE_DIR/train.log)')
    if preset == 'cifar':
        p.add_argument('--demo', action='store_true',
                       help='short run on the bundled CIFAR-10 sample (what `make demo` runs)')
    if preset == 'imagenet':
        p.add_argument('--last-gamma', action='store_true', help='zero-init the last BN gamma of each block')
    add_augment_args(p, preset)
    if preset in DISTILL_TAPS:
        add_distill_args(p, preset)
    if preset == 'transfer':
        add_transfer_args(p, preset)
    return p


def parse_args(parser, argv=None):
    """Parse, then apply ``--demo`` defaults to options the user did not give."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, 'demo', False):
        probe = copy.deepcopy(parser)
        for action in probe._actions:
            action.default = argparse.SUPPRESS
        explicit = vars(probe.parse_args(argv))
        for k, v in DEMO_DEFAULTS.items():
            if k not in explicit:
                setattr(args, k, v)
    return args


def validate_args(args, preset):
    """One-line errors for option values no run can use, checked before anything is created.
    (``train_transfer.py``'s ``--num-epochs 0`` means "enough epochs for ``--max-iter``"; its
    ``--lr``/``--max-iter`` may still be None = the method's default.)"""
    def bad(flag, rule, value):
        raise ConfigError('%s must be %s, got %r' % (flag, rule, value))
    if args.batch_size < 1:
        bad('--batch-size', '>= 1 (images per device)', args.batch_size)
    if preset == 'transfer':
        if args.num_epochs < 0:
            bad('--num-epochs', '>= 0 (0: enough epochs for --max-iter)', args.num_epochs)
        if args.num_epochs == 0 and args.max_iter == 0:
            raise ConfigError('--max-iter 0 with --num-epochs 0 leaves nothing to train: give --max-iter N '
                              'or --num-epochs N')
    elif args.num_epochs < 1:
        bad('--num-epochs', '>= 1', args.num_epochs)
    if args.max_iter is not None and args.max_iter < 0:
        bad('--max-iter', '>= 0 (0: all epochs)', args.max_iter)
    if args.lr is not None and not (args.lr > 0 and args.lr != float('inf')):
        bad('--lr', 'a number > 0', args.lr)
    if args.num_workers < 0:
        bad('-j/--num-data-workers', '>= 0', args.num_workers)
    if args.warmup_epochs < 0:
        bad('--warmup-epochs', '>= 0', args.warmup_epochs)
    if args.log_interval < 0:
        bad('--log-interval', '>= 0 (0: no progress lines)', args.log_interval)
    if args.save_frequency < 0:
        bad('--save-frequency', '>= 0 (0: only the latest checkpoint)', args.save_frequency)
    if args.val_interval < 1:
        bad('--val-interval', '>= 1 (epochs between evaluations)', args.val_interval)
    if args.resume_epoch < 0:
        bad('--resume-epoch', '>= 0', args.resume_epoch)
    if args.input_size < 1:
        bad('--input-size', '>= 1', args.input_size)
    if args.resume and (args.resume_params or args.resume_states or args.resume_epoch):
        raise ConfigError('give either --resume DIR or the GluonCV-style --resume-params/--resume-states/'
                          '--resume-epoch, not both')
    return args


def run_parent(args, preset):
    """The folder that holds the default run folders: ``runs/demo`` or ``runs/<preset>``."""
    return os.path.join('runs', 'demo' if getattr(args, 'demo', False) else preset)


def display_path(path):
    """``path`` relative to the working directory when it lies below it, else absolute."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def plan_run_dir(args, preset):
    """Decide where the run writes, creating nothing (see the module docstring). Sets
    ``args.save_dir``: the explicit ``--save-dir`` (refused when it holds another run), the
    folder of ``--resume`` when no ``--save-dir`` is given (the symlink ``latest`` resolved, so
    a later run re-pointing it cannot redirect this one), or None: a new folder that
    :func:`open_run_dir` creates. ``--resume`` is checked here (pointer and files present)."""
    from .engine.checkpoint import POINTER, METRICS, holds_run, resolve_resume
    from .engine.distributed import is_distributed
    args.model = MODEL_ALIASES.get(preset, {}).get(args.model, args.model)
    resume_dir = None
    if args.resume:
        _, d = resolve_resume(args.resume)
        resume_dir = os.path.realpath(d)
    if args.save_dir:
        if holds_run(args.save_dir) and os.path.realpath(args.save_dir) != resume_dir:
            names = os.listdir(args.save_dir)
            found = next((n for n in (POINTER, METRICS) if n in names), None) or \
                sorted(n for n in names if n.endswith('.params'))[0]
            raise ConfigError('--save-dir %s already holds a run (%s): continue it with --resume %s, or choose '
                              'another --save-dir' % (args.save_dir, found, args.save_dir))
    elif resume_dir is not None:
        args.save_dir = display_path(resume_dir)
    elif is_distributed(args.kvstore):
        raise ConfigError('--kvstore %s needs --save-dir DIR (or --resume DIR): all worker processes must write '
                          'into the same run folder' % args.kvstore)
    args.run_planned = ('planned', args.save_dir)
    return args.save_dir


def open_run_dir(args, preset):
    """Create the run folder :func:`plan_run_dir` chose (planning first if needed; once per
    ``args``) and return it: a new ``runs/<preset>/<model>-<YYYYmmdd-HHMMSS>[-n]`` made with
    ``os.mkdir`` (never shared with a concurrent run), ``latest`` re-pointed at it; or the
    given/resumed folder."""
    from .engine.checkpoint import make_run_dir, point_latest
    if args.save_dir is not None and getattr(args, 'run_dir_open', None) == args.save_dir:
        return args.save_dir
    if getattr(args, 'run_planned', None) != ('planned', args.save_dir):
        plan_run_dir(args, preset)
    if args.save_dir is None:
        parent = run_parent(args, preset)
        name = '%s-%s' % (str(args.model).replace(os.sep, '_'), time.strftime('%Y%m%d-%H%M%S'))
        args.save_dir = make_run_dir(parent, name)
        point_latest(parent, args.save_dir)
    else:
        os.makedirs(args.save_dir, exist_ok=True)
    args.run_dir_open = args.save_dir
    args.run_planned = ('planned', args.save_dir)
    return args.save_dir


def list_models_command(pattern, out=None):
    """``--list-models [PATTERN]``: the names ``get_model``/``--model`` accept, ours and GluonCV's,
    matching ``PATTERN`` (a glob when it has ``*?[``, else a substring; case-insensitive)."""
    from .zoo import gluoncv_model_names, list_models
    out = out or sys.stdout
    pattern = (pattern or '').lower()

    def match(name):
        name = name.lower()
        if any(c in pattern for c in '*?['):
            return fnmatch.fnmatchcase(name, pattern)
        return pattern in name
    ours = [n for n in list_models(include_gluoncv=False) if match(n)]
    gcv = sorted(n for n in set(gluoncv_model_names()) - set(ours) if match(n))
    if not ours and not gcv:
        raise ConfigError('no model name matches %r (--list-models without a pattern lists all)' % pattern)
    for title, names in (('gluon_transfer', ours), ('GluonCV', gcv)):
        if names:
            out.write('%s models (%d):\n' % (title, len(names)))
            out.write(''.join('  %s\n' % n for n in names))
    out.flush()
    return 0


def resolve_ctx(args):
    import mxnet as mx
    if args.ctx:
        out = []
        for tok in args.ctx.split(','):
            kind, _, idx = tok.strip().partition(':')
            if kind not in ('cpu', 'gpu') or not (idx or '0').isdigit():
                raise ConfigError('bad --ctx entry %r; expected cpu:N or gpu:N' % tok)
            out.append(mx.Context(kind, int(idx or 0)))
    elif args.gpus:
        out = [mx.gpu(int(i)) for i in args.gpus.split(',') if i.strip()]
    elif args.num_gpus > 0:
        out = [mx.gpu(i) for i in range(args.num_gpus)]
    else:
        out = [mx.cpu()]
    gpus = [c for c in out if c.device_type == 'gpu']
    if gpus:
        have = mx.context.num_gpus()
        if max(c.device_id for c in gpus) >= have:
            raise ConfigError('asked for %s but this machine has %d GPU(s)%s' % (
                ','.join(str(c) for c in gpus), have,
                '' if have else ' (and the installed mxnet may be the CPU build: see requirements-gpu.txt)'))
    return out


class _Pending(logging.Handler):
    """Keeps the records logged before the run folder exists, for :func:`log_to_file`."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def setup_logging(save_dir=None, logging_file=None, rank=0, defer=False):
    """The ``gluon_transfer`` logger: console, plus ``logging_file`` or ``SAVE_DIR/train.log``
    (``train.rank<r>.log`` for rank r > 0) when one is given. ``defer=True``: no file yet; the
    records are kept until :func:`log_to_file` opens it (a run creates its folder only after
    its arguments, data and network were checked)."""
    log = logging.getLogger('gluon_transfer')
    log.setLevel(logging.INFO)
    close_logging()
    fmt = logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S')
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    log.addHandler(console)
    log.propagate = False
    if defer:
        log.addHandler(_Pending())
    elif save_dir is not None or logging_file:
        log_to_file(save_dir, logging_file, rank)
    return log


def log_to_file(save_dir, logging_file=None, rank=0):
    """Add the log file (see :func:`setup_logging`) and write the records kept so far into it."""
    log = logging.getLogger('gluon_transfer')
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
    path = logging_file or os.path.join(save_dir, 'train.log' if rank == 0 else 'train.rank%d.log' % rank)
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter('%(asctime)s %(message)s'))
    for h in list(log.handlers):
        if isinstance(h, _Pending):
            for record in h.records:
                fh.handle(record)
            log.removeHandler(h)
    log.addHandler(fh)
    return path


def close_logging():
    log = logging.getLogger('gluon_transfer')
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def model_kwargs(args):
    return {kwarg: getattr(args, 'model_' + kwarg) for _, kwarg, _, _, _ in MODEL_OPTIONS
            if getattr(args, 'model_' + kwarg, None) is not None}


def decay_epochs(args):
    if args.lr_decay_period > 0:
        return tuple(range(args.lr_decay_period, args.num_epochs, args.lr_decay_period))
    return tuple(args.lr_decay_epoch)


# --mode auto, measured on the 2-core CPU box (bench/bench_aff.py section mode, docs/benchmarks.md
# "Training mode"): GluonCV's CIFAR ResNets trained faster imperatively than with
# hybridize(static_alloc, static_shape) (hybrid/imperative 0.76-0.81); our WRNs (1.34), CIFAR AFF
# ResNets (1.05) and ImageNet-size networks (ResNet-50: 1.45) train faster hybridized.
IMPERATIVE_MODEL_PREFIXES = ('cifar_resnet',)


def resolve_mode(mode, model, ctx=None):
    """``--mode`` -> 'hybrid' or 'imperative'. ``auto`` picks by model name (see
    IMPERATIVE_MODEL_PREFIXES) on CPU; on GPUs it always hybridizes (fewer kernel launches)."""
    if mode in ('hybrid', 'imperative'):
        return mode
    if mode != 'auto':
        raise ConfigError("--mode must be auto, hybrid or imperative; got %r" % (mode,))
    if ctx and any(getattr(c, 'device_type', 'cpu') == 'gpu' for c in ctx):
        return 'hybrid'
    return 'imperative' if str(model).startswith(IMPERATIVE_MODEL_PREFIXES) else 'hybrid'


def fit_config(args):
    from .engine.trainer import FitConfig
    return FitConfig(num_epochs=args.num_epochs, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                     wd=args.wd, lr_mode=args.lr_mode, lr_decay=args.lr_decay, lr_decay_epochs=decay_epochs(args),
                     warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, no_wd=args.no_wd,
                     label_smoothing=args.label_smoothing or 0.0,
                     mixup_alpha=args.mixup_alpha if args.mixup else 0.0, mixup_off_epoch=args.mixup_off_epoch,
                     dtype=args.dtype, kvstore=args.kvstore, mode=args.mode, log_interval=args.log_interval,
                     seed=args.seed, save_frequency=args.save_frequency, max_iters=args.max_iter,
                     val_interval=getattr(args, 'val_interval', 1),
                     reset_momentum_at_drops=getattr(args, 'reset_momentum', False),
                     amp_loss_scale=args.amp_loss_scale, amp_init_scale=args.amp_init_scale,
                     amp_scale_window=args.amp_scale_window,
                     allow_schedule_change=getattr(args, 'allow_schedule_change', False))


def build_network(args, num_classes, ctx, log):
    import mxnet as mx
    from .zoo import get_model
    from .weights import load_params, describe_load
    kwargs = model_kwargs(args)
    if getattr(args, 'last_gamma', False):
        kwargs['last_gamma'] = True
    try:
        net = get_model(args.model, classes=num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError('model %r does not accept %s: %s' % (args.model, sorted(kwargs), err)) from None
    init = mx.init.Xavier() if args.init == 'xavier' else mx.init.MSRAPrelu()
    if getattr(args, 'aff_init', 'reference') == 'neutral':
        from .nn.fusion import neutral_gate_init
        log.info('--aff-init neutral: %d attention-branch BN gammas start at 0 (fusion weights 0.5)',
                 neutral_gate_init(net))
    net.initialize(init, ctx=ctx)
    if args.params:
        log.info('initialising from %s: %s', args.params, describe_load(load_params(net, args.params, ctx=ctx)))
    return net


def default_fit(engine, args, log):
    """The ``fit`` hook of :func:`run`: one ``engine.fit`` with the resume flags."""
    return engine.fit(resume=args.resume, resume_params=args.resume_params, resume_states=args.resume_states,
                      resume_epoch=args.resume_epoch)


def run(args, preset, make_task=None, build_net=None, build_val=None, fit=None):
    """Build data, network and task from ``args`` and train. Returns the engine.

    Hooks (train_transfer.py uses them): ``build_net(args, data, ctx, log) -> net`` replaces
    :func:`build_network`; ``make_task(args, net, data, ctx, log) -> Task``;
    ``build_val(args, batch_size, num_parts, part_index) -> iterator or None`` replaces the
    evaluation iterator (None keeps it); ``fit(engine, args, log)`` trains (default
    :func:`default_fit`; AFDS runs its two phases and the mask update there).

    The run folder is created (:func:`open_run_dir`) only once data, network, task and engine
    were built, so bad options leave no file behind; what was logged until then goes into its
    ``train.log`` too."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import mxnet as mx  # noqa: F401
        from .data import build_data
    from .engine.checkpoint import CheckpointManager
    from .engine.distributed import create_kvstore
    from .engine.precision import setup_precision
    from .engine.tasks import Classify
    from .engine.trainer import Engine, seed_epoch

    t_start = time.time()
    args.model = MODEL_ALIASES.get(preset, {}).get(args.model, args.model)
    if getattr(args, 'run_planned', None) != ('planned', args.save_dir):
        plan_run_dir(args, preset)
    # The ps-lite scheduler assigns ranks when the workers connect, so the kvstore comes
    # first: the rank names this worker's log file and picks its data shard.
    kv, part_index, num_parts = create_kvstore(args.kvstore)
    log = setup_logging(defer=True)
    if num_parts > 1:
        log.info('kvstore %s: worker rank %d of %d (pid %d); --lr is for the global batch of all workers',
                 args.kvstore, part_index, num_parts, os.getpid())
    ctx = resolve_ctx(args)
    args.mode = resolve_mode(args.mode, args.model, ctx)
    setup_precision(args.dtype, ctx)
    seed_epoch(args.seed, -1)      # network initialisation is reproducible from --seed
    fit_cfg = fit_config(args)
    fit_cfg.kvstore = kv
    make_task = make_task or distill_task_factory(args)
    data = build_data(args.dataset, data_dir=args.data_dir, rec_train=args.rec_train,
                      rec_train_idx=args.rec_train_idx, rec_val=args.rec_val, rec_val_idx=args.rec_val_idx,
                      batch_size=args.batch_size * len(ctx), num_workers=args.num_workers,
                      num_parts=num_parts, part_index=part_index, shard_val=False, seed=args.seed, input_size=args.input_size,
                      crop_ratio=args.crop_ratio, coarse_labels=args.coarse_labels, **augment_kwargs(args))
    log.info('data: %s, %d classes, %d training images (%d batches of %d), %d validation images',
             args.dataset, data.num_classes, data.num_train, len(data.train), args.batch_size * len(ctx),
             data.val.num_samples if data.val is not None else 0)
    net = build_net(args, data, ctx, log) if build_net else build_network(args, data.num_classes, ctx, log)
    task = make_task(args, net, data, ctx, log) if make_task else Classify()
    val = build_val(args, args.batch_size * len(ctx), num_parts, part_index) if build_val else None
    if val is None:
        val = data.val
    if val is None:
        log.warning('WARNING: no validation split (%s): training without evaluation, so no epoch is ranked and no '
                    'best.params is written; pass --rec-val FILE or add val.rec/.idx to the data dir',
                    'no --rec-val, and %s has no val/test .rec' % args.data_dir if args.data_dir else 'no --rec-val')
    engine = Engine(net, task, ctx, fit_cfg, data.train, val, data.num_classes, logger=log,
                    run_info={'model': args.model, 'dataset': args.dataset, 'model_kwargs': model_kwargs(args)})
    save_dir = open_run_dir(args, preset)
    log_to_file(save_dir, args.logging_file if part_index == 0 else None, part_index)
    log.info('run folder: %s (checkpoints, best.params, metrics.jsonl, train.log)', display_path(save_dir))
    if not any(getattr(c, 'device_type', 'cpu') == 'gpu' for c in ctx):
        from .threads import describe
        log.info('%s', describe())
    prefix = '%s-%s' % (args.dataset, args.model)
    engine.ckpt = CheckpointManager(save_dir, prefix, args.save_frequency, log)
    engine.metrics_path = os.path.join(save_dir, 'metrics.jsonl')
    log.info('model %s on %s, %s, %s mode, %d epochs, lr %g (%s)', args.model, ','.join(map(str, ctx)),
             args.dtype, args.mode, args.num_epochs, args.lr, args.lr_mode)
    (fit or default_fit)(engine, args, log)
    if engine.is_writer:
        log.info('%s', run_summary(engine, args, preset, time.time() - t_start))
    return engine


def _duration(seconds):
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return '%dh%02dm%02ds' % (h, m, sec) if h else ('%dm%02ds' % (m, sec) if m else '%ds' % sec)


def _model_flags(args):
    """The model-option flags (``--fusion aff ...``) that rebuild this run's network."""
    out = []
    for flags, kwarg, _, _, _ in MODEL_OPTIONS:
        value = getattr(args, 'model_' + kwarg, None)
        if value is not None:
            out += [flags[0], str(value)]
    return out


def run_summary(engine, args, preset, elapsed):
    """The end-of-run block: what was trained, the best epoch, the files left and the exact
    commands that evaluate and export the best network (``tools/evaluate.py``,
    ``tools/export.py``; their flags)."""
    from .engine.checkpoint import BEST_PARAMS, POINTER
    save_dir = display_path(engine.ckpt.save_dir) if engine.ckpt is not None else None
    ipe = max(engine.iters_per_epoch, 1)
    planned = engine.cfg.num_epochs * ipe
    steps = engine.global_step
    full, rest = divmod(steps, ipe)
    if steps < planned and engine.cfg.max_iters and steps >= engine.cfg.max_iters:
        head = 'reached --max-iter %d: %d iterations done (%d of %d epochs complete%s)' % (
            engine.cfg.max_iters, steps, full, engine.cfg.num_epochs,
            ', %d of %d iterations of epoch %d' % (rest, ipe, full + 1) if rest else '')
    else:
        head = 'done: %d epochs (%d iterations)' % (full, steps) if not rest else \
            'done: %d iterations (%d epochs + %d)' % (steps, full, rest)
    lines = ['%s in %s' % (head, _duration(elapsed))]
    best = os.path.join(save_dir, BEST_PARAMS) if save_dir else None
    if engine.best_epoch is not None and engine.best_top1 >= 0:
        last = engine.history[-1].get('val_top1') if engine.history else None
        lines.append('best val top-1 %.4f at epoch %d%s' % (engine.best_top1, engine.best_epoch,
                                                             '' if last is None else ' (last epoch: %.4f)' % last))
    elif engine.val_data is None:
        lines.append('no validation split: no epoch was ranked, no best.params')
        best = None
    params = None
    if save_dir and os.path.isfile(os.path.join(save_dir, POINTER)):
        from .engine.checkpoint import resolve_resume
        meta, _ = resolve_resume(save_dir)
        params = os.path.join(save_dir, meta['files']['params'])
    lines.append('run folder: %s' % save_dir)
    if best and os.path.isfile(best):
        lines.append('  best:   %s (best.json: its epoch and val top-1)' % best)
    if params:
        lines.append('  latest: %s (%s; continue with --resume %s and the same options)' % (params, POINTER, save_dir))
    weights = best if best and os.path.isfile(best) else params
    if weights:
        py = display_path(sys.executable)
        q = shlex.quote
        data = []
        if args.rec_val:
            data = ['--rec-val', args.rec_val]
        elif args.data_dir:
            data = ['--data-dir', args.data_dir]
        extra = ['--crop-ratio', '%g' % args.crop_ratio] if args.crop_ratio != 0.875 else []
        if args.coarse_labels:
            extra.append('--coarse-labels')
        model_flags = _model_flags(args)
        tool = lambda name: display_path(os.path.join(REPO_ROOT, 'tools', name))  # noqa: E731
        for flag, value in (('--ctx', args.ctx), ('--gpus', args.gpus), ('--num-gpus', args.num_gpus)):
            if value:
                extra += [flag, str(value)]
        if args.dtype != 'float32':
            extra += ['--dtype', args.dtype]
        evaluate = [py, tool('evaluate.py'), '--model', args.model, '--params', weights, '--dataset', args.dataset] + \
            data + ['--input-size', str(args.input_size), '--batch-size', str(args.batch_size * len(engine.ctx))] + \
            extra + model_flags
        export_model = ('afs_' + args.model) if getattr(args, 'afs', False) else args.model
        export = [py, tool('export.py'), '--model', export_model, '--params', weights, '--classes',
                  str(engine.num_classes), '--input-shape', '1,3,%d,%d' % (args.input_size, args.input_size),
                  '--out', os.path.join(save_dir, 'export', export_model)] + model_flags
        if data:
            lines.append('evaluate: %s' % ' '.join(q(t) for t in evaluate))
        else:
            lines.append('evaluate: %s  (add --rec-val FILE)' % ' '.join(q(t) for t in evaluate))
        lines.append('export:   %s' % ' '.join(q(t) for t in export))
    return 'summary\n  ' + '\n  '.join(lines)


def main(preset, description, argv=None, make_task=None, prepare=None, **hooks):
    """Entry point of a training script: one-line errors and a non-zero exit on bad input.
    ``--list-models`` prints and exits. The arguments are validated and the run folder
    planned before anything is created; ``prepare(args)`` runs next (inside the error
    handling) and may return an exit status to stop there (a dry run); ``hooks`` go to
    :func:`run`."""
    parser = build_parser(preset, description)
    args = parse_args(parser, argv)
    try:
        if args.list_models is not None:
            return list_models_command(args.list_models)
        validate_args(args, preset)
        plan_run_dir(args, preset)
        if prepare is not None:
            status = prepare(args)
            if status is not None:
                return status
        run(args, preset, make_task, **hooks)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .engine.checkpoint import POINTER
        d = getattr(args, 'run_dir_open', None)
        if d and os.path.isfile(os.path.join(d, POINTER)):
            print('interrupted; the last completed epoch is checkpointed: continue with --resume %s' % d,
                  file=sys.stderr)
        else:
            print('interrupted before the first checkpoint was written', file=sys.stderr)
        return 130
    finally:
        close_logging()
    return 0


def add_augment_args(parser, preset=None):
    """Data-layer augmentation and subset flags shared by every training script
    (see :func:`gluon_transfer.data.build_data`)."""
    g = parser.add_argument_group('augmentation and training subsets')
    g.add_argument('--randaugment', nargs='?', const='rand-m9-mstd0.5', default=None, metavar='SPEC',
                   help='RandAugment (timm spec; flag alone: rand-m9-mstd0.5); training images are then '
                        'decoded in Python by -j worker processes')
    g.add_argument('--random-erasing', type=float, default=0.0, metavar='P',
                   help='random erasing probability (pixel mode, on normalised images; timm --reprob)')
    g.add_argument('--train-fraction', type=float, default=None, metavar='F',
                   help='train on a class-balanced subset (e.g. 0.15, 0.3, 0.5 as in TLlib sample rates), '
                        'copied once into $GLUON_TRANSFER_CACHE/subsets (default ~/.cache/gluon_transfer), '
                        'never into the data dir')
    g.add_argument('--fraction-seed', type=int, default=0, help='seed choosing the --train-fraction subset')
    g.add_argument('--data-pipeline', default='auto', choices=['auto', 'record', 'python'],
                   help='auto: ImageRecordIter unless --randaugment or --pad-mode reflect; python: decode in Python '
                        'for train and val')
    g.add_argument('--pad-mode', default='constant', choices=['constant', 'reflect'],
                   help='CIFAR pad-4 random crop: constant (zeros, GluonCV) or reflect (the attention-transfer '
                        'reference; trains from the Python decode pipeline on RecordIO data)')
    return g


def augment_kwargs(args):
    """``build_data`` keyword arguments from :func:`add_augment_args`' flags."""
    return dict(randaugment=getattr(args, 'randaugment', None),
                random_erasing=getattr(args, 'random_erasing', 0.0),
                train_fraction=getattr(args, 'train_fraction', None),
                fraction_seed=getattr(args, 'fraction_seed', 0),
                pipeline=getattr(args, 'data_pipeline', 'auto'),
                pad_mode=getattr(args, 'pad_mode', 'constant'),
                train_aug=getattr(args, 'train_aug', None))


# ------------------------------------------------------------------ distillation (AT / KD)
DISTILL_TAPS = {'cifar': 'stage1,stage2,stage3', 'imagenet': 'stage1,stage2,stage3,stage4'}


def add_distill_args(parser, preset):
    """Knowledge distillation / attention transfer from a frozen teacher (the Distill task).

    The reference CIFAR recipe (attention-transfer ``cifar.py``) as flags::

        --model wrn16_1 --teacher-model wrn16_2 --teacher-params T.params --at-beta 1e3 \\
        --optimizer sgd --momentum 0.9 --wd 5e-4 --lr 0.1 --batch-size 128 --num-epochs 200 \\
        --lr-mode step --lr-decay-epoch 60,120,160 --lr-decay 0.2 --reset-momentum --pad-mode reflect

    (``--reset-momentum``: the reference re-creates its optimizer at each LR drop;
    ``--pad-mode reflect``: its ``T.Pad(4, reflect)`` crop.) The weights are named by what
    they weigh (``--at-beta``, ``--kd-alpha``, ``--kd-temperature``); the reference script's
    ``--beta``, ``--alpha`` and ``--temperature`` are the same options. Every option of this
    group is recorded when given (:mod:`gluon_transfer.options`): without a
    teacher, or for a part of distillation that is off, it is an error naming it.
    """
    from .options import OwnedGroup
    g = OwnedGroup(parser.add_argument_group('distillation (attention transfer / knowledge distillation)'), 'distill')
    g.add_argument('--teacher-model', '--teacher', dest='teacher_model', default=None,
                   help='frozen teacher network (registered or GluonCV name); enables the Distill task')
    g.add_argument('--teacher-params', default=None, help='the teacher\'s .params file (required with a teacher)')
    g.add_argument('--teacher-random', action='store_true',
                   help='allow a randomly initialised teacher (testing only)')
    g.add_argument('--at-beta', '--beta', dest='at_beta', type=float, default=0.0, metavar='BETA',
                   help='attention-transfer weight: beta * sum over groups (reference: 1e3; 0 = off; --beta is the '
                        'reference script\'s name)')
    g.add_argument('--kd-alpha', '--alpha', dest='kd_alpha', type=float, default=0.0, metavar='ALPHA',
                   help='knowledge-distillation weight: alpha * T^2 * KL + (1 - alpha) * CE (reference KD run: 0.9; '
                        '0 = off; --alpha is the reference script\'s name)')
    g.add_argument('--kd-temperature', '--temperature', dest='kd_temperature', type=float, default=4.0, metavar='T',
                   help='knowledge-distillation temperature T (--temperature is the reference script\'s name)')
    g.add_argument('--at-mode', default='code', choices=['code', 'paper'],
                   help="code: mean of squared map differences (reference code); paper: un-squared L2 norm / 2")
    g.add_argument('--at-p', type=float, default=2.0, help='attention map = channel mean of |x|^p')
    g.add_argument('--at-taps', default=DISTILL_TAPS[preset],
                   help='student feature taps paired by position with --teacher-taps (stage names or block paths)')
    g.add_argument('--teacher-taps', default=None, help='teacher feature taps (default: --at-taps)')
    g.add_argument('--at-ngpu-scaling', action='store_true',
                   help="multiply the AT loss by the device count, as the reference's multi-GPU code does")
    g.add_argument('--grad-at-beta', type=float, default=0.0,
                   help='gradient-based AT weight: beta/2 * ||dL_S/dx - dL_T/dx||^2 '
                        '(about 5x the step time, see docs/benchmarks.md)')
    g.add_argument('--grad-at-step', type=float, default=1e-3,
                   help='gradient-based AT: finite-difference step (RMS of the input perturbation)')
    return g


# Options that only act with their part of distillation switched on (weight > 0).
_AT_ONLY = ('at_mode', 'at_p', 'at_taps', 'teacher_taps', 'at_ngpu_scaling')
_DISTILL_PARTS = (('at_beta', _AT_ONLY), ('kd_alpha', ('kd_temperature',)), ('grad_at_beta', ('grad_at_step',)))


def _taps(text):
    return tuple(t.strip() for t in str(text or '').split(',') if t.strip())


def distill_task_factory(args):
    """``make_distill_task`` when a teacher is given, else None. A distillation option
    given without a teacher, or for a part that is off (``--at-mode`` without
    ``--at-beta`` > 0, ``--kd-temperature`` without ``--kd-alpha`` > 0, ``--grad-at-step``
    without ``--grad-at-beta`` > 0), is an error naming it as typed."""
    from .options import given
    seen = [(dest, flag) for dest, (flag, owner) in given(args).items() if owner == 'distill']
    if not getattr(args, 'teacher_model', None):
        if seen:
            raise ConfigError('%s given without --teacher-model' % ', '.join(f for _, f in seen))
        return None
    for weight, dests in _DISTILL_PARTS:
        off = [f for d, f in seen if d in dests]
        if off and not getattr(args, weight) > 0:
            raise ConfigError('%s: only used with --%s > 0' % (', '.join(off), weight.replace('_', '-')))
    return make_distill_task


def make_distill_task(args, net, data, ctx, log):
    """The Distill task for ``run()``: builds and loads the teacher on every device."""
    from .engine.tasks import Distill, build_teacher
    student_taps = _taps(args.at_taps) if args.at_beta > 0 else ()
    teacher_taps = _taps(args.teacher_taps) if (args.at_beta > 0 and args.teacher_taps) else student_taps
    teacher = build_teacher(args.teacher_model, args.teacher_params, data.num_classes, ctx, features=teacher_taps,
                            allow_random=args.teacher_random, logger=log)
    task = Distill(teacher, student_taps, teacher_taps, beta=args.at_beta, alpha=args.kd_alpha,
                   temperature=args.kd_temperature, at_mode=args.at_mode, at_p=args.at_p,
                   at_ngpu_scaling=args.at_ngpu_scaling, grad_at_beta=args.grad_at_beta,
                   grad_at_step=args.grad_at_step, input_shape=(1, 3, args.input_size, args.input_size))
    log.info('distillation from %s: AT beta %g (%s, p=%g, taps %s / %s), KD alpha %g, T %g, grad-AT beta %g',
             args.teacher_model, args.at_beta, args.at_mode, args.at_p, ','.join(student_taps) or '-',
             ','.join(teacher_taps) or '-', args.kd_alpha, args.kd_temperature, args.grad_at_beta)
    return task


# Shared options a fine-tuning method's preset may set (AFDS's --afds-preset): recorded when
# given, so that an explicit value wins over the preset.
TRANSFER_RECORDED = ('batch_size', 'num_epochs', 'max_iter', 'optimizer', 'lr', 'momentum', 'lr_mode', 'lr_decay',
                     'lr_decay_epoch', 'lr_decay_period')


def add_transfer_args(parser, preset):
    """Options of train_transfer.py: the schedule defaults of fine-tuning, then the options
    every fine-tuning method shares and each registered method's own group
    (:func:`gluon_transfer.methods.add_arguments`)."""
    from .methods import add_arguments
    from .options import record_option
    parser.set_defaults(max_iter=None, lr=None)     # lr None: 0.01, or the AFA stage's preset
    for action in parser._actions:
        if action.dest in TRANSFER_RECORDED:        # a method's preset keeps these when given
            record_option(action, 'transfer')
        if action.dest == 'lr':
            action.help = 'base learning rate (default 0.01; afa-ast/afa-act: the AFA preset, 0.01/0.001)'
        elif action.dest == 'max_iter':
            action.help = 'iterations to train (default 4500 unless --num-epochs is given)'
        elif action.dest == 'num_epochs':
            action.help = 'epochs to train (0: enough epochs for --max-iter)'
        elif action.dest == 'lr_decay_epoch':
            action.help = 'step mode: absolute epochs of the x--lr-decay steps (default: one step at 2/3 of training)'
    add_arguments(parser)
