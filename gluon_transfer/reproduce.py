"""Recipe runner: a paper's table as rows x seeds of training runs, resumable, with tables.

    python tools/reproduce.py --list                          # recipes, scales, rows
    python tools/reproduce.py afds --dry-run                  # every command; flags checked
    python tools/reproduce.py afds --scale cpu                # run, resume, skip what is done
    python tools/reproduce.py afa --rows delta --seeds 0,1    # a part of it
    python tools/reproduce.py afa --report-only               # tables from finished runs

A **recipe** (``recipes/NAME.json``, format in ``docs/reproduce.md``) describes one table of
a paper: a title, the reference, what the table measures, and one or more **scales**
(``paper``: the paper's datasets, networks, schedules and reported numbers; ``cpu``: a
CIFAR-scale analogue). A scale lists **rows**; a row is a trainer script
(``train_cifar.py`` / ``train_transfer.py`` / ``train_imagenet.py``) and an options dict
``{"--flag": value}``: ``true`` is a bare flag, ``false``/``null`` leave the flag out, a list
is joined by commas, anything else is ``str(value)``. Strings may hold placeholders:
``{seed}``, ``{out}`` (the output folder), ``{var:NAME}`` (a variable of the scale, from
``--var NAME=VALUE`` or its default) and ``{run:ROW}`` / ``{run:ROW@K}`` (the folder of
row ROW's run with the same seed / with seed K; the row then depends on that run).

Each run is ``[sys.executable, script] + options + ['--seed', k, '--save-dir', folder]``,
started as a subprocess with the repository root as working directory (never through a
shell), so a crash in one run does not stop the others. Its folder is
``OUT/<row>/seed<k>``; beside it the runner keeps ``seed<k>.log`` (the trainer's output)
and ``seed<k>.runner.json`` (the command and every attempt). States:

* **finished**: the folder holds ``result.json``, written by the runner after the trainer
  exited 0 (best and final val top-1 from ``metrics.jsonl``, time, any method report such
  as ``afds_report.json`` with its MACs). Finished runs are skipped, never rewritten.
* **interrupted**: the folder holds ``checkpoint.json`` but no ``result.json``: continued
  with the trainer's ``--resume <folder>`` (same ``--save-dir``).
* **new**: no folder, or an empty one. A folder holding other files is refused (nothing
  is ever deleted); a new run that fails before its first checkpoint has its folder moved
  to ``seed<k>.failed-<n>`` so that the next invocation starts it again.
* A run whose recorded command differs from the recipe's is refused (**changed**): use
  another ``--out`` or move the run away.

Outputs in OUT: ``results.json`` (every planned run and its state/result, per-row
statistics), ``results.md`` (per row: mean +- sample std (ddof 1) over seeds of the best
val top-1, n, final top-1, the difference to the row's baseline with its standard error,
MACs where reported, the paper's number at the paper scale; then the exact command of each
row) and ``results.png`` (bars with error bars). The best val top-1 of a run is the highest
``val_top1`` over its epochs; when the run's report gives ``phase1_epochs`` (AFDS: the
epochs before the mask update), only the epochs after it count, because only they are the
pruned network.
"""
import argparse
import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from .cli import REPO_ROOT
from .errors import ConfigError, DataError, GluonTransferError

__all__ = ['RECIPES_DIR', 'TRAINERS', 'list_recipes', 'load_recipe', 'validate_recipe', 'option_argv',
           'plan_runs', 'Run', 'run_state', 'read_metrics', 'summarize_metrics', 'collect_result', 'row_stats',
           'compare', 'check_run', 'dry_run', 'execute_plan', 'write_reports', 'results_markdown',
           'trainer_parser', 'main']

RECIPES_DIR = os.path.join(REPO_ROOT, 'recipes')
# trainer script -> the cli preset whose parser it uses
TRAINERS = {'train_cifar.py': 'cifar', 'train_imagenet.py': 'imagenet', 'train_transfer.py': 'transfer'}
# flags the runner sets itself
RESERVED = ('--seed', '--save-dir', '--resume')
RESULT = 'result.json'
POINTER = 'checkpoint.json'
METRICS = 'metrics.jsonl'
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
_PLACEHOLDER = re.compile(r'\{([^{}]*)\}')


# ---------------------------------------------------------------------- recipes
def list_recipes(directory=RECIPES_DIR):
    """Names of the recipe files in ``directory`` (``NAME.json``), sorted."""
    if not os.path.isdir(directory):
        return []
    return sorted(f[:-5] for f in os.listdir(directory) if f.endswith('.json'))


def recipe_path(spec, directory=RECIPES_DIR):
    """``spec`` is a recipe name in ``directory`` or a path to a recipe file."""
    if os.path.isfile(spec):
        return spec
    if os.sep not in spec and not spec.endswith('.json'):
        path = os.path.join(directory, spec + '.json')
        if os.path.isfile(path):
            return path
        from .registry import unknown_name_message
        raise ConfigError(unknown_name_message('recipe', spec, list_recipes(directory),
                                               ' (or give the path of a recipe file)'))
    raise ConfigError('recipe file not found: %s' % spec)


def load_recipe(spec, directory=RECIPES_DIR):
    """Read and validate a recipe (name or path). Returns the dict, with ``_path`` added."""
    path = recipe_path(spec, directory)
    try:
        with open(path) as f:
            recipe = json.load(f)
    except ValueError as err:
        raise ConfigError('recipe %s is not valid JSON: %s' % (path, err)) from None
    except OSError as err:
        raise ConfigError('cannot read recipe %s: %s' % (path, err)) from None
    validate_recipe(recipe, path)
    recipe['_path'] = path
    return recipe


def _fail(where, msg):
    raise ConfigError('%s: %s' % (where, msg))


def validate_recipe(recipe, where='recipe'):
    """Check the structure of a recipe; the first problem is a :class:`ConfigError` naming
    the file, the scale, the row and the key."""
    if not isinstance(recipe, dict):
        _fail(where, 'the top level must be an object')
    for key in ('name', 'title', 'paper', 'measures'):
        if not isinstance(recipe.get(key), str) or not recipe[key].strip():
            _fail(where, 'needs a non-empty string %r' % key)
    scales = recipe.get('scales')
    if not isinstance(scales, dict) or not scales:
        _fail(where, 'needs "scales": {"paper": {...}, "cpu": {...}}')
    for sname, scale in scales.items():
        _validate_scale(scale, '%s, scale %s' % (where, sname))
    return recipe


def _validate_scale(scale, where):
    if not isinstance(scale, dict):
        _fail(where, 'must be an object')
    seeds = scale.get('seeds')
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        _fail(where, '"seeds" must be a non-empty list of integers >= 0')
    variables = scale.get('vars', {})
    if not isinstance(variables, dict):
        _fail(where, '"vars" must be an object {NAME: {"default": ..., "help": ...}}')
    for name, spec in variables.items():
        if not _NAME.match(name) or not isinstance(spec, dict) or 'default' not in spec:
            _fail(where, 'variable %r needs {"default": ..., "help": ...}' % name)
    rows = scale.get('rows')
    if not isinstance(rows, list) or not rows:
        _fail(where, 'needs a non-empty "rows" list')
    names = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get('name'), str) or not _NAME.match(row['name']):
            _fail(where, 'row %d needs a "name" of letters, digits, _ . -' % (i + 1))
        if row['name'] in names:
            _fail(where, 'two rows are named %r' % row['name'])
        names.append(row['name'])
    for row in rows:
        _validate_row(row, '%s, row %s' % (where, row['name']), names, variables)
    _check_cycles(rows, where)
    for key in ('prepare', 'requires'):
        if not isinstance(scale.get(key, []), list):
            _fail(where, '%r must be a list' % key)
    for step in scale.get('prepare', []):
        w = '%s, prepare step %s' % (where, step.get('name') if isinstance(step, dict) else '?')
        if not isinstance(step, dict) or not isinstance(step.get('script'), str) or not step.get('creates'):
            _fail(w, 'needs "name", "script", "options" and "creates"')
        _validate_options(dict(step.get('options', {}), **{'--(creates)': list(step['creates'])}), w, names,
                          variables, allow_run=False)
        for rname in step.get('rows', []):
            if rname not in names:
                _fail(w, 'names unknown row %r' % rname)
    for req in scale.get('requires', []):
        if not isinstance(req, dict) or not isinstance(req.get('path'), str):
            _fail(where, 'each "requires" entry needs a "path" (and "help")')
        _validate_options({'--(path)': req['path']}, '%s, requires' % where, names, variables, allow_run=False)
        for rname in req.get('rows', []):
            if rname not in names:
                _fail(where, '"requires" %s names unknown row %r' % (req['path'], rname))


