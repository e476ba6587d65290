#!/usr/bin/env python
"""The benchmark suite: every section in its own process, one table, one chart.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--update-readme]     # `make bench`

Each section is a ``bench/bench_*.py`` run as a subprocess (so bfloat16 AMP, kvstore or
oneDNN state never leaks between sections) with ``--json PATH``; it writes rows
``{"section", "name", "value", "unit", "note"}`` (see ``bench/common.py``). The suite collects
them into ``bench/results/results.json`` (rows, per-section status, machine, command),
``results.md`` (a Markdown table) and ``results.png`` (the ratio rows as a bar chart);
each section's own printout goes to ``bench/out/<name>.md``. A section that fails, times out
or does not support ``--json`` is reported as failed/skipped with the reason, and the other
sections still run; the exit status is 1 if any section failed. A section may instead write
``{"skipped": "why"}`` when it cannot run on this machine (the ``torch`` section without a
separate PyTorch environment); it is listed as skipped with that reason. ``--update-readme [FILE]``
replaces the block between ``<!-- bench-results:start -->`` and ``<!-- bench-results:end -->``
in docs/benchmarks.md (or FILE) with the table and the command that produced it.

``--quick`` took 3.5 minutes on the 2 shared cores without the AFF section (plus about 3
minutes once, when bench_precision.py trains its cached float32 checkpoint; bench_aff.py
--quick adds its own few minutes, bench_aff_ratio.py --quick about 4 minutes on one thread);
the full run takes about 10-15 minutes, plus 10-13 for the aff-ratio section.
Speed is measured, never asserted: numbers from a shared machine vary by +-15 %; compare
the ratios, which are measured side by side within one section.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
LOGS = os.path.join(HERE, 'out')
README = os.path.join(ROOT, 'docs', 'benchmarks.md')   # the page that holds the suite's table
START, END = '<!-- bench-results:start -->', '<!-- bench-results:end -->'
sys.path.insert(0, ROOT)
from bench.common import ROW_KEYS, cpu_name, row  # noqa: E402  (the row schema the sections write)

# name, script (in bench/ unless absolute), quick arguments, full arguments, what it measures
SECTIONS = [
    ('precision', 'bench_precision.py', ['--quick'], [], 'bf16 AMP vs fp32: train/infer img/s, val accuracy, decision'),
    ('aff', 'bench_aff.py', ['--quick'], ['--rounds', '2'], 'AFF vs reference-style vs plain add, block, modes, deployment'),
    ('aff-ratio', 'bench_aff_ratio.py', ['--quick'], ['--rounds', '2', '--iters', '3', '--warmup', '1'],
     'AFF/add time per network, training and inference, best mode each, each configuration its own '
     'process (goal <= 1.15)'),
    ('engine', 'bench_engine.py', ['--iters', '5', '--rounds', '2'], [], 'engine vs minimal Gluon loop'),
    ('loader', 'bench_loader.py', ['--seconds', '3', '--skip-index', '--imagenet-train-batch', '4'],
     ['--skip-index', '--seconds', '5'], 'loader img/s vs training img/s per preset'),
    ('distill', 'bench_distill.py', ['--batch-size', '64', '--iters', '2', '--rounds', '3'],
     ['--iters', '1', '--rounds', '21'],     # step-by-step pairing: the steadiest ratios
     'distillation step vs student step + teacher inference'),
    ('transfer', 'bench_transfer.py', ['--quick', '--steps', '3'], ['--steps', '3'],
     'DELTA / L2-SP step vs plain fine-tuning'),
    ('gflops', 'bench_gflops.py', ['--quick'], [], 'achieved GFLOP/s vs matmul peak'),
    ('afds', 'bench_afds.py', ['--quick', '--fused'], ['--fused'],
     'pruned AFS ResNet-50 (tools/export.py --prune, fused graph): img/s vs removed MACs'),
    ('afs-train', 'bench_afs_train.py', ['--quick'], [],
     'AFS gates in training: gated vs plain CIFAR ResNet-20 step, the gate ops side by side'),
    ('dist', 'bench_dist.py', ['--steps', '10', '--warmup', '3'], [], 'dist_sync 1 vs 2 local workers'),
    ('torch', 'bench_torch.py', ['--quick'], ['--bf16', '--rounds', '2', '--iters', '5', '--warmup', '2'],
     'MXNet vs PyTorch from a separate environment (skipped without one), side by side'),
]


def _check_rows(rows, section):
    if not isinstance(rows, list):
        raise ValueError('expected a JSON list of rows, got %s' % type(rows).__name__)
    out = []
    for r in rows:
        if not isinstance(r, dict) or any(k not in r for k in ROW_KEYS[:4]):
            raise ValueError('row %r lacks one of %s' % (r, ', '.join(ROW_KEYS)))
        out.append(row(r['section'] or section, str(r['name']), r['value'], str(r['unit']), str(r.get('note', ''))))
    return out


def run_section(name, script, args, timeout, log_dir):
    """Run one section; returns (status dict, rows). Never raises for a failing section."""
    path = script if os.path.isabs(script) else os.path.join(HERE, script)
    status = {'section': name, 'command': ' '.join(['python', os.path.relpath(path, ROOT)] + list(args)),
              'status': 'ok', 'seconds': 0.0, 'reason': ''}
    if not os.path.isfile(path):
        status.update(status='skipped', reason='%s not found' % path)
        return status, []
    helptext = subprocess.run([sys.executable, path, '--help'], capture_output=True, text=True, timeout=120)
    if '--json' not in helptext.stdout:
        status.update(status='skipped', reason='%s has no --json option (cannot report suite rows)'
                      % os.path.basename(path))
        return status, []
    fd, out = tempfile.mkstemp(suffix='.json')
    os.close(fd)
    os.remove(out)
    t = time.time()
    try:
        res = subprocess.run([sys.executable, path] + list(args) + ['--json', out], capture_output=True,
                             text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        status.update(status='failed', seconds=time.time() - t, reason='timed out after %d s' % timeout)
        _log(log_dir, name, (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or ''))
        return status, []
    status['seconds'] = time.time() - t
    _log(log_dir, name, res.stdout + ('\n```\n%s\n```\n' % res.stderr[-3000:] if res.returncode else ''))
    try:
        if res.returncode:
            last = [l for l in res.stderr.strip().splitlines() if l.strip()]
            raise ValueError('exit %d: %s' % (res.returncode, last[-1] if last else 'no message'))
        if not os.path.isfile(out):
            raise ValueError('wrote no rows to --json')
        with open(out) as f:
            data = json.load(f)
        if isinstance(data, dict) and 'skipped' in data:
            # a section that cannot run here and says why (e.g. no PyTorch environment)
            status.update(status='skipped', reason=str(data['skipped'])[:300])
            return status, []
        rows = _check_rows(data, name)
    except ValueError as err:
        status.update(status='failed', reason=str(err)[:300])
        return status, []
    finally:
        if os.path.exists(out):
            os.remove(out)
    return status, rows


def _log(log_dir, name, text):
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, name + '.md'), 'w') as f:
            f.write(text)


def run_suite(sections, quick=True, timeout=900, log_dir=LOGS, echo=print):
    statuses, rows = [], []
    for name, script, qargs, fargs, _ in sections:
        echo('== %s' % name)
        st, r = run_section(name, script, qargs if quick else fargs, timeout, log_dir)
        echo('   %s in %.0f s%s, %d rows' % (st['status'], st['seconds'], (': ' + st['reason']) if st['reason'] else '',
                                             len(r)))
        statuses.append(st)
        rows.extend(r)
    return statuses, rows


def fmt_value(v, unit):
    if unit == 'bool':
        return 'yes' if v else 'no'
    if unit == 'bytes':
        return '{:,.0f}'.format(v)
    a = abs(v)
    return '%.3g' % v if a < 10 else ('%.1f' % v if a < 1000 else '%.0f' % v)


def markdown(result):
    lines = ['Benchmark run %s on %s (%s), mode %s: `%s`' % (
        result['date'], result['machine']['cpu'], '%d logical cores' % result['machine']['cores'],
        result['mode'], result['command']), '',
        '| section | measurement | value | unit | note |', '|---|---|---|---|---|']
    for r in result['rows']:
        lines.append('| %s | %s | %s | %s | %s |' % (r['section'], r['name'], fmt_value(r['value'], r['unit']),
                                                    r['unit'], r['note'].replace('|', '/')))
    bad = [s for s in result['sections'] if s['status'] != 'ok']
    if bad:
        lines += ['', 'Not measured: ' + '; '.join('%s %s (%s)' % (s['section'], s['status'], s['reason'])
                                                   for s in bad)]
    return '\n'.join(lines) + '\n'


def write_png(rows, path):
    """Bar chart of the ratio rows (unit ``x``, each measured side by side in its section),
    on a log scale around 1."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ratios = [r for r in rows if r['unit'] == 'x']
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.35 * max(len(ratios), 1)))
    if ratios:
        labels = ['%s: %s' % (r['section'], r['name']) for r in ratios]
        vals = [r['value'] for r in ratios]
        # log scale, bars from 1: faster/larger to the right, slower to the left
        vals = [max(v, 1e-3) for v in vals]
        ax.barh(range(len(vals)), [v - 1 for v in vals], left=1,
                color=['#4c72b0' if v >= 1 else '#dd8452' for v in vals])
        ax.set_xscale('log')
        ax.set_yticks(range(len(vals)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color='k', lw=0.8)
        for i, v in enumerate(vals):
            ax.text(v, i, ' %.2f' % v, va='center', fontsize=7)
    else:
        ax.text(0.5, 0.5, 'no ratio rows', ha='center', va='center')
    ax.set_xlabel('ratio (measured side by side; log scale, 1 = parity)')
    ax.set_title('gluon_transfer benchmark ratios', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(readme, table_md):
    """Replace the text between the START and END markers of ``readme`` with ``table_md``."""
    with open(readme) as f:
        text = f.read()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise SystemExit('error: %s has no %s ... %s block to update' % (readme, START, END))
    new = text[:i + len(START)] + '\n' + table_md.rstrip('\n') + '\n' + text[j:]
    with open(readme, 'w') as f:
        f.write(new)


def write_results(result, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(os.path.join(out_dir, 'results.md'), 'w') as f:
        f.write(md)
    write_png(result['rows'], os.path.join(out_dir, 'results.png'))
    return md


def main(argv=None, sections=SECTIONS):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='short runs (about 3-5 minutes in all)')
    ap.add_argument('--only', nargs='*', help='section names: %s' % ', '.join(s[0] for s in sections))
    ap.add_argument('--timeout', type=int, default=900, help='seconds per section before it is stopped')
    ap.add_argument('--out', default=RESULTS, help='where results.{md,json,png} go (default bench/results)')
    ap.add_argument('--logs', default=LOGS, help="where each section's printout goes (default bench/out)")
    ap.add_argument('--update-readme', nargs='?', const=README, default=None, metavar='README',
                    help='replace the marked results block of docs/benchmarks.md (or README) with the new table')
    args = ap.parse_args(argv)
    known = [s[0] for s in sections]
    for name in args.only or []:
        if name not in known:
            sys.exit('error: unknown section %r; valid: %s' % (name, ', '.join(known)))
    chosen = [s for s in sections if not args.only or s[0] in args.only]
    command = 'python bench/run_all.py' + ''.join(' ' + a for a in (argv if argv is not None else sys.argv[1:]))
    statuses, rows = run_suite(chosen, quick=args.quick, timeout=args.timeout, log_dir=args.logs)
    result = {'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), 'command': command,
              'mode': 'quick' if args.quick else 'full',
              'machine': {'cpu': cpu_name(), 'cores': os.cpu_count() or 0,
                          'OPENBLAS_CORETYPE': os.environ.get('OPENBLAS_CORETYPE', '')},
              'sections': statuses, 'rows': rows}
    md = write_results(result, args.out)
    print(md)
    print('wrote %s/results.{md,json,png}' % args.out)
    if args.update_readme:
        update_readme(args.update_readme, md)
        print('updated %s' % args.update_readme)
    return 1 if any(s['status'] == 'failed' for s in statuses) else 0


if __name__ == '__main__':
    sys.exit(main())
