"""Every command in README.md runs as copied, in a fresh clone, after `make demo`.

The test clones this repository into a temporary folder (plus the working tree's uncommitted
changes, so that it checks what is about to be committed), links the existing ``.venv`` into
the clone, extracts the README's fenced ``sh`` blocks (and its ``python`` blocks) and runs
every command there, in README order, so that each one finds the files the earlier ones left.
Commands run with tiny settings (below), or are only parsed by their script's real argument
parser where running them would take longer than this test may or needs files the clone
does not have (``PARSE_ONLY``; and any command naming a path under ``~``, the user's own
data); a command that reads the output of a parse-only command is parse-only too. With
``GLUON_TRANSFER_README_FULL=1`` every command runs for real (still with tiny settings).

Tiny settings, applied to the command line as written in the README:

=============================  ==========================================================
command                        rewrite
=============================  ==========================================================
``make demo``                  the Makefile's recipe (``make -n``) + ``--num-epochs 1 --max-iter 3``
``make test``                  ``make -n`` only: it must name pytest (running it would start
                               this test again)
``train_*.py``                 ``--num-epochs 1``, ``--max-iter 2`` (added when absent);
                               AFDS (``--afs``): ``--num-epochs 2 --max-iter 4 --batch-size 256``
                               (its two phases need two epochs)
``tools/cifar_transfer_task``  ``--source-epochs 1 --source-max-iter 2``
``tools/visualize_*``          ``--num-images 2``
everything else                as written
=============================  ==========================================================
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
PY = '.venv/bin/python'
FULL = os.environ.get('GLUON_TRANSFER_README_FULL') == '1'
TIMEOUT = 300          # seconds per command (a loaded 2-core machine)

# Commands that are only parsed unless GLUON_TRANSFER_README_FULL=1: (what they start with
# after ".venv/bin/python", a flag they contain or None, why).
PARSE_ONLY = [
    ('train_transfer.py', '--afs', 'AFDS: two phases of at least one epoch each plus the mask statistics'),
    ('train_transfer.py', '--afa-two-stage', 'AFA: two training stages plus holdout and val evaluation'),
    ('train_transfer.py', '--randaugment', 'non-binary training: the Python decode pipeline starts worker processes'),
    ('train_transfer.py', '--channel-weights', 'DELTA: a second fine-tuning run of the same task'),
    ('tools/convert_torch.py', None, 'needs a PyTorch checkpoint, which the clone does not have'),
]
# Script arguments that name files the command writes: a later command reading below one of
# them depends on this command.
OUTPUT_FLAGS = ('--save-dir', '--out')

PARSE_STUB = r'''
# Parse each command of the JSON list in sys.argv[1] with its script's own parser, in this one
# process (importing mxnet once), and stop the script right after its parse_args.
import argparse, contextlib, io, json, os, runpy, sys
_parse = argparse.ArgumentParser.parse_args
class Parsed(Exception):
    pass
def parse_args(self, *a, **k):
    _parse(self, *a, **k)
    raise Parsed()
argparse.ArgumentParser.parse_args = parse_args
results = []
for argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    sys.argv = list(argv)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if argv[0] == '-m':                 # as `python -m MODULE`: the cwd first on the path
                sys.argv, sys.path[0] = argv[1:], os.getcwd()
                runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
            else:                               # as `python SCRIPT`: the script's folder first
                sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name='__main__')
        results.append([False, 'the script ended without parsing its arguments'])
    except Parsed:
        results.append([True, ''])
    except SystemExit as e:
        results.append([False, 'exit %s: %s' % (e.code, err.getvalue()[-2000:])])
print('PARSED ' + json.dumps(results))
'''


def readme_blocks(text, langs):
    return [m.group(2) for m in re.finditer(r'^```(\w+)\n(.*?)^```', text, re.S | re.M) if m.group(1) in langs]


def readme_commands(text):
    """Every shell command of the README's ``sh`` blocks: continuation lines joined,
    comments dropped, as argv lists."""
    cmds = []
    for block in readme_blocks(text, ('sh', 'bash', 'shell')):
        for line in block.replace('\\\n', ' ').splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                cmds.append(argv)
    return cmds


def _set(argv, flag, value):
    """``argv`` with ``flag value`` replaced, or appended when absent."""
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def tiny(argv):
    """The command with the tiny settings of the module docstring."""
    script = argv[1] if len(argv) > 1 else ''
    if script.startswith('train_'):
        if '--afs' in argv:
            return _set(_set(_set(argv, '--num-epochs', '2'), '--max-iter', '4'), '--batch-size', '256')
        if '--help' in argv or '--list-models' in argv:
            return argv
        return _set(_set(argv, '--num-epochs', '1'), '--max-iter', '2')
    if script.endswith('cifar_transfer_task.py'):
        return _set(_set(argv, '--source-epochs', '1'), '--source-max-iter', '2')
    if script.startswith('tools/visualize_') and '--num-images' in argv:
        return _set(argv, '--num-images', '2')
    return argv


def parse_reason(argv, skipped_outputs):
    """Why ``argv`` is only parsed (None: it runs)."""
    if FULL:
        return None
    script = argv[1] if len(argv) > 1 else ''
    for start, flag, why in PARSE_ONLY:
        if script == start and (flag is None or flag in argv):
            return why
    for arg in argv[2:]:
        if arg.startswith('~'):
            return "reads the user's own files (%s)" % arg
    for arg in argv[2:]:
        for out in skipped_outputs:
            if arg == out or arg.startswith(out.rstrip('/') + '/'):
                return 'reads %s, the output of a parse-only command' % arg
    return None


def outputs(argv):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS]


def run(cmd, cwd, env, what):
    t = time.time()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    took = time.time() - t
    tail = (r.stdout[-1500:] + '\n' + r.stderr[-3000:]).strip()
    assert r.returncode == 0, 'README command failed (exit %d): %s\n%s' % (r.returncode, what, tail)
    return r, took


def test_parse_only_mode_uses_the_real_parsers(tmp_path):
    """The parse-only path is not vacuous: a mistyped flag or a bad value fails, a good command
    passes, and nothing runs past the parser (no run folder appears)."""
    stub, todo = tmp_path / 'stub.py', tmp_path / 'todo.json'
    stub.write_text(PARSE_STUB)
    save = str(tmp_path / 'never')
    cases = [['train_cifar.py', '--data-dir', 'data/cifar10_sample', '--num-epochs', '1', '--save-dir', save],
             ['train_cifar.py', '--epochs', '1'],
             ['tools/export.py', '--model', 'wrn16_1', '--input-shape', '1,3,32,32'],
             ['tools/visualize_attention.py', 'ast', '--num-images', 'two'],
             ['tools/plot_metrics.py', 'runs/x', '--dpi', '90']]
    todo.write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, str(stub), str(todo)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.split('PARSED ', 1)[1])
    assert [ok for ok, _ in results] == [True, False, False, False, True], results
    assert results[1][1].startswith('exit 2') and 'unknown option --epochs' in results[1][1]
    assert 'the following arguments are required: --out' in results[2][1]
    assert "invalid int value: 'two'" in results[3][1]
    assert not os.path.exists(save)


@pytest.fixture(scope='module')
def clone(tmp_path_factory):
    if shutil.which('git') is None or not os.path.isdir(os.path.join(ROOT, '.git')) and \
            not os.path.isfile(os.path.join(ROOT, '.git')):
        pytest.skip('not a git checkout')
    venv = os.path.realpath(os.path.join(ROOT, '.venv'))
    if not os.path.isfile(os.path.join(venv, 'bin', 'python')):
        pytest.skip('no .venv (make test creates it)')
    dest = str(tmp_path_factory.mktemp('readme') / 'clone')
    subprocess.run(['git', 'clone', '-q', '--no-hardlinks', ROOT, dest], check=True, timeout=120)
    # the working tree's uncommitted changes, so that the test checks what is on disk
    ls = lambda *a: subprocess.run(['git', '-C', ROOT, 'ls-files', '-z'] + list(a), check=True,  # noqa: E731
                                   capture_output=True, text=True).stdout.split('\0')
    for rel in filter(None, ls('-m', '-o', '--exclude-standard')):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src) and not os.path.islink(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    for rel in filter(None, ls('-d')):
        if os.path.exists(os.path.join(dest, rel)):
            os.remove(os.path.join(dest, rel))
    os.symlink(venv, os.path.join(dest, '.venv'))
    return dest


def test_readme_is_short_and_says_how_to_run_it():
    with open(README) as f:
        text = f.read()
    assert len(text) <= 15000, 'README.md has %d characters (at most 15,000)' % len(text)
    for argv in readme_commands(text):
        assert argv[0] in (PY, 'make'), 'README commands start with %s or make: %s' % (PY, ' '.join(argv))
    for name in ('shared/', 'transfer-methods', 'open-aff.md', 'DESIGN.md'):
        assert name not in text, 'README.md refers to %s, outside the repository' % name
    assert not re.search(r'\bissue\s*#?\d', text, re.I), 'README.md refers to an issue number'


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def _strip_code(text):
    return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


def _anchors(path):
    with open(path) as f:
        text = _strip_code(f.read())          # no headings inside code blocks
    return {_slug(m.group(1)) for m in re.finditer(r'^#+ (.+)$', text, re.M)}


def test_links_in_readme_and_docs_resolve():
    """Every relative link and image of README.md, docs/*.md and bench/README.md names a file of
    the repository, and every #anchor a heading of the page it points to."""
    docs = os.path.join(ROOT, 'docs')
    pages = [README, os.path.join(ROOT, 'bench', 'README.md')] + sorted(
        os.path.join(docs, n) for n in os.listdir(docs) if n.endswith('.md'))
    checked = 0
    for page in pages:
        with open(page) as f:
            text = _strip_code(f.read())
        rel = os.path.relpath(page, ROOT)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if target.startswith(('http://', 'https://', 'mailto:')):
                continue
            path, _, anchor = target.partition('#')
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            assert os.path.exists(full), '%s links to %s, which does not exist' % (rel, target)
            assert os.path.realpath(full).startswith(os.path.realpath(ROOT) + os.sep), \
                '%s links to %s, outside the repository' % (rel, target)
            if anchor and full.endswith('.md'):
                assert anchor in _anchors(full), '%s links to %s: no such heading' % (rel, target)
            checked += 1
    assert checked > 50, checked


@pytest.mark.slow
def test_every_readme_command_runs_in_a_fresh_clone(clone):
    with open(os.path.join(clone, 'README.md')) as f:
        text = f.read()
    commands = readme_commands(text)
    assert commands[:2] == [['make', 'demo'], ['make', 'test']], commands[:2]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)          # the clone's own files, as a user's shell would have them
    for k in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL'):
        env.pop(k, None)                 # under `make test`: a user's shell has no outer make
    stub = os.path.join(clone, '.readme_parse_stub.py')
    with open(stub, 'w') as f:
        f.write(PARSE_STUB)
    skipped, log, parse_only = [], [], []
    for argv in commands:
        what = ' '.join(argv)
        if argv[0] == 'make':
            printed, _ = run(['make', '--no-print-directory', '-n', '-o', '.venv/.installed', argv[1]], clone, env,
                             what)
            recipe = [shlex.split(line) for line in printed.stdout.splitlines() if line.strip()]
            assert recipe and all(r[0] == PY for r in recipe), printed.stdout
            if argv[1] == 'test':
                assert any('pytest' in r for r in recipe), printed.stdout
                log.append(('printed', what, 0.0))
                continue
            for r in recipe:
                _, took = run(r + ['--num-epochs', '1', '--max-iter', '3'], clone, env, what)
                log.append(('run', what, took))
            continue
        assert argv[0] == PY, what
        why = parse_reason(argv, skipped)
        if why:      # parsed below, all in one process
            parse_only.append((argv[1:], why))
            skipped.extend(outputs(argv))
        else:
            _, took = run(tiny(argv), clone, env, ' '.join(tiny(argv)))
            log.append(('run', what, took))
    if parse_only:
        todo = os.path.join(clone, '.readme_parse_only.json')
        with open(todo, 'w') as f:
            json.dump([a for a, _ in parse_only], f)
        r, took = run([PY, stub, todo], clone, env, 'parsing %d commands' % len(parse_only))
        results = json.loads(r.stdout.split('PARSED ', 1)[1])
        for (argv, why), (ok, err) in zip(parse_only, results):
            what = ' '.join([PY] + argv)
            assert ok, 'README command does not parse: %s\n%s' % (what, err)
            log.append(('parsed (%s)' % why, what, took / len(parse_only)))
    # what the quick starts promise to leave behind
    demo = os.path.join(clone, 'runs', 'demo', 'latest')
    assert os.path.islink(demo), 'make demo did not leave runs/demo/latest'
    for name in ('best.params', 'best.json', 'metrics.jsonl', 'train.log', 'metrics.png'):
        assert os.path.isfile(os.path.join(demo, name)), 'runs/demo/latest/%s missing' % name
    for name in ('resnet20-symbol.json', 'resnet20-0000.params'):
        assert os.path.isfile(os.path.join(demo, 'export', name)), name
    for png in ('runs/aff/vis/fusion.png', 'runs/at_student/vis/attention.png', 'runs/at_student/curves.png'):
        assert os.path.isfile(os.path.join(clone, png)), png
    for argv in readme_blocks(text, ('python',)):
        run([PY, '-c', argv], clone, env, 'python block:\n' + argv)
    sys.stdout.write('\n'.join('%6.1fs  %s: %s' % (t, how, w) for how, w, t in log) + '\n')