def _validate_row(row, where, names, variables):
    if not isinstance(row.get('script'), str) or not row['script']:
        _fail(where, 'needs a "script" (%s)' % ', '.join(sorted(TRAINERS)))
    _validate_options(row.get('options'), where, names, variables, allow_run=True, self_name=row['name'])
    if 'seeds' in row and not (isinstance(row['seeds'], list) and row['seeds']
                               and all(isinstance(s, int) and s >= 0 for s in row['seeds'])):
        _fail(where, '"seeds" must be a non-empty list of integers >= 0')
    for dep in row.get('depends_on', []):
        name = str(dep).split('@')[0]
        if name not in names or name == row['name']:
            _fail(where, '"depends_on" names %r, which is not another row' % dep)
    if 'baseline' in row and (row['baseline'] not in names or row['baseline'] == row['name']):
        _fail(where, '"baseline" must name another row, got %r' % row['baseline'])
    paper = row.get('paper')
    if paper is not None:
        if not isinstance(paper, dict) or 'value' not in paper or 'ref' not in paper:
            _fail(where, '"paper" needs {"value": number or null, "unit": ..., "ref": ...}')
        if paper['value'] is not None and not isinstance(paper['value'], (int, float)):
            _fail(where, '"paper" value must be a number or null')


def _validate_options(options, where, names, variables, allow_run, self_name=None):
    if not isinstance(options, dict):
        _fail(where, '"options" must be an object {"--flag": value}')
    for flag, value in options.items():
        if not flag.startswith('-'):
            _fail(where, 'option %r is not a flag (it must start with -)' % flag)
        if flag in RESERVED:
            _fail(where, '%s is set by the runner for every run; remove it from the options' % flag)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (dict, list)):
                _fail(where, 'option %s: values are strings, numbers, booleans, null or a flat list' % flag)
            if isinstance(v, str):
                for ph in _PLACEHOLDER.findall(v):
                    _check_placeholder(ph, where, flag, names, variables, allow_run, self_name)


def _check_placeholder(ph, where, flag, names, variables, allow_run, self_name):
    kind, _, arg = ph.partition(':')
    if ph in ('seed', 'out'):
        return
    if kind == 'var' and arg in variables:
        return
    if kind == 'var':
        _fail(where, 'option %s uses {var:%s}, but the scale defines no such variable (has: %s)'
              % (flag, arg, ', '.join(sorted(variables)) or 'none'))
    if kind == 'run' and allow_run:
        name, _, seed = arg.partition('@')
        if name not in names or name == self_name:
            _fail(where, 'option %s uses {run:%s}, which names no other row' % (flag, arg))
        if seed and not seed.isdigit():
            _fail(where, 'option %s: {run:ROW@K} needs an integer seed K, got %r' % (flag, seed))
        return
    _fail(where, 'option %s: unknown placeholder {%s} (known: {seed}, {out}, {var:NAME}%s)'
          % (flag, ph, ', {run:ROW}, {run:ROW@K}' if allow_run else ''))


def _row_deps(row):
    """``[(row name, seed or None)]`` this row depends on (None = the same seed)."""
    deps = []
    for dep in row.get('depends_on', []):
        name, _, seed = str(dep).partition('@')
        deps.append((name, int(seed) if seed else None))
    for value in row.get('options', {}).values():
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, str):
                for ph in _PLACEHOLDER.findall(v):
                    if ph.startswith('run:'):
                        name, _, seed = ph[4:].partition('@')
                        deps.append((name, int(seed) if seed else None))
    out = []
    for d in deps:
        if d not in out:
            out.append(d)
    return out


