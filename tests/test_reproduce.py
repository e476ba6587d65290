"""The recipe runner (gluon_transfer/reproduce.py): argv from options, placeholders, resume
after a kill, skip of finished runs, refusals, the results tables against numpy, the PNG,
the dry run, and every shipped recipe's options against the real trainers' parsers.

Runs use a tiny fake trainer written by the tests (it writes metrics.jsonl / checkpoint.json
like the real scripts and can be told to die midway); one test runs the real
train_cifar.py on the bundled sample for a few iterations."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from gluon_transfer import reproduce as rp
from gluon_transfer.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_TRAINER = r'''
import argparse, json, os, signal, sys, time
p = argparse.ArgumentParser()
p.add_argument('--save-dir', required=True)
p.add_argument('--resume')
p.add_argument('--seed', type=int, default=0)
p.add_argument('--vals', default='0.5,0.6,0.55')     # val top-1 of each epoch
p.add_argument('--seed-step', type=float, default=0.0)  # + seed * step on every epoch
p.add_argument('--die-at', type=int, default=0)      # SIGKILL itself after this epoch (first attempt only)
p.add_argument('--fail-early', action='store_true')  # exit 2 before any checkpoint
p.add_argument('--need', default=None)               # a file that must exist (a dependency's output)
p.add_argument('--phase1', type=int, default=None)   # write an AFDS-like report
p.add_argument('--macs', default=None)               # baseline,expected
p.add_argument('--flag', action='store_true')
p.add_argument('--list', default=None)
p.add_argument('--unevaluated', type=int, default=0)  # the first N epochs are not evaluated
p.add_argument('--sleep', type=float, default=0.0)    # seconds after each epoch
args = p.parse_args()
d = args.save_dir
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, 'argv.jsonl'), 'a') as f:
    f.write(json.dumps(sys.argv[1:]) + '\n')
if args.fail_early:
    with open(os.path.join(d, 'train.log'), 'w') as f:
        f.write('started\n')
    print('error: told to fail', file=sys.stderr)
    sys.exit(2)
if args.need and not os.path.isfile(args.need):
    print('error: missing %s' % args.need, file=sys.stderr)
    sys.exit(2)
vals = [float(v) + args.seed * args.seed_step for v in args.vals.split(',')]
start = 0
if args.resume:
    with open(os.path.join(args.resume, 'checkpoint.json')) as f:
        start = json.load(f)['epoch']
best = -1.0
for e in range(start, len(vals)):
    v = vals[e]
    with open(os.path.join(d, 'metrics.jsonl'), 'a') as f:
        if e < args.unevaluated:
            f.write(json.dumps({'epoch': e + 1, 'time': 0.5, 'best_top1': -1.0}) + '\n')
        else:
            f.write(json.dumps({'epoch': e + 1, 'val_top1': v, 'val_top5': 1.0, 'time': 0.5, 'best_top1': v}) + '\n')
    with open(os.path.join(d, 'checkpoint.json'), 'w') as f:
        json.dump({'epoch': e + 1}, f)
    with open(os.path.join(d, 'best.params'), 'w') as f:
        f.write('params of epoch %d' % (e + 1))
    print('epoch %d val %.4f' % (e + 1, v), flush=True)
    time.sleep(args.sleep)
    if args.die_at and e + 1 == args.die_at and not args.resume:
        os.kill(os.getpid(), signal.SIGKILL)
if args.phase1 is not None:
    b, x = (float(t) for t in args.macs.split(','))
    with open(os.path.join(d, 'afds_report.json'), 'w') as f:
        json.dump({'baseline': b, 'expected': x, 'static': x, 'phase1_epochs': args.phase1}, f)
'''


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / 'fake_train.py'
    path.write_text(FAKE_TRAINER)
    return str(path)


def write_recipe(tmp_path, rows, seeds=(0, 1, 2), variables=None, extra_scale=None, name='tiny'):
    scale = {'description': 'a tiny recipe', 'seeds': list(seeds), 'rows': rows}
    if variables:
        scale['vars'] = variables
    scale.update(extra_scale or {})
    rec = {'name': name, 'title': 'Tiny recipe', 'paper': 'Nobody, a test', 'measures': 'val top-1 of a fake trainer',
           'scales': {'cpu': scale}}
    path = tmp_path / ('%s.json' % name)
    path.write_text(json.dumps(rec, indent=1))
    return str(path)


def run_main(argv, capsys):
    rc = rp.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def read(path):
    with open(path) as f:
        return f.read()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def argv_log(folder):
    with open(os.path.join(folder, 'argv.jsonl')) as f:
        return [json.loads(l) for l in f if l.strip()]


# ---------------------------------------------------------------------- argv and placeholders
def test_option_argv_bools_lists_numbers():
    argv = rp.option_argv({'--a': True, '--b': False, '--c': None, '--taps': ['x.1', 'y.2'], '--lrs': [0.01, 0.001],
                           '--n': 5, '--lr': 0.5, '--s': 'text'})
    assert argv == ['--a', '--taps', 'x.1,y.2', '--lrs', '0.01,0.001', '--n', '5', '--lr', '0.5', '--s', 'text']


def test_plan_resolves_placeholders_orders_dependencies(tmp_path, fake):
    rows = [
        {'name': 'stage2', 'script': fake, 'options': {'--need': '{run:stage1}/best.params',
                                                      '--list': ['{var:data}/a', '{seed}', '{out}/w.json']}},
        {'name': 'stage1', 'script': fake, 'options': {'--vals': '0.1,0.2'}},
        {'name': 'student', 'script': fake, 'seeds': [3, 4], 'options': {'--need': '{run:teacher@0}/best.params'}},
        {'name': 'teacher', 'script': fake, 'seeds': [0], 'options': {}},
    ]
    path = write_recipe(tmp_path, rows, seeds=(0, 1),
                        variables={'data': {'default': 'data/somewhere', 'path': True, 'help': 'a folder'}})
    recipe = rp.load_recipe(path)
    out = str(tmp_path / 'out')
    plan = rp.plan_runs(recipe, 'cpu', out, var_pairs=['data=%s' % (tmp_path / 'd')])
    keys = [r.key for r in plan.runs]
    # stage1 runs before stage2 (it is listed after it), teacher before student
    assert keys.index('stage1/seed0') < keys.index('stage2/seed0')
    assert keys.index('teacher/seed0') < keys.index('student/seed3')
    s2 = plan.run('stage2', 1)
    folder1 = os.path.join(out, 'stage1', 'seed1')
    assert s2.argv == ['--need', folder1 + '/best.params',
                       '--list', '%s/a,1,%s/w.json' % (tmp_path / 'd', out),
                       '--seed', '1', '--save-dir', os.path.join(out, 'stage2', 'seed1')]
    assert s2.deps == [('stage1', 1)]
    st = plan.run('student', 4)
    assert st.argv[:2] == ['--need', os.path.join(out, 'teacher', 'seed0') + '/best.params']
    assert st.deps == [('teacher', 0)]
    # a row filter pulls in what it depends on; --seeds replaces the default seeds only
    plan = rp.plan_runs(recipe, 'cpu', out, seeds=[5], rows=['stage2', 'student'])
    assert sorted(r.key for r in plan.runs) == ['stage1/seed5', 'stage2/seed5', 'student/seed3', 'student/seed4',
                                                'teacher/seed0']
    # the default of a path variable is relative to the repository root
    plan = rp.plan_runs(recipe, 'cpu', out)
    assert plan.variables['data'] == 'data/somewhere'
    # inside the repository, paths are given relative to the root (the trainers' working directory)
    plan = rp.plan_runs(recipe, 'cpu', os.path.join(REPO, 'runs', 'reproduce', 'x'))
    assert plan.run('stage1', 0).argv[-1] == os.path.join('runs', 'reproduce', 'x', 'stage1', 'seed0')


@pytest.mark.parametrize('rows, message', [
    ([{'name': 'a', 'script': 'x.py', 'options': {'--seed': 1}}], '--seed is set by the runner'),
    ([{'name': 'a', 'script': 'x.py', 'options': {'--save-dir': 'd'}}], '--save-dir is set by the runner'),
    ([{'name': 'a', 'script': 'x.py', 'options': {'--p': '{var:nope}'}}], 'no such variable'),
    ([{'name': 'a', 'script': 'x.py', 'options': {'--p': '{run:nope}'}}], 'names no other row'),
    ([{'name': 'a', 'script': 'x.py', 'options': {'--p': '{what}'}}], 'unknown placeholder {what}'),
    ([{'name': 'a', 'script': 'x.py', 'options': {'p': 1}}], 'is not a flag'),
    ([{'name': 'a', 'script': 'x.py', 'options': {'--p': '{run:b}'}},
      {'name': 'b', 'script': 'x.py', 'options': {'--p': '{run:a}'}}], 'cycle'),
    ([{'name': 'a', 'script': 'x.py', 'options': {}}, {'name': 'a', 'script': 'x.py', 'options': {}}],
     'two rows are named'),
])
def test_bad_recipes_are_one_line_errors(tmp_path, rows, message):
    path = write_recipe(tmp_path, rows)
    with pytest.raises(ConfigError, match=message.replace('{', r'\{').replace('}', r'\}')):
        rp.load_recipe(path)


def test_unknown_names_are_errors(tmp_path, fake, capsys):
    path = write_recipe(tmp_path, [{'name': 'a', 'script': fake, 'options': {}}])
    recipe = rp.load_recipe(path)
    with pytest.raises(ConfigError, match="unknown row 'b'"):
        rp.plan_runs(recipe, 'cpu', str(tmp_path / 'o'), rows=['b'])
    with pytest.raises(ConfigError, match="unknown variable 'x'"):
        rp.plan_runs(recipe, 'cpu', str(tmp_path / 'o'), var_pairs=['x=1'])
    with pytest.raises(ConfigError, match="no scale 'paper'"):
        rp.plan_runs(recipe, 'paper', str(tmp_path / 'o'))
    rc, _, err = run_main(['no_such_recipe', '--dry-run'], capsys)
    assert rc == 2 and err.startswith('error: unknown recipe') and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------- running
def test_resume_after_kill_then_skip_finished(tmp_path, fake, capsys):
    vals = '0.50,0.70,0.65,0.60'
    path = write_recipe(tmp_path, [{'name': 'r', 'script': fake, 'options': {'--vals': vals, '--die-at': 2}}],
                        seeds=(0,))
    out = str(tmp_path / 'out')
    folder = os.path.join(out, 'r', 'seed0')
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 1 and 'failed r/seed0 (exit -9' in text
    assert os.path.isfile(os.path.join(folder, 'checkpoint.json'))
    assert not os.path.exists(os.path.join(folder, 'result.json'))
    assert rp.run_state(rp.plan_runs(rp.load_recipe(path), 'cpu', out).runs[0])[0] == 'interrupted'
    # second invocation: --resume with the same --save-dir, finishes
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 0 and 'resuming r/seed0' in text
    calls = argv_log(folder)
    assert len(calls) == 2
    assert '--resume' not in calls[0]
    assert calls[1][-2:] == ['--resume', folder] and calls[1][calls[1].index('--save-dir') + 1] == folder
    with open(os.path.join(folder, 'result.json')) as f:
        res = json.load(f)
    assert res['best_val_top1'] == pytest.approx(0.70) and res['best_epoch'] == 2
    assert res['final_val_top1'] == pytest.approx(0.60) and res['final_epoch'] == 4 and res['epochs'] == 4
    assert res['attempts'] == 2 and res['train_time_s'] == pytest.approx(2.0)
    assert res['command'] == [fake, '--vals', vals, '--die-at', '2', '--seed', '0', '--save-dir', folder]
    with open(os.path.join(out, 'r', 'seed0.runner.json')) as f:
        ledger = json.load(f)
    assert [a['resume'] for a in ledger['attempts']] == [False, True]
    assert [a['returncode'] for a in ledger['attempts']] == [-9, 0]
    # third invocation: nothing runs, result.json is untouched
    before = (os.path.getmtime(os.path.join(folder, 'result.json')), read(os.path.join(folder, 'result.json')))
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 0 and 'starting' not in text and 'resuming' not in text
    assert len(argv_log(folder)) == 2
    assert (os.path.getmtime(os.path.join(folder, 'result.json')),
            read(os.path.join(folder, 'result.json'))) == before


def test_changed_command_is_refused(tmp_path, fake, capsys):
    path = write_recipe(tmp_path, [{'name': 'r', 'script': fake, 'options': {'--vals': '0.5,0.6'}}], seeds=(0,))
    out = str(tmp_path / 'out')
    assert run_main([path, '--out', out], capsys)[0] == 0
    result = os.path.join(out, 'r', 'seed0', 'result.json')
    before = read(result)
    path = write_recipe(tmp_path, [{'name': 'r', 'script': fake, 'options': {'--vals': '0.9,0.9'}}], seeds=(0,))
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 1 and 'refused r/seed0' in text and 'result.json was made by' in text
    assert read(result) == before and len(argv_log(os.path.dirname(result))) == 1


def test_foreign_folder_refused_and_kept(tmp_path, fake, capsys):
    path = write_recipe(tmp_path, [{'name': 'r', 'script': fake, 'options': {'--vals': '0.5'}}], seeds=(0, 1))
    out = str(tmp_path / 'out')
    stray = os.path.join(out, 'r', 'seed0', 'notes.txt')
    os.makedirs(os.path.dirname(stray))
    with open(stray, 'w') as f:
        f.write('mine')
    os.makedirs(os.path.join(out, 'r', 'seed1'))     # an empty folder is fine
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 1 and 'refused r/seed0' in text and 'move it away' in text
    assert read(stray) == 'mine' and sorted(os.listdir(os.path.dirname(stray))) == ['notes.txt']
    assert os.path.isfile(os.path.join(out, 'r', 'seed1', 'result.json'))


def test_failed_fresh_run_is_moved_aside_not_deleted(tmp_path, fake, capsys):
    path = write_recipe(tmp_path, [{'name': 'r', 'script': fake, 'options': {'--fail-early': True}},
                                   {'name': 'after', 'script': fake, 'options': {'--need': '{run:r}/best.params'}}],
                        seeds=(0,))
    out = str(tmp_path / 'out')
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 1 and 'failed r/seed0 (exit 2' in text and 'error: told to fail' in text
    assert 'blocked after/seed0' in text and not os.path.exists(os.path.join(out, 'after'))
    moved = os.path.join(out, 'r', 'seed0.failed-1')
    assert read(os.path.join(moved, 'train.log')) == 'started\n'
    assert not os.path.exists(os.path.join(out, 'r', 'seed0'))
    assert 'told to fail' in read(os.path.join(out, 'r', 'seed0.log'))


def test_dependency_gets_the_finished_run(tmp_path, fake, capsys):
    path = write_recipe(tmp_path, [
        {'name': 'teacher', 'script': fake, 'seeds': [0], 'options': {'--vals': '0.8'}},
        {'name': 'student', 'script': fake, 'options': {'--vals': '0.6', '--need': '{run:teacher@0}/best.params'}}],
        seeds=(0, 1))
    out = str(tmp_path / 'out')
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 0, text
    for k in (0, 1):
        assert os.path.isfile(os.path.join(out, 'student', 'seed%d' % k, 'result.json'))
    assert '[1/3 done]' in text and 'ETA' in text


def test_a_run_held_by_another_live_runner_is_skipped(tmp_path, fake, capsys, monkeypatch):
    path = write_recipe(tmp_path, [{'name': 'r', 'script': fake, 'options': {}}], seeds=(0, 1))
    out = tmp_path / 'out'
    (out / 'r' / 'seed0').mkdir(parents=True)
    (out / 'r' / 'seed0' / 'train.log').write_text('just started\n')    # no checkpoint yet
    (out / 'r' / '.seed0.lock').write_text('%d\n' % os.getppid())       # a live process trains r/seed0
    rc, text, _ = run_main([str(path), '--out', str(out)], capsys)
    assert rc == 1 and 'skipped r/seed0: another runner (pid %d) is training it' % os.getppid() in text
    assert 'refused' not in text and (out / 'r' / 'seed1' / 'result.json').exists()
    assert os.listdir(str(out / 'r' / 'seed0')) == ['train.log']
    (out / 'r' / 'seed0' / 'train.log').unlink()
    (out / 'r' / 'seed0').rmdir()
    assert 'r/seed0 (running elsewhere)' in text
    (out / 'r' / '.seed0.lock').write_text('999999999\n')              # a dead one is taken over
    assert run_main([str(path), '--out', str(out)], capsys)[0] == 0
    assert (out / 'r' / 'seed0' / 'result.json').exists() and not (out / 'r' / '.seed0.lock').exists()
    # the folder lock (prepare steps, report writes) held by a live runner: wait, then a one-line error
    monkeypatch.setattr(rp, 'LOCK_WAIT_S', 0.3)
    (out / '.reproduce.lock').write_text('%d\n' % os.getppid())
    rc, _, err = run_main([str(path), '--out', str(out), '--report-only'], capsys)
    assert rc == 2 and 'another reproduce run (pid %d) holds' % os.getppid() in err


def test_two_runners_share_one_output_folder(tmp_path, fake):
    """Two runners started together on one folder: every run is trained exactly once."""
    path = write_recipe(tmp_path, [{'name': 'a', 'script': fake, 'options': {'--vals': '0.5,0.6', '--sleep': 0.3}},
                                   {'name': 'b', 'script': fake, 'options': {'--vals': '0.4,0.7', '--sleep': 0.3}}],
                        seeds=(0, 1))
    out = tmp_path / 'out'
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'reproduce.py'), path, '--out', str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    texts = [p.communicate(timeout=120)[0] for p in procs]
    for key in ('a/seed0', 'a/seed1', 'b/seed0', 'b/seed1'):
        assert len(argv_log(str(out / key))) == 1, (key, texts)
        assert (out / key / 'result.json').exists()
    assert sum(l.startswith('finished ') for t in texts for l in t.splitlines()) == 4, texts
    report = read_json(str(out / 'results.json'))
    assert sorted(r['row'] for r in report['rows'] if r['n'] == 2) == ['a', 'b']


# ---------------------------------------------------------------------- results
def test_results_tables_match_numpy(tmp_path, fake, capsys):
    base_vals, step = '0.50,0.80,0.70', 0.013
    rows = [{'name': 'base', 'label': 'plain', 'script': fake,
             'options': {'--vals': base_vals, '--seed-step': step}},
            {'name': 'meth', 'label': 'method', 'script': fake, 'baseline': 'base',
             'options': {'--vals': '0.40,0.82,0.90,0.60', '--seed-step': -0.021, '--phase1': 2,
                         '--macs': '4000000,1000000'},
             'paper': {'value': 8.77, 'unit': 'error %', 'ref': 'Table 1', 'verified': False}}]
    path = write_recipe(tmp_path, rows, seeds=(0, 1, 2), extra_scale={'notes': ['a note'], 'estimate': 'tiny'})
    out = str(tmp_path / 'out')
    assert run_main([path, '--out', out], capsys)[0] == 0
    seeds = np.array([0, 1, 2])
    # best over the epochs: base peaks at epoch 2; meth counts only epochs > phase1 = 2 (0.90 at epoch 3)
    best_base = 0.80 + step * seeds
    best_meth = 0.90 - 0.021 * seeds
    final_meth = 0.60 - 0.021 * seeds
    with open(os.path.join(out, 'results.json')) as f:
        res = json.load(f)
    rows_by = {r['row']: r for r in res['rows']}
    assert rows_by['base']['n'] == 3
    assert rows_by['base']['best_mean'] == pytest.approx(best_base.mean())
    assert rows_by['base']['best_std'] == pytest.approx(best_base.std(ddof=1))
    assert rows_by['meth']['best_mean'] == pytest.approx(best_meth.mean())
    assert rows_by['meth']['best_std'] == pytest.approx(best_meth.std(ddof=1))
    assert rows_by['meth']['final_mean'] == pytest.approx(final_meth.mean())
    diff = best_meth.mean() - best_base.mean()
    se = np.sqrt(best_meth.var(ddof=1) / 3 + best_base.var(ddof=1) / 3)
    vb = rows_by['meth']['vs_baseline']
    assert vb['diff'] == pytest.approx(diff) and vb['se'] == pytest.approx(se)
    assert vb['within_noise'] == bool(abs(diff) < 2 * se)
    assert rows_by['meth']['macs_expected'] == pytest.approx(1e6) and rows_by['meth']['macs_baseline'] == 4e6
    runs = {r['run']: r for r in res['runs']}
    assert runs['meth/seed1']['result']['best_epoch'] == 3 and runs['meth/seed1']['result']['best_from_epoch'] == 3
    assert runs['meth/seed1']['result']['macs']['expected_reduction'] == pytest.approx(4.0)
    md = read(os.path.join(out, 'results.md'))
    cell = '%.2f +- %.2f' % (100 * best_meth.mean(), 100 * best_meth.std(ddof=1))
    line = next(l for l in md.splitlines() if l.startswith('| `meth`'))
    assert cell in line and '| 3 |' in line and '1 M (4.00x fewer)' in line
    assert 'vs `base`: %+.2f +- %.2f' % (100 * diff, 100 * se) in line
    assert '8.77 error % (top-1 91.23 %) [Table 1; unverified]' in line
    assert '- a note' in md and 'Estimated cost: tiny' in md
    # the exact command of each row (seed 0)
    folder = os.path.join(out, 'base', 'seed0')
    assert shlex.join(['python', fake, '--vals', base_vals, '--seed-step', str(step), '--seed', '0', '--save-dir',
                       folder]) in md
    png = os.path.join(out, 'results.png')
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    import matplotlib.image as mpimg
    assert mpimg.imread(png).ndim == 3
    # --report-only rebuilds the same tables from the finished runs
    os.remove(png)
    os.remove(os.path.join(out, 'results.md'))
    rc, text, _ = run_main([path, '--out', out, '--report-only'], capsys)
    assert rc == 0 and os.path.isfile(png) and 'meth' in text
    def table(text):
        return text[text.index('| row |'):text.index('## Runs')]
    assert table(read(os.path.join(out, 'results.md'))) == table(md)


def test_row_stats_and_compare_against_numpy():
    a, b = [0.71, 0.74, 0.69, 0.73], [0.70, 0.66]
    m, s, n = rp.row_stats(a)
    assert (m, s, n) == (pytest.approx(np.mean(a)), pytest.approx(np.std(a, ddof=1)), 4)
    assert rp.row_stats([0.5]) == (0.5, None, 1) and rp.row_stats([]) == (None, None, 0)
    diff, se, noise = rp.compare(rp.row_stats(a), rp.row_stats(b))
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert se == pytest.approx(np.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 2))
    assert noise == bool(abs(diff) < 2 * se)


def test_read_metrics_torn_last_line_and_repeated_epoch(tmp_path):
    p = tmp_path / 'metrics.jsonl'
    p.write_text('{"epoch": 1, "val_top1": 0.5}\n{"epoch": 2, "val_top1": 0.6}\n{"epoch": 2, "val_top1": 0.65}\n'
                 '{"epoch": 3, "val_to')
    hist = rp.read_metrics(str(p))
    assert [h['epoch'] for h in hist] == [1, 2] and hist[1]['val_top1'] == 0.65
    p.write_text('{"epoch": 1, "val_top1": 0.5}\nnot json\n{"epoch": 2, "val_top1": 0.6}\n')
    with pytest.raises(DataError, match='line 2 is not JSON'):
        rp.read_metrics(str(p))
    s = rp.summarize_metrics([{'epoch': 1, 'val_top1': 0.5, 'time': 1.0}, {'epoch': 2, 'time': 1.0},
                              {'epoch': 3, 'val_top1': 0.5, 'time': 2.0}])
    assert s['best_epoch'] == 1 and s['final_epoch'] == 3 and s['train_time_s'] == 4.0 and s['epochs'] == 3


# ---------------------------------------------------------------------- dry run
def test_dry_run_prints_one_command_per_run_and_writes_nothing(tmp_path, fake, capsys):
    path = write_recipe(tmp_path, [{'name': 'a', 'script': fake, 'options': {'--flag': True}},
                                   {'name': 'b', 'script': fake, 'seeds': [7], 'options': {'--vals': '0.1'}}])
    out = tmp_path / 'out'
    rc, text, _ = run_main([path, '--out', str(out), '--dry-run'], capsys)
    cmds = [l for l in text.splitlines() if l.startswith('python ')]
    assert rc == 0 and len(cmds) == 4
    assert shlex.split(cmds[-1]) == ['python', fake, '--vals', '0.1', '--seed', '7', '--save-dir',
                                     str(out / 'b' / 'seed7')]
    assert 'options not checked' in text and not out.exists()


def test_dry_run_catches_a_flag_the_trainer_rejects(tmp_path, capsys):
    path = write_recipe(tmp_path, [
        {'name': 'ok', 'script': 'train_cifar.py', 'options': {'--model': 'cifar_resnet20_v1', '--num-epochs': 1}},
        {'name': 'typo', 'script': 'train_cifar.py', 'options': {'--model': 'cifar_resnet20_v1', '--epochs': 1}},
        {'name': 'badtype', 'script': 'train_transfer.py', 'options': {'--max-iter': 'many'}},
        {'name': 'badmodel', 'script': 'train_cifar.py', 'options': {'--model': 'cifar_resnet21_v1'}},
        {'name': 'foreign', 'script': 'train_transfer.py', 'options': {'--reg': 'afd', '--alpha': 0.01}},
        {'name': 'badvalue', 'script': 'train_cifar.py', 'options': {'--val-interval': 0}}],
        seeds=(0,))
    rc, text, err = run_main([path, '--out', str(tmp_path / 'o'), '--dry-run'], capsys)
    assert rc == 2 and err.startswith('error: 5 run(s)')
    assert 'typo/seed0: train_cifar.py rejects the options: unrecognized arguments: --epochs 1' in err
    blocks = {}
    for line in text.splitlines():
        if line.startswith('# ') and line.endswith('(new)'):
            key = line[2:].split()[0]
            blocks[key] = []
        elif line.startswith('#   PROBLEM: '):
            blocks[key].append(line[len('#   PROBLEM: '):])
    assert blocks == {
        'ok/seed0': [],
        'typo/seed0': ['train_cifar.py rejects the options: unrecognized arguments: --epochs 1'],
        'badtype/seed0': ["train_transfer.py rejects the options: argument --max-iter: invalid int value: 'many'"],
        'badmodel/seed0': [blocks['badmodel/seed0'][0]],
        'foreign/seed0': [blocks['foreign/seed0'][0]],
        'badvalue/seed0': ["train_cifar.py rejects the options: --val-interval must be >= 1 "
                           "(epochs between evaluations), got 0"]}
    # the checks the trainer makes before reading data: an option the chosen method does not take
    assert blocks['foreign/seed0'][0].startswith('train_transfer.py rejects the options: --alpha: not an option '
                                                 'of --reg afd')
    assert blocks['badmodel/seed0'][0].startswith("unknown model 'cifar_resnet21_v1'; did you mean: cifar_resnet20_v1")


@pytest.mark.parametrize('name', rp.list_recipes())
def test_every_shipped_recipe_parses_at_every_scale(name, capsys):
    """The recipes' flags are a tested contract with the trainers' parsers."""
    recipe = rp.load_recipe(name)
    assert set(recipe['scales']) >= {'paper', 'cpu'}
    for scale in recipe['scales']:
        plan = rp.plan_runs(recipe, scale, os.path.join(REPO, 'runs', 'reproduce', 'test-%s-%s' % (name, scale)))
        rc, text, err = run_main([name, '--scale', scale, '--dry-run', '--out', plan.out], capsys)
        assert rc == 0, (scale, err, [l for l in text.splitlines() if 'PROBLEM' in l])
        assert len([l for l in text.splitlines() if l.startswith('python train_')]) == len(plan.runs)
        for run in plan.runs:
            assert run.script in rp.TRAINERS
            assert rp.check_run(run) == []
        depended = {d for run in plan.runs for d, _ in run.deps}
        transfer_seeds = [len(r.get('seeds', plan.scale['seeds'])) for r in plan.rows
                          if r['script'] == 'train_transfer.py']
        if scale == 'cpu':
            assert all(n >= 3 for n in transfer_seeds)
            # from-scratch rows: 2 seeds at least, except a pinned one others build on (a teacher),
            # through {run:ROW@K} or through the published network a variable defaults to
            published = any(str(v.get('default', '')).startswith('params/')
                            for v in plan.scale.get('vars', {}).values())
            assert all(len(plan.scale['seeds']) >= 2 if 'seeds' not in r else (r['name'] in depended or published)
                       for r in plan.rows if r['script'] != 'train_transfer.py')
            assert plan.scale.get('estimate')
        for r in plan.rows:
            if scale == 'paper' and r.get('paper') and r['paper']['value'] is not None:
                assert r['paper'].get('ref')


def test_shipped_recipes_list(capsys):
    rc, text, _ = run_main(['--list'], capsys)
    assert rc == 0
    for name in ('afds', 'afa', 'attention_transfer', 'aff', 'nonbinary'):
        assert name in rp.list_recipes() and name in text
    rc, text, _ = run_main(['afa', '--list'], capsys)
    assert rc == 0 and '--var cifar_transfer=' in text and 'afa_ast' in text


# ---------------------------------------------------------------------- with the real trainer
def test_real_train_cifar_run_and_result(tmp_path, capsys):
    """One real train_cifar.py run on the bundled sample (a few iterations): the runner reads
    the real metrics.jsonl and leaves the trainer's own files alone."""
    sample = os.path.join(REPO, 'data', 'cifar10_sample')
    if not os.path.isfile(os.path.join(sample, 'val.rec')):
        pytest.skip('bundled sample missing')
    path = write_recipe(tmp_path, [{'name': 'r20', 'script': 'train_cifar.py', 'options': {
        '--model': 'cifar_resnet20_v1', '--data-dir': sample, '--num-epochs': 1, '--max-iter': 2,
        '--batch-size': 16, '--log-interval': 1, '-j': 1}}], seeds=(0,))
    out = str(tmp_path / 'out')
    rc, text, _ = run_main([path, '--out', out], capsys)
    folder = os.path.join(out, 'r20', 'seed0')
    assert rc == 0, read(folder + '.log')[-2000:]
    res = read_json(os.path.join(folder, 'result.json'))
    hist = [json.loads(l) for l in read(os.path.join(folder, 'metrics.jsonl')).splitlines() if l.strip()]
    assert res['best_val_top1'] == pytest.approx(hist[-1]['val_top1']) and res['best_epoch'] == 1
    assert os.path.isfile(os.path.join(folder, 'checkpoint.json'))
    assert res['command'][0] == 'train_cifar.py' and res['wall_time_s'] > 0


