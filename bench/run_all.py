#!/usr/bin/env python
"""Run every benchmark in bench/ one after another and collect their Markdown output.

    python bench/run_all.py [--only NAME ...] [--full]      # `make bench`

Each benchmark runs in its own process (so bfloat16 AMP or kvstore state never leaks
between them), in quick mode unless ``--full``; its stdout goes to ``bench/out/<name>.md``
and everything is concatenated into ``bench/out/summary.md`` with the machine facts
(CPU, cores, ``OPENBLAS_CORETYPE``) on top. Speed is measured, never asserted: the
tables are what ``bench/README.md`` quotes.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'out')

# name -> (script, quick arguments, full arguments)
BENCHES = [
    ('engine', 'bench_engine.py', ['--iters', '10', '--rounds', '2', '--bf16'], ['--bf16']),
    ('loader', 'bench_loader.py', ['--seconds', '4'], []),
    ('transfer_data', 'bench_transfer_data.py', ['--seconds', '4'], []),
    ('aff', 'bench_aff.py', ['--quick'], []),
    ('dist', 'bench_dist.py', [], []),
]


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--only', nargs='*', help='benchmark names: %s' % ', '.join(b[0] for b in BENCHES))
    ap.add_argument('--full', action='store_true', help='full-length runs instead of quick mode')
    args = ap.parse_args()
    known = {b[0] for b in BENCHES}
    for name in args.only or []:
        if name not in known:
            sys.exit('error: unknown benchmark %r; valid: %s' % (name, ', '.join(sorted(known))))
    os.makedirs(OUT, exist_ok=True)
    header = ['# Benchmark run %s' % datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), '',
              '- CPU: %s, %d logical cores' % (cpu_name(), os.cpu_count() or 0),
              '- OPENBLAS_CORETYPE: %s' % os.environ.get('OPENBLAS_CORETYPE', '(unset)'),
              '- mode: %s' % ('full' if args.full else 'quick'), '']
    sections, failed = [], []
    for name, script, quick, full in BENCHES:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, os.path.join(HERE, script)] + (full if args.full else quick)
        print('== %s: %s' % (name, ' '.join(cmd[1:])), flush=True)
        t = time.time()
        res = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.time() - t
        body = res.stdout if res.returncode == 0 else res.stdout + '\n```\n' + res.stderr[-3000:] + '\n```\n'
        with open(os.path.join(OUT, name + '.md'), 'w') as f:
            f.write(body)
        print(body, flush=True)
        status = 'ok' if res.returncode == 0 else 'FAILED (exit %d)' % res.returncode
        if res.returncode:
            failed.append(name)
        sections.append('## %s (`%s`, %.0f s, %s)\n\n%s' % (name, ' '.join(['python', 'bench/' + script] + cmd[2:]),
                                                           dt, status, body))
    with open(os.path.join(OUT, 'summary.md'), 'w') as f:
        f.write('\n'.join(header) + '\n' + '\n'.join(sections))
    print('wrote %s' % os.path.join(OUT, 'summary.md'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