def _check_cycles(rows, where):
    deps = {r['name']: [d for d, _ in _row_deps(r)] for r in rows}
    state = {}

    def visit(n, path):
        if state.get(n) == 1:
            _fail(where, 'rows depend on each other in a cycle: %s' % ' -> '.join(path + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for d in deps[n]:
            visit(d, path + [n])
        state[n] = 2

    for r in rows:
        visit(r['name'], [])


# ---------------------------------------------------------------------- planning
class Run:
    """One row x seed: ``argv`` (script options, ``--seed`` and ``--save-dir``; no
    ``--resume``), ``folder`` (absolute) and ``deps`` ``[(row, seed)]``."""

    def __init__(self, row, seed, script, argv, folder, deps):
        self.row = row
        self.name = row['name']
        self.seed = seed
        self.script = script
        self.argv = argv
        self.folder = folder
        self.deps = deps

    @property
    def key(self):
        return '%s/seed%d' % (self.name, self.seed)

    @property
    def command(self):
        """The recorded form: ``[script] + argv``."""
        return [self.script] + list(self.argv)

    def command_line(self, python='python'):
        return shlex.join([python] + self.command)

    @property
    def log_path(self):
        return self.folder + '.log'

    @property
    def ledger_path(self):
        return self.folder + '.runner.json'


class Plan:
    """What a recipe scale expands to: the runs in execution order and the context."""

    def __init__(self, recipe, scale_name, out, runs, variables, rows, prepare, requires):
        self.recipe = recipe
        self.scale_name = scale_name
        self.scale = recipe['scales'][scale_name]
        self.out = out
        self.runs = runs
        self.variables = variables
        self.rows = rows
        self.prepare = prepare
        self.requires = requires
        self.full = self        # what the tables cover (all rows), see plan_runs

    def run(self, name, seed):
        for r in self.runs:
            if r.name == name and r.seed == seed:
                return r
        return None


def arg_path(path):
    """A path as the trainers get it: relative to the repository root (their working
    directory) when it lies inside it, else absolute."""
    full = os.path.abspath(os.path.expanduser(path))
    rel = os.path.relpath(full, REPO_ROOT)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _abs(path):
    """``path`` (as given to a trainer, relative to the repository root) as an absolute path."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO_ROOT, path))


def _format_value(value):
    if isinstance(value, bool):
        raise ConfigError('a boolean inside a list option has no command-line form: %r' % value)
    return str(value)


def option_argv(options, resolve=lambda s: s):
    """``{"--flag": value}`` -> argv: ``true`` -> ``--flag``; ``false``/``null`` -> nothing;
    a list -> ``--flag a,b,c``; otherwise ``--flag str(value)``; strings go through
    ``resolve`` (placeholders)."""
    argv = []
    for flag, value in options.items():
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, ','.join(resolve(v) if isinstance(v, str) else _format_value(v) for v in value)]
        else:
            argv += [flag, resolve(value) if isinstance(value, str) else _format_value(value)]
    return argv


def parse_vars(pairs, scale):
    """``--var NAME=VALUE`` list -> {name: value} for every variable of the scale (defaults
    filled). Path variables (``"path": true``) given on the command line are relative to the
    current directory; defaults are relative to the repository root."""
    spec = scale.get('vars', {})
    values = {}
    for name, s in spec.items():
        d = s['default']
        values[name] = arg_path(_abs(d)) if s.get('path') else str(d)
    for pair in pairs or ():
        name, sep, value = pair.partition('=')
        if not sep or not name:
            raise ConfigError('--var takes NAME=VALUE, got %r' % pair)
        if name not in spec:
            from .registry import unknown_name_message
            raise ConfigError(unknown_name_message('variable', name, spec) if spec else
                              'unknown variable %r: this scale defines none' % name)
        values[name] = arg_path(value) if spec[name].get('path') else value
    return values


def _resolver(out_arg, seed, variables, run_folder):
    def resolve(text):
        def sub(m):
            ph = m.group(1)
            if ph == 'seed':
                return str(seed)
            if ph == 'out':
                return out_arg
            kind, _, arg = ph.partition(':')
            if kind == 'var':
                return variables[arg]
            if kind == 'run':
                name, _, k = arg.partition('@')
                return run_folder(name, int(k) if k else seed)
            raise ConfigError('unknown placeholder {%s}' % ph)
        return _PLACEHOLDER.sub(sub, text)
    return resolve


def _topo_rows(rows):
    order, seen = [], set()
    by_name = {r['name']: r for r in rows}

    def visit(r):
        if r['name'] in seen:
            return
        seen.add(r['name'])
        for d, _ in _row_deps(r):
            visit(by_name[d])
        order.append(r)

    for r in rows:
        visit(r)
    return order


def default_out(recipe, scale_name):
    return os.path.join(REPO_ROOT, 'runs', 'reproduce', '%s-%s' % (recipe['name'], scale_name))


def plan_runs(recipe, scale_name='cpu', out=None, seeds=None, rows=None, var_pairs=None, _tables=False):
    """Expand a recipe scale into :class:`Plan` (runs in dependency order).

    ``seeds``: replaces the scale's default seeds for rows without their own ``seeds``.
    ``rows``: names to run; the rows they depend on are added. ``var_pairs``: ``NAME=VALUE``.
    ``plan.full`` is what the tables cover: every row, the scale's seeds and ``seeds``."""
    scales = recipe['scales']
    if scale_name not in scales:
        raise ConfigError('recipe %s has no scale %r (has: %s)' % (recipe['name'], scale_name, ', '.join(scales)))
    scale = scales[scale_name]
    out = os.path.abspath(os.path.expanduser(out or default_out(recipe, scale_name)))
    out_arg = arg_path(out)
    variables = parse_vars(var_pairs, scale)
    all_rows = scale['rows']
    by_name = {r['name']: r for r in all_rows}
    if rows:
        unknown = [r for r in rows if r not in by_name]
        if unknown:
            from .registry import unknown_name_message
            raise ConfigError(unknown_name_message('row', unknown[0], by_name))
        wanted, stack = set(), list(rows)
        while stack:
            n = stack.pop()
            if n not in wanted:
                wanted.add(n)
                stack += [d for d, _ in _row_deps(by_name[n])]
        selected = [r for r in all_rows if r['name'] in wanted]
    else:
        selected = list(all_rows)
    default_seeds = list(seeds) if seeds else list(scale['seeds'])

    def row_seeds(r):
        return list(r['seeds']) if 'seeds' in r else default_seeds

    def folder(name, seed):
        return os.path.join(out, name, 'seed%d' % seed)

    def run_folder(name, seed):
        if seed not in row_seeds(by_name[name]):
            raise ConfigError('recipe %s (%s): a row needs the run %s/seed%d, but row %s runs seeds %s; pin one '
                              'with {run:%s@K}' % (recipe['name'], scale_name, name, seed, name,
                                                   ','.join(map(str, row_seeds(by_name[name]))), name))
        return arg_path(folder(name, seed))

    runs = []
    for r in _topo_rows(selected):
        script = r['script'] if os.path.isabs(r['script']) else r['script'].replace('/', os.sep)
        for seed in row_seeds(r):
            resolve = _resolver(out_arg, seed, variables, run_folder)
            argv = option_argv(r['options'], resolve) + ['--seed', str(seed), '--save-dir',
                                                        arg_path(folder(r['name'], seed))]
            deps = []
            for d, k in _row_deps(r):
                k = seed if k is None else k
                run_folder(d, k)        # checks that the seed exists
                deps.append((d, k))
            runs.append(Run(r, seed, script, argv, folder(r['name'], seed), deps))
    names = {r['name'] for r in selected}
    prepare = []
    for step in scale.get('prepare', []):
        if step.get('rows') and not names.intersection(step['rows']):
            continue
        resolve = _resolver(out_arg, default_seeds[0], variables, run_folder)
        prepare.append(dict(name=step.get('name', step['script']), script=step['script'],
                            argv=option_argv(step.get('options', {}), resolve),
                            creates=[resolve(c) for c in step['creates']], help=step.get('help', ''),
                            rows=list(step.get('rows', []))))
    resolve = _resolver(out_arg, default_seeds[0], variables, run_folder)
    requires = [dict(path=resolve(q['path']), help=q.get('help', ''), rows=q.get('rows') or sorted(names))
                for q in scale.get('requires', []) if not q.get('rows') or names.intersection(q['rows'])]
    plan = Plan(recipe, scale_name, out, runs, variables, selected, prepare, requires)
    if not _tables and (rows or (seeds and set(seeds) != set(scale['seeds']))):
        # the tables always cover every row, with the scale's seeds and the ones given
        union = sorted(set(scale['seeds']) | set(seeds or ()))
        plan.full = plan_runs(recipe, scale_name, out, seeds=union, var_pairs=var_pairs, _tables=True)
    return plan


# ---------------------------------------------------------------------- checks (dry run)
def trainer_parser(script):
    """The argparse parser of a trainer script, or None for a script the runner does not
    know (its options are then not checked). The three trainers build theirs with
    :func:`gluon_transfer.cli.build_parser` (``train_transfer.py`` through
    :func:`gluon_transfer.finetune.main`, preset ``transfer``)."""
    preset = TRAINERS.get(os.path.basename(script))
    if preset is None or os.path.dirname(script) not in ('', '.'):
        return None
    from . import cli
    return cli.build_parser(preset, 'reproduce: %s options' % script)


def parse_trainer_argv(script, argv):
    """Parse ``argv`` with the script's parser; ConfigError with argparse's message on
    rejection. Returns the namespace, or None for unknown scripts."""
    parser = trainer_parser(script)
    if parser is None:
        return None

    def error(message):
        raise ConfigError('%s rejects the options: %s' % (script, message))

    parser.error = error
    return parser.parse_args(list(argv))


def _known_names():
    """(model names, dataset presets, regularizer names); a set is None where it cannot be
    listed (the check is then skipped)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        from .zoo import list_models
        models = set(list_models())
        from .data.datasets import PRESETS
        datasets = set(PRESETS)
        regs = None
        try:
            from . import losses  # noqa: F401  (registers the regularizers)
            from .registry import REGULARIZERS
            regs = set(REGULARIZERS.names()) or None
        except ImportError:
            pass
    return models, datasets, regs


def check_run(run, names=None):
    """Problems of one run that can be found without data: the trainer's parser or its option
    checks (values, options the chosen method does not take) reject an option, or a model /
    teacher / dataset / regularizer name is unknown. Returns a list of one-line messages
    (empty when fine); None when the script has no known parser."""
    try:
        args = parse_trainer_argv(run.script, run.argv)
    except ConfigError as err:
        return [str(err)]
    if args is None:
        return None
    from .cli import MODEL_ALIASES, validate_args
    preset = TRAINERS[os.path.basename(run.script)]
    try:                                   # the checks the trainer makes before it reads data
        validate_args(args, preset)
        if preset == 'transfer':
            from .methods import select
            select(args)
    except ConfigError as err:
        return ['%s rejects the options: %s' % (run.script, err)]
    from .registry import unknown_name_message
    models, datasets, regs = names or _known_names()
    problems = []
    model = MODEL_ALIASES.get(preset, {}).get(args.model, args.model)
    if model not in models:
        problems.append(unknown_name_message('model', model, models))
    teacher = getattr(args, 'teacher_model', None)
    if teacher and teacher not in models:
        problems.append(unknown_name_message('teacher model', teacher, models))
    if preset != 'transfer' and args.dataset not in datasets:
        problems.append(unknown_name_message('dataset preset', args.dataset, datasets))
    reg = getattr(args, 'reg', None)
    if reg is not None and regs is not None and reg not in regs:
        problems.append(unknown_name_message('regularizer', reg, regs))
    return problems


def _count(n, noun):
    """'1 run', '2 runs'."""
    return '%d %s%s' % (n, noun, '' if n == 1 else 's')


def dry_run(plan, out=sys.stdout, check=True):
    """Print every run's command (and the prepare steps still to do) and check each run's
    options against its trainer's parser. Returns the list of problems."""
    w = out.write
    scale = plan.scale
    w('# %s -- %s scale: %s (%s)\n' % (plan.recipe['title'], plan.scale_name, _count(len(plan.runs), 'run'),
                                       _count(len(plan.rows), 'row')))
    w('# run from %s; the runner uses %s\n' % (REPO_ROOT, sys.executable))
    if scale.get('estimate'):
        w('# estimate: %s\n' % scale['estimate'])
    for q in plan.requires:
        if not os.path.exists(_abs(q['path'])):
            w('# needs %s (missing here): %s\n' % (q['path'], q['help']))
    for step in plan.prepare:
        missing = [c for c in step['creates'] if not os.path.exists(_abs(c))]
        if missing:
            w('# prepare %s (missing: %s)\n%s\n' % (step['name'], ', '.join(missing),
                                                   shlex.join(['python', step['script']] + step['argv'])))
    problems = []
    names = _known_names() if check else None
    for run in plan.runs:
        state = run_state(run)[0] if os.path.isdir(plan.out) else 'new'
        w('# %s (%s)\n%s\n' % (run.key, state, run.command_line()))
        if check:
            found = check_run(run, names)
            if found is None:
                w('#   (options not checked: %s is not one of %s)\n' % (run.script, ', '.join(sorted(TRAINERS))))
            for p in found or ():
                problems.append('%s: %s' % (run.key, p))
                w('#   PROBLEM: %s\n' % p)
    if check:
        w('# %s, options %s\n' % (_count(len(plan.runs), 'run'), 'OK' if not problems else '%d problem(s)' % len(problems)))
    return problems


# ---------------------------------------------------------------------- run state
def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_state(run):
    """``(state, detail)``: ``finished``, ``interrupted`` (resume), ``new``, ``foreign``
    (a non-empty folder without checkpoint or result) or ``changed`` (recorded command
    differs from the recipe's)."""
    result = os.path.join(run.folder, RESULT)
    if os.path.isfile(result):
        rec = _read_json(result) or {}
        if rec.get('command') is not None and rec['command'] != run.command:
            return 'changed', 'its result.json was made by: %s' % shlex.join(['python'] + rec['command'])
        return 'finished', rec
    ledger = _read_json(run.ledger_path) or {}
    if os.path.isdir(run.folder) and os.listdir(run.folder):
        if not os.path.isfile(os.path.join(run.folder, POINTER)):
            return 'foreign', ('%s holds files but neither %s nor %s; move it away to start this run again '
                               '(nothing is deleted)' % (arg_path(run.folder), POINTER, RESULT))
        if ledger.get('command') is not None and ledger['command'] != run.command:
            return 'changed', 'it was started as: %s' % shlex.join(['python'] + ledger['command'])
        return 'interrupted', ledger
    return 'new', ledger


# ---------------------------------------------------------------------- results of one run
def read_metrics(path):
    """The epochs of a ``metrics.jsonl`` (one JSON object per line, key ``epoch``), in
    epoch order; when an epoch appears twice (a run killed between its metrics line and its
    checkpoint, then resumed), the later line wins. A torn last line is ignored; any other
    unreadable line is a :class:`DataError`."""
    with open(path) as f:
        lines = f.read().split('\n')
    by_epoch = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1:]):
                continue        # the last line, torn by a kill while it was written
            raise DataError('%s line %d is not JSON' % (path, i + 1)) from None
        if not isinstance(rec, dict) or 'epoch' not in rec:
            raise DataError('%s line %d has no "epoch"' % (path, i + 1))
        by_epoch[int(rec['epoch'])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def summarize_metrics(history, after_epoch=0):
    """Best and final val top-1 over the epochs > ``after_epoch`` that were validated:
    ``best_val_top1``, ``best_epoch`` (the first epoch reaching the best), ``final_val_top1``,
    ``final_epoch``, ``val_top5_at_best``, ``val_mean_class_acc_at_best``; ``epochs`` (all)
    and ``train_time_s`` (sum of the epochs' ``time``). None values when nothing was
    validated."""
    val = [h for h in history if 'val_top1' in h and int(h['epoch']) > after_epoch]
    out = dict(epochs=int(history[-1]['epoch']) if history else 0,
               train_time_s=float(sum(float(h.get('time', 0.0)) for h in history)),
               best_val_top1=None, best_epoch=None, final_val_top1=None, final_epoch=None,
               val_top5_at_best=None, val_mean_class_acc_at_best=None)
    if val:
        best = val[0]
        for h in val[1:]:
            if h['val_top1'] > best['val_top1']:
                best = h
        out.update(best_val_top1=float(best['val_top1']), best_epoch=int(best['epoch']),
                   final_val_top1=float(val[-1]['val_top1']), final_epoch=int(val[-1]['epoch']),
                   val_top5_at_best=best.get('val_top5'), val_mean_class_acc_at_best=best.get('val_mean_class_acc'))
    return out


def _reports(folder):
    """``{file name: content}`` of the method reports a run wrote (``*report*.json``)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith('.json') and 'report' in name:
            rec = _read_json(os.path.join(folder, name))
            if isinstance(rec, dict):
                out[name] = rec
    return out


def _macs(reports):
    """MACs from a report with ``baseline`` and ``expected`` counts (AFDS), else None."""
    for rec in reports.values():
        if isinstance(rec.get('baseline'), (int, float)) and isinstance(rec.get('expected'), (int, float)):
            out = {k: rec[k] for k in ('baseline', 'static', 'expected', 'exported')
                   if isinstance(rec.get(k), (int, float))}
            out['expected_reduction'] = float(rec['baseline']) / float(rec['expected']) if rec['expected'] else None
            return out
    return None


def collect_result(run, plan=None, wall_time_s=None, attempts=None):
    """The ``result.json`` record of a run whose trainer exited 0. DataError when its
    ``metrics.jsonl`` is missing or holds no validated epoch."""
    metrics = os.path.join(run.folder, METRICS)
    if not os.path.isfile(metrics):
        raise DataError('%s: the trainer exited 0 but wrote no %s' % (arg_path(run.folder), METRICS))
    history = read_metrics(metrics)
    reports = _reports(run.folder)
    after = 0
    for rec in reports.values():
        if isinstance(rec.get('phase1_epochs'), int):
            after = rec['phase1_epochs']
    summary = summarize_metrics(history, after)
    if summary['best_val_top1'] is None:
        raise DataError('%s: %s has no validated epoch%s' % (arg_path(run.folder), METRICS,
                                                              ' after epoch %d' % after if after else ''))
    out = dict(row=run.name, seed=run.seed, script=run.script, command=run.command,
               command_line=run.command_line(), folder=arg_path(run.folder), best_from_epoch=after + 1,
               wall_time_s=wall_time_s, attempts=attempts, macs=_macs(reports), reports=reports,
               finished_at=datetime.datetime.now().isoformat(timespec='seconds'))
    if plan is not None:
        out.update(recipe=plan.recipe['name'], scale=plan.scale_name)
    out.update(summary)
    return out


# ---------------------------------------------------------------------- statistics
def row_stats(values):
    """``(mean, sample std (ddof 1, None for n < 2), n)`` of a list of numbers."""
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    if not n:
        return None, None, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return mean, std, n


def compare(a, b):
    """Difference of two rows' means ``a - b`` and its standard error
    ``sqrt(s_a^2/n_a + s_b^2/n_b)`` (None when a row has fewer than 2 runs); ``a``, ``b`` are
    ``(mean, std, n)``. Returns ``(diff, se, within_noise)`` with within_noise =
    ``|diff| < 2 se``, or None when a mean is missing."""
    (ma, sa, na), (mb, sb, nb) = a, b
    if ma is None or mb is None:
        return None
    diff = ma - mb
    if sa is None or sb is None:
        return diff, None, None
    se = math.sqrt(sa * sa / na + sb * sb / nb)
    return diff, se, abs(diff) < 2 * se


def summarize_rows(plan, results):
    """Per row of the plan: stats of best/final val top-1 and MACs over its finished runs."""
    rows = []
    stats = {}
    for r in plan.rows:
        done = [res for res in results if res and res.get('row') == r['name']]
        best = row_stats([res['best_val_top1'] for res in done])
        stats[r['name']] = best
        macs = [res['macs']['expected'] for res in done if res.get('macs') and 'expected' in res['macs']]
        base = [res['macs']['baseline'] for res in done if res.get('macs') and 'baseline' in res['macs']]
        rows.append(dict(row=r['name'], label=r.get('label', r['name']), n=best[2],
                         seeds=[res['seed'] for res in done], best_mean=best[0], best_std=best[1],
                         final_mean=row_stats([res['final_val_top1'] for res in done])[0],
                         final_std=row_stats([res['final_val_top1'] for res in done])[1],
                         macs_expected=row_stats(macs)[0], macs_baseline=row_stats(base)[0],
                         wall_time_mean_s=row_stats([res.get('wall_time_s') for res in done])[0],
                         baseline=r.get('baseline'), paper=r.get('paper')))
    for row in rows:
        if row['baseline']:
            c = compare(stats[row['row']], stats[row['baseline']])
            row['vs_baseline'] = None if c is None else dict(diff=c[0], se=c[1], within_noise=c[2])
    return rows


# ---------------------------------------------------------------------- reports
def _pct(v, digits=2):
    return '-' if v is None else '%.*f' % (digits, 100.0 * v)


def _fmt_mean_std(mean, std):
    if mean is None:
        return '-'
    return '%s +- %s' % (_pct(mean), _pct(std)) if std is not None else _pct(mean)


def _fmt_paper(paper):
    if not paper:
        return '-'
    value = paper.get('value')
    unit = paper.get('unit', '')
    if value is None:
        text = paper.get('text') or 'not in the reference notes'
    else:
        text = '%g' % value + ('' if paper.get('std') is None else ' +- %g' % paper['std'])
        text += (' ' + unit) if unit else ''
        if 'error' in unit:
            text += ' (top-1 %g %%)' % round(100.0 - value, 4)
    ref = paper.get('ref')
    if paper.get('verified') is False:
        ref = (ref + '; ' if ref else '') + 'unverified'
    return text + (' [%s]' % ref if ref else '')


def _fmt_duration(seconds):
    if seconds is None:
        return '-'
    seconds = int(round(seconds))
    return '%d:%02d:%02d' % (seconds // 3600, seconds % 3600 // 60, seconds % 60)


def _fmt_macs(row):
    if row.get('macs_expected') is None:
        return '-'
    text = '%.4g M' % (row['macs_expected'] / 1e6)
    if row.get('macs_baseline'):
        text += ' (%.2fx fewer)' % (row['macs_baseline'] / row['macs_expected'])
    return text


def describe(plan, text):
    """Descriptive recipe text with ``{var:NAME}`` and ``{out}`` filled in."""
    def sub(m):
        ph = m.group(1)
        if ph == 'out':
            return arg_path(plan.out)
        if ph.startswith('var:') and ph[4:] in plan.variables:
            return plan.variables[ph[4:]]
        return m.group(0)
    return _PLACEHOLDER.sub(sub, str(text))


def results_markdown(plan, records, rows, runner_command=None):
    """``results.md``: the per-row table, notes, the command of each row, the runs."""
    recipe, scale = plan.recipe, plan.scale
    finished = [r for r in records if r['state'] == 'finished']
    lines = ['# %s (%s scale)' % (recipe['title'], plan.scale_name), '',
             '%s. %s' % (recipe['paper'].rstrip('.'), recipe['measures']), '']
    if scale.get('description'):
        lines += [describe(plan, scale['description']), '']
    lines += ['%d of %d runs finished%s.' % (len(finished), len(records),
                                             (', made with `%s`' % runner_command) if runner_command else ''), '']
    has_macs = any(r.get('macs_expected') is not None for r in rows)
    has_base = any(r.get('baseline') for r in rows)
    has_paper = any(r.get('paper') for r in rows)
    head = ['row', 'setting', 'best val top-1 % (mean +- std)', 'n', 'final val top-1 %']
    if has_base:
        head.append('vs baseline (diff +- SE)')
    if has_macs:
        head.append('MACs (expected)')
    if has_paper:
        head.append('paper')
    lines += ['| %s |' % ' | '.join(head), '|' + '---|' * len(head)]
    for r in rows:
        cells = ['`%s`' % r['row'], r['label'], _fmt_mean_std(r['best_mean'], r['best_std']), str(r['n']),
                 _fmt_mean_std(r['final_mean'], r['final_std'])]
        if has_base:
            vb = r.get('vs_baseline')
            if not r.get('baseline'):
                cells.append('-')
            elif vb is None:
                cells.append('vs `%s`: -' % r['baseline'])
            else:
                txt = 'vs `%s`: %+.2f' % (r['baseline'], 100 * vb['diff'])
                if vb['se'] is not None:
                    txt += ' +- %.2f%s' % (100 * vb['se'], ' (within noise)' if vb['within_noise'] else '')
                cells.append(txt)
        if has_macs:
            cells.append(_fmt_macs(r))
        if has_paper:
            cells.append(_fmt_paper(r.get('paper')))
        lines.append('| %s |' % ' | '.join(c.replace('|', '\\|') for c in cells))
    lines += ['', 'best: the highest val top-1 over a run\'s epochs (after the mask update for runs that report '
              '`phase1_epochs`); std: sample standard deviation over seeds (ddof 1); diff +- SE: difference of '
              'the means and its standard error sqrt(s1^2/n1 + s2^2/n2), "within noise" when |diff| < 2 SE.', '']
    notes = scale.get('notes') or []
    if scale.get('estimate'):
        notes = notes + ['Estimated cost: %s' % scale['estimate']]
    if notes:
        lines += ['## Notes', ''] + ['- %s' % describe(plan, n) for n in notes] + ['']
    lines += ['## Commands', '', 'Run from the repository root; every seed k adds `--seed k --save-dir '
              '%s/<row>/seed<k>`.' % arg_path(plan.out), '']
    for r in plan.rows:
        run = next((x for x in plan.runs if x.name == r['name']), None)
        if run is None:
            continue
        seeds = [x.seed for x in plan.runs if x.name == r['name']]
        lines += ['`%s` (%s; seeds %s):' % (r['name'], r.get('label', r['name']), ','.join(map(str, seeds))), '',
                  '```sh', run.command_line(), '```', '']
    lines += ['## Runs', '', '| run | state | best val top-1 % | best epoch | final val top-1 % | wall time |',
              '|---|---|---|---|---|---|']
    for rec in records:
        res = rec.get('result') or {}
        lines.append('| %s | %s | %s | %s | %s | %s |' % (
            rec['run'], rec['state'], _pct(res.get('best_val_top1')), res.get('best_epoch', '-'),
            _pct(res.get('final_val_top1')), _fmt_duration(res.get('wall_time_s'))))
    return '\n'.join(lines) + '\n'


def write_png(plan, rows, path):
    """Bar chart of the rows' mean best val top-1 with sample-std error bars (Agg).
    Returns the path, or None when no row has a finished run."""
    shown = [r for r in rows if r['best_mean'] is not None]
    if not shown:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    means = [100 * r['best_mean'] for r in shown]
    errs = [100 * (r['best_std'] or 0.0) for r in shown]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(shown) + 2), 4.5))
    xs = list(range(len(shown)))
    ax.bar(xs, means, yerr=errs, capsize=5, color='#4c78a8', edgecolor='black', linewidth=0.5)
    lo = min(m - e for m, e in zip(means, errs))
    hi = max(m + e for m, e in zip(means, errs))
    for x, m, e, r in zip(xs, means, errs, shown):
        ax.text(x, m + e, '%.2f\nn=%d' % (m, r['n']), ha='center', va='bottom', fontsize=8)
    paper = [(x, _paper_top1(r.get('paper'))) for x, r in zip(xs, shown)]
    paper = [(x, v) for x, v in paper if v is not None]
    if paper and plan.scale_name == 'paper':
        ax.plot([x for x, _ in paper], [v for _, v in paper], 'x', color='#d62728', markersize=9, mew=2,
                label='paper (top-1 %)')
        ax.legend(loc='lower right', fontsize=8)
        lo, hi = min([lo] + [v for _, v in paper]), max([hi] + [v for _, v in paper])
    ax.set_xticks(xs)
    ax.set_xticklabels([r['label'] for r in shown], rotation=25, ha='right', fontsize=8)
    pad = max(1.0, 0.15 * (hi - lo))
    bottom = max(0.0, lo - 3 * pad)
    ax.set_ylim(bottom, min(100.0, hi + 2 * pad))
    ax.set_ylabel('best val top-1 (%), mean +- std over seeds' + ('\n(axis from %g)' % bottom if bottom > 0 else ''))
    ax.set_title('%s\n%s scale' % (plan.recipe['title'], plan.scale_name), fontsize=10)
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _evaluated(best):
    """A metrics line's ``best_top1``, None before the first evaluation (the trainer starts
    its best at -1)."""
    return best if best is not None and best >= 0 else None


def _paper_top1(paper):
    """The paper's number as top-1 %, or None (error % is converted: 100 - error)."""
    if not paper or paper.get('value') is None:
        return None
    unit = str(paper.get('unit', ''))
    if 'error' in unit:
        return 100.0 - float(paper['value'])
    return float(paper['value']) if 'top-1' in unit else None