def test_prepare_requires_and_row_selection(tmp_path, fake, capsys):
    make = tmp_path / 'make.py'
    make.write_text('import sys, os\nout = sys.argv[sys.argv.index("--out") + 1]\nos.makedirs(os.path.dirname(out), '
                    'exist_ok=True)\nopen(out, "a").write("made\\n")\n')
    rows = [{'name': 'a', 'script': fake, 'options': {'--vals': '0.5', '--need': '{out}/made.txt'}},
            {'name': 'b', 'script': fake, 'options': {'--vals': '0.6'}}]
    extra = {'prepare': [{'name': 'make', 'script': str(make), 'options': {'--out': '{out}/made.txt'},
                          'creates': ['{out}/made.txt'], 'rows': ['a']},
                         {'name': 'make_b', 'script': str(make), 'options': {'--out': '{out}/b.txt'},
                          'creates': ['{out}/b.txt'], 'rows': ['b']}],
             'requires': [{'path': str(tmp_path / 'absent.params'), 'help': 'train it first', 'rows': ['b']}]}
    path = write_recipe(tmp_path, rows, seeds=(0,), extra_scale=extra)
    out = str(tmp_path / 'out')
    rc, text, _ = run_main([path, '--out', out, '--dry-run'], capsys)
    assert rc == 0 and '# prepare make (missing: %s/made.txt)' % out in text and 'train it first' in text
    rc, text, _ = run_main([path, '--out', out], capsys)
    assert rc == 1
    assert 'blocked b/seed0: needs %s -- train it first' % (tmp_path / 'absent.params') in text
    assert 'prepare make_b: skipped' in text and not os.path.exists(os.path.join(out, 'b.txt'))
    assert read(os.path.join(out, 'made.txt')) == 'made\n'
    assert os.path.isfile(os.path.join(out, 'a', 'seed0', 'result.json'))
    (tmp_path / 'absent.params').write_text('now here')
    rc, text, _ = run_main([path, '--out', out, '--rows', 'b', '--seeds', '1'], capsys)
    assert rc == 0, text
    assert read(os.path.join(out, 'made.txt')) == 'made\n'          # not made again
    assert os.path.isfile(os.path.join(out, 'b', 'seed1', 'result.json'))
    # the tables cover every row and the scale's seeds as well as the ones given
    res = read_json(os.path.join(out, 'results.json'))
    assert [r['row'] for r in res['rows']] == ['a', 'b']
    assert sorted((r['run'], r['state']) for r in res['runs']) == [
        ('a/seed0', 'finished'), ('a/seed1', 'new'), ('b/seed0', 'new'), ('b/seed1', 'finished')]


def test_progress_lines_before_the_first_evaluation_show_no_best(tmp_path, fake):
    """The trainer starts its best at -1; the heartbeat shows '-' until an epoch is evaluated."""
    path = write_recipe(tmp_path, [{'name': 'a', 'script': fake,
                                    'options': {'--vals': '0.5,0.6,0.7', '--unevaluated': 2, '--sleep': 0.4}}],
                        seeds=(0,))
    lines = []
    plan = rp.plan_runs(rp.load_recipe(path), 'cpu', out=str(tmp_path / 'o'))
    rp.execute_plan(plan, echo=lines.append, heartbeat=0.0, poll=0.05)
    beats = [l.strip() for l in lines if ' epoch ' in l and l.startswith('    ')]
    assert beats and beats[0].startswith('a/seed0 epoch 1: val top-1 - (best -)'), beats
    assert any(b.startswith('a/seed0 epoch 3: val top-1 70.00 (best 70.00)') for b in beats), beats