def _records(plan):
    records = []
    for run in plan.runs:
        state, detail = run_state(run)
        rec = dict(run=run.key, row=run.name, seed=run.seed, state=state, folder=arg_path(run.folder),
                   command_line=run.command_line())
        if state == 'finished':
            rec['result'] = detail
        elif state in ('foreign', 'changed'):
            rec['problem'] = detail
        records.append(rec)
    return records


def write_reports(plan, runner_command=None, log=None):
    """Write ``results.json``, ``results.md`` and ``results.png`` into the plan's output
    folder from the runs' ``result.json`` files. Returns the per-row summaries."""
    from .engine.checkpoint import atomic_write, atomic_write_json, jsonable
    records = _records(plan)
    results = [r['result'] for r in records if r['state'] == 'finished']
    rows = summarize_rows(plan, results)
    os.makedirs(plan.out, exist_ok=True)
    atomic_write_json(os.path.join(plan.out, 'results.json'), jsonable(dict(
        recipe=plan.recipe['name'], title=plan.recipe['title'], paper=plan.recipe['paper'],
        measures=plan.recipe['measures'], scale=plan.scale_name, recipe_file=arg_path(plan.recipe.get('_path', '')),
        variables=plan.variables, command=runner_command,
        generated=datetime.datetime.now().isoformat(timespec='seconds'), rows=rows, runs=records)))
    text = results_markdown(plan, records, rows, runner_command)

    def _w(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(os.path.join(plan.out, 'results.md'), _w)
    png = write_png(plan, rows, os.path.join(plan.out, 'results.png'))
    if log:
        log('results: %s, results.md%s' % (arg_path(os.path.join(plan.out, 'results.json')),
                                            ', results.png' if png else ' (no finished run: no PNG yet)'))
    return rows


# ---------------------------------------------------------------------- execution
LOCK_WAIT_S = 600.0      # how long a runner waits for another one's prepare step or report write


class Lock:
    """A lock file holding the pid of the runner that owns it; a lock whose process is gone
    is taken over. ``Lock(out)``: ``OUT/.reproduce.lock``, held briefly by a runner while it
    runs the prepare steps or writes the reports. ``Lock.for_run(run)``: ``OUT/ROW/.seedN.lock``,
    held while a runner trains that run -- so several runners can work on one output folder
    at once, each on the runs no other runner holds."""

    def __init__(self, out, name='.reproduce.lock', what=None):
        self.path = os.path.join(out, name)
        self.what = what or arg_path(out)
        self.held = False

    @classmethod
    def for_run(cls, run):
        return cls(os.path.dirname(run.folder), '.%s.lock' % os.path.basename(run.folder), what=run.key)

    def try_acquire(self):
        """Take the lock: None when taken, else the pid of the live runner holding it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    with open(self.path) as f:
                        pid = int(f.read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    return pid
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, 'w') as f:
                f.write('%d\n' % os.getpid())
            self.held = True
            return None
        raise ConfigError('cannot take the lock %s' % self.path)

    def acquire(self, wait_s=0.0, poll=0.2):
        """Take the lock, waiting up to ``wait_s`` seconds for another runner to release it;
        ConfigError naming that runner otherwise."""
        deadline = time.time() + float(wait_s)
        while True:
            pid = self.try_acquire()
            if pid is None:
                return self
            if time.time() >= deadline:
                raise ConfigError('another reproduce run (pid %d) holds %s; wait for it' % (pid, self.what))
            time.sleep(poll)

    def release(self):
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_ledger(run, ledger):
    from .engine.checkpoint import atomic_write_json
    atomic_write_json(run.ledger_path, ledger)


def _last_epoch(folder):
    path = os.path.join(folder, METRICS)
    try:
        with open(path, 'rb') as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            tail = f.read().decode('utf-8', 'replace').strip().split('\n')
        return json.loads(tail[-1])
    except (OSError, ValueError, IndexError):
        return None


def _set_aside_if_unstarted(run, echo):
    """A new run that stopped before its first checkpoint: move its (non-empty) folder to
    ``seed<k>.failed-<n>`` so that the next invocation starts it again; nothing is deleted."""
    if os.path.isdir(run.folder) and not os.path.isfile(os.path.join(run.folder, POINTER)) and os.listdir(run.folder):
        dest = _move_aside(run.folder)
        echo('    no checkpoint was written: its folder moved to %s; the next invocation starts it again'
             % arg_path(dest))


def _move_aside(folder):
    n = 1
    while os.path.exists('%s.failed-%d' % (folder, n)):
        n += 1
    dest = '%s.failed-%d' % (folder, n)
    os.rename(folder, dest)
    return dest


def run_one(run, resume, echo, verbose=False, heartbeat=60.0, poll=1.0):
    """Start the trainer of ``run`` (``--resume`` its folder when ``resume``), stream its
    output to ``run.log_path`` (and to ``echo`` with ``verbose``), print a line per
    validated epoch at most every ``heartbeat`` seconds, record the attempt in the ledger.
    Returns ``(returncode, duration_s)``. KeyboardInterrupt is passed on after the trainer
    stopped (it gets SIGINT and keeps its last checkpoint)."""
    ledger = _read_json(run.ledger_path) or {}
    if not resume or 'command' not in ledger:
        ledger['command'] = run.command      # a fresh start (an earlier failed folder was moved aside)
    attempts = ledger.setdefault('attempts', [])
    started = datetime.datetime.now().isoformat(timespec='seconds')
    attempts.append(dict(started=started, resume=bool(resume), returncode=None, duration_s=None))
    os.makedirs(os.path.dirname(run.folder), exist_ok=True)
    _write_ledger(run, ledger)
    cmd = [sys.executable, run.script] + list(run.argv)
    if resume:
        cmd += ['--resume', arg_path(run.folder)]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    t0 = time.time()
    with open(run.log_path, 'a') as logf:
        logf.write('=== %s %s\n' % (started, shlex.join(cmd)))
        logf.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1, errors='replace')
        tail = []

        def pump():
            for line in proc.stdout:
                logf.write(line)
                logf.flush()
                tail.append(line)
                del tail[:-20]
                if verbose:
                    echo(line.rstrip('\n'))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        last_epoch, last_print = None, t0
        try:
            while proc.poll() is None:
                try:
                    proc.wait(poll)
                except subprocess.TimeoutExpired:
                    pass
                rec = _last_epoch(run.folder)
                if rec and rec.get('epoch') != last_epoch and time.time() - last_print >= heartbeat:
                    last_epoch, last_print = rec.get('epoch'), time.time()
                    if not verbose:
                        echo('    %s epoch %s: val top-1 %s (best %s) | run time %s' % (
                            run.key, rec.get('epoch'), _pct(rec.get('val_top1')), _pct(_evaluated(rec.get('best_top1'))),
                            _fmt_duration(time.time() - t0)))
        except KeyboardInterrupt:
            _stop(proc)
            reader.join(5)
            proc.stdout.close()
            attempts[-1].update(returncode=proc.returncode, duration_s=time.time() - t0, interrupted=True)
            _write_ledger(run, ledger)
            raise
        reader.join(10)
        proc.stdout.close()
    duration = time.time() - t0
    attempts[-1].update(returncode=proc.returncode, duration_s=duration)
    if proc.returncode:
        attempts[-1]['tail'] = ''.join(tail[-5:])
    _write_ledger(run, ledger)
    return proc.returncode, duration


def _stop(proc):
    """After Ctrl-C: give the trainer (which got SIGINT from the terminal too) time to
    exit; then SIGINT it; then SIGTERM; then SIGKILL. Only this child is signalled."""
    for sig, wait in ((None, 20), (signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue


class Progress:
    """Runs done / total, elapsed, ETA from the mean duration of finished runs (per row
    where that row has finished runs, else over all rows)."""

    def __init__(self, plan, echo):
        self.plan = plan
        self.echo = echo
        self.t0 = time.time()
        self.durations = {}
        self.done = 0

    def add(self, run, duration):
        if duration:
            self.durations.setdefault(run.name, []).append(float(duration))

    def estimate(self, run):
        if self.durations.get(run.name):
            d = self.durations[run.name]
            return sum(d) / len(d)
        alld = [v for d in self.durations.values() for v in d]
        return sum(alld) / len(alld) if alld else None

    def eta(self, remaining, current_elapsed=0.0):
        total = 0.0
        for run in remaining:
            e = self.estimate(run)
            if e is None:
                return None
            total += e
        return max(0.0, total - current_elapsed)

    def line(self, index, run, state, remaining):
        eta = self.eta(remaining)
        n = sum(len(d) for d in self.durations.values())
        self.echo('[%d/%d done] %s %s (%s) | elapsed %s | ETA %s' % (
            self.done, len(self.plan.runs), 'resuming' if state == 'interrupted' else 'starting', run.key,
            'run %d of %d' % (index + 1, len(self.plan.runs)), _fmt_duration(time.time() - self.t0),
            '%s (mean of %d finished run%s)' % (_fmt_duration(eta), n, '' if n == 1 else 's')
            if eta is not None else 'after the first finished run'))


def prepare_steps(plan, echo, blocked=()):
    """Run the scale's prepare steps whose outputs are missing (subprocess, output in
    ``OUT/prepare-<name>.log``), except those whose rows are all in ``blocked``.
    ConfigError when one fails."""
    names = [r['name'] for r in plan.rows]
    for step in plan.prepare:
        missing = [c for c in step['creates'] if not os.path.exists(_abs(c))]
        if not missing:
            continue
        if all(n in blocked for n in (step.get('rows') or names)):
            echo('prepare %s: skipped (its rows are blocked)' % step['name'])
            continue
        cmd = [sys.executable, step['script']] + step['argv']
        log_path = os.path.join(plan.out, 'prepare-%s.log' % step['name'])
        echo('prepare %s: %s (log: %s)' % (step['name'], shlex.join(['python', step['script']] + step['argv']),
                                           arg_path(log_path)))
        t0 = time.time()
        with open(log_path, 'a') as logf:
            rc = subprocess.call(cmd, cwd=REPO_ROOT, stdout=logf, stderr=subprocess.STDOUT)
        still = [c for c in step['creates'] if not os.path.exists(_abs(c))]
        if rc or still:
            raise ConfigError('prepare step %s failed (exit %d%s); see %s' % (
                step['name'], rc, ', still missing: %s' % ', '.join(still) if still else '', arg_path(log_path)))
        echo('prepare %s: done in %s' % (step['name'], _fmt_duration(time.time() - t0)))


def execute_plan(plan, echo=print, verbose=False, heartbeat=60.0, runner_command=None, poll=1.0):
    """Run every run of the plan that is not finished (resume the interrupted ones), in
    order; write the reports after each finished run and at the end. Returns a dict of
    run key -> final state ('finished', 'failed', 'blocked', 'foreign', 'changed',
    'running elsewhere').

    Several runners may work on one output folder at once (start the same command again,
    e.g. in another terminal, when one run does not keep every core busy): a runner trains
    a run only while it holds that run's lock (:meth:`Lock.for_run`), skips the runs another
    live runner holds, and takes the folder's lock for the prepare steps and each report
    write (waiting up to ``LOCK_WAIT_S`` for the other runner)."""
    os.makedirs(plan.out, exist_ok=True)
    outcome = {}
    progress = Progress(plan, echo)
    missing = {}
    for q in plan.requires:
        if not os.path.exists(_abs(q['path'])):
            for rname in q['rows']:
                missing.setdefault(rname, []).append(q)
    states = {}
    for run in plan.runs:
        states[run.key] = run_state(run)
        if states[run.key][0] == 'finished':
            progress.done += 1
            progress.add(run, states[run.key][1].get('wall_time_s'))
    todo = {run.name for run in plan.runs if states[run.key][0] in ('new', 'interrupted')}
    if todo:
        with Lock(plan.out).acquire(wait_s=LOCK_WAIT_S):
            prepare_steps(plan, echo, blocked=set(missing) | ({r['name'] for r in plan.rows} - todo))
    for i, run in enumerate(plan.runs):
        if states[run.key][0] == 'finished':
            outcome[run.key] = 'finished'
            continue
        _execute_run(plan, run, i, states, outcome, missing, progress, echo, verbose, heartbeat, poll,
                     runner_command)
    with Lock(plan.out).acquire(wait_s=LOCK_WAIT_S):
        write_reports(plan.full, runner_command, log=echo)
    return outcome


def _execute_run(plan, run, i, states, outcome, missing, progress, echo, verbose, heartbeat, poll, runner_command):
    """One step of :func:`execute_plan`: block, skip (another runner holds it), refuse or
    train ``run`` and record its outcome. The lock comes before the refusal: a folder that
    another runner has just created holds files but no checkpoint yet."""
    if run.name in missing:
        echo('blocked %s: needs %s -- %s' % (run.key, missing[run.name][0]['path'], missing[run.name][0]['help']))
        outcome[run.key] = 'blocked'
        return
    bad = [d for d in run.deps if outcome.get('%s/seed%d' % d) != 'finished']     # deps come first
    if bad:
        echo('blocked %s: it needs the finished run%s %s' % (run.key, 's' if len(bad) > 1 else '',
                                                           ', '.join('%s/seed%d' % d for d in bad)))
        outcome[run.key] = 'blocked'
        return
    run_lock = Lock.for_run(run)
    holder = run_lock.try_acquire()
    if holder is not None:
        echo('skipped %s: another runner (pid %d) is training it' % (run.key, holder))
        outcome[run.key] = 'running elsewhere'
        return
    try:
        state, detail = states[run.key] = run_state(run)      # another runner may have finished it
        if state == 'finished':
            progress.done += 1
            progress.add(run, detail.get('wall_time_s'))
            outcome[run.key] = 'finished'
            return
        if state in ('foreign', 'changed'):
            echo('refused %s: %s' % (run.key, detail))
            outcome[run.key] = state
            return
        _train_run(plan, run, i, state, states, outcome, progress, echo, verbose, heartbeat, poll, runner_command)
    finally:
        run_lock.release()


def _train_run(plan, run, i, state, states, outcome, progress, echo, verbose, heartbeat, poll, runner_command):
    """Train ``run`` (this runner holds its lock), collect its result, write the reports."""
    from .engine.checkpoint import atomic_write_json, jsonable
    remaining = [r for r in plan.runs[i:] if states[r.key][0] in ('new', 'interrupted')]
    progress.line(i, run, state, remaining)
    fresh = state == 'new'
    try:
        rc, duration = run_one(run, resume=not fresh, echo=echo, verbose=verbose, heartbeat=heartbeat, poll=poll)
    except KeyboardInterrupt:
        if fresh:
            _set_aside_if_unstarted(run, echo)
        raise
    ledger = _read_json(run.ledger_path) or {}
    if rc == 0:
        attempts = ledger.get('attempts', [])
        first = max([j for j, a in enumerate(attempts) if not a.get('resume')] or [0])
        attempts = attempts[first:]        # since the last fresh start
        wall = sum(a.get('duration_s') or 0.0 for a in attempts)
        try:
            result = collect_result(run, plan, wall_time_s=wall, attempts=len(attempts))
        except DataError as err:
            echo('failed %s: %s' % (run.key, err))
            outcome[run.key] = 'failed'
            return
        result_path = os.path.join(run.folder, RESULT)
        if os.path.exists(result_path):        # never overwrite (another writer got there first)
            echo('kept %s: %s appeared meanwhile' % (run.key, arg_path(result_path)))
        else:
            atomic_write_json(result_path, jsonable(result))
        progress.done += 1
        progress.add(run, wall)
        outcome[run.key] = 'finished'
        echo('finished %s in %s: best val top-1 %s (epoch %d), final %s' % (
            run.key, _fmt_duration(duration), _pct(result['best_val_top1']), result['best_epoch'],
            _pct(result['final_val_top1'])))
        with Lock(plan.out).acquire(wait_s=LOCK_WAIT_S):
            write_reports(plan.full, runner_command)
    else:
        outcome[run.key] = 'failed'
        tail = (ledger.get('attempts') or [{}])[-1].get('tail', '').strip().splitlines()
        echo('failed %s (exit %s after %s); log: %s%s' % (run.key, rc, _fmt_duration(duration),
                                                          arg_path(run.log_path),
                                                          ('\n    ' + '\n    '.join(tail[-3:])) if tail else ''))
        if fresh:
            _set_aside_if_unstarted(run, echo)


# ---------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(
        prog='reproduce.py', description='Run a recipe (a paper table as rows x seeds of training runs): resumable, '
        'skips finished runs, writes results.json/.md/.png.',
        epilog='Recipes live in recipes/*.json; the format is described in docs/reproduce.md.')
    p.add_argument('recipe', nargs='?', help='recipe name in recipes/ (e.g. afds) or the path of a recipe file')
    p.add_argument('--scale', default='cpu', help='which scale of the recipe: cpu (CIFAR-scale analogue) or paper')
    p.add_argument('--seeds', default=None, help='comma-separated seeds for the rows that do not pin their own '
                   '(default: the scale\'s)')
    p.add_argument('--rows', default=None, help='comma-separated row names (the rows they depend on are added)')
    p.add_argument('--out', default=None, help='output folder (default runs/reproduce/<recipe>-<scale>)')
    p.add_argument('--var', action='append', default=[], metavar='NAME=VALUE',
                   help='set a variable of the scale (e.g. a data folder); see --list')
    p.add_argument('--dry-run', action='store_true',
                   help='print every run\'s command and check the options against the trainers\' parsers; run nothing')
    p.add_argument('--list', action='store_true', help='list the recipes (or the given recipe\'s scales and rows)')
    p.add_argument('--report-only', action='store_true', help='rebuild results.json/.md/.png from finished runs')
    p.add_argument('-v', '--verbose', action='store_true', help='also print the trainers\' output')
    p.add_argument('--heartbeat', type=float, default=60.0,
                   help='seconds between progress lines of a running run (one per validated epoch at most)')
    return p


def _int_csv(text, what):
    try:
        vals = [int(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise ConfigError('%s takes comma-separated integers, got %r' % (what, text)) from None
    if not vals or any(v < 0 for v in vals):
        raise ConfigError('%s takes comma-separated integers >= 0, got %r' % (what, text))
    return vals


def list_text(spec=None, directory=RECIPES_DIR):
    """What ``--list`` prints: every recipe with its scales, or one recipe's rows and variables."""
    lines = []
    if spec is None:
        for name in list_recipes(directory):
            try:
                rec = load_recipe(name, directory)
            except ConfigError as err:
                lines.append('%-20s BROKEN: %s' % (name, err))
                continue
            scales = ', '.join('%s (%d rows, %d runs)' % (s, len(v['rows']), sum(len(r.get('seeds', v['seeds']))
                                                                                  for r in v['rows']))
                               for s, v in rec['scales'].items())
            lines.append('%-20s %s\n%-20s   scales: %s' % (name, rec['title'], '', scales))
        return '\n'.join(lines) or 'no recipes in %s' % directory
    rec = load_recipe(spec, directory)
    lines.append('%s: %s\n  %s\n  %s' % (rec['name'], rec['title'], rec['paper'], rec['measures']))
    for s, v in rec['scales'].items():
        lines.append('scale %s: seeds %s%s' % (s, ','.join(map(str, v['seeds'])),
                                               ('; estimate: %s' % v['estimate']) if v.get('estimate') else ''))
        for name, spec_ in v.get('vars', {}).items():
            lines.append('  --var %s=... (default %s): %s' % (name, spec_['default'], spec_.get('help', '')))
        for r in v['rows']:
            lines.append('  %-16s %-18s %s%s' % (r['name'], r['script'], r.get('label', ''),
                                                 (' [seeds %s]' % ','.join(map(str, r['seeds']))) if 'seeds' in r
                                                 else ''))
    return '\n'.join(lines)


def main(argv=None):
    """Command-line entry (``tools/reproduce.py``). Exit status: 0 when every planned run
    is finished (or the dry run found no problem), 1 when some run failed, was blocked or
    refused, 2 on bad input, 130 when interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    runner_command = shlex.join(['python', 'tools/reproduce.py'] + argv)
    try:
        if args.list:
            print(list_text(args.recipe))
            return 0
        if not args.recipe:
            raise ConfigError('name a recipe (%s) or use --list' % ', '.join(list_recipes()))
        recipe = load_recipe(args.recipe)
        seeds = _int_csv(args.seeds, '--seeds') if args.seeds else None
        rows = [r.strip() for r in args.rows.split(',') if r.strip()] if args.rows else None
        plan = plan_runs(recipe, args.scale, args.out, seeds, rows, args.var)
        if args.dry_run:
            problems = dry_run(plan, sys.stdout)
            sys.stdout.flush()
            if problems:
                print('error: %d run(s) have options their trainer rejects (first: %s)' % (len(problems), problems[0]),
                      file=sys.stderr)
                return 2
            return 0
        if args.report_only:
            if not os.path.isdir(plan.out):
                raise ConfigError('nothing to report: %s does not exist' % arg_path(plan.out))
            with Lock(plan.out).acquire(wait_s=LOCK_WAIT_S):
                rows_ = write_reports(plan.full, runner_command, log=print)
            for r in rows_:
                print('  %-16s %s  n=%d' % (r['row'], _fmt_mean_std(r['best_mean'], r['best_std']), r['n']))
            return 0
        print('%s (%s scale): %s in %s' % (recipe['title'], args.scale, _count(len(plan.runs), 'run'),
                                          arg_path(plan.out)))
        outcome = execute_plan(plan, echo=lambda s: print(s, flush=True), verbose=args.verbose,
                               heartbeat=args.heartbeat, runner_command=runner_command)
        bad = {k: v for k, v in outcome.items() if v != 'finished'}
        print('%d of %d runs finished%s' % (len(outcome) - len(bad), len(outcome),
                                            '; not finished: %s' % ', '.join('%s (%s)' % kv for kv in bad.items())
                                            if bad else ''))
        return 1 if bad else 0
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: finished runs are kept and the interrupted one resumes from its last checkpoint; run the '
              'same command again to continue', file=sys.stderr)
        return 130
