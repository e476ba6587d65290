"""The benchmark suite's plumbing (bench/run_all.py) with fake, instant sections: row
collection, a failing / row-less / --json-less section reported without stopping the run,
the Markdown table, the PNG chart and the README block replacement. No timing is asserted."""
import json
import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import run_all  # noqa: E402
from bench.bench_precision import decide  # noqa: E402

GOOD = '''
import argparse, json
p = argparse.ArgumentParser()
p.add_argument('--json')
p.add_argument('--scale', type=float, default=1.0)
a = p.parse_args()
rows = [{"section": "fake", "name": "a img/s", "value": 100.0 * a.scale, "unit": "img/s", "note": "batch 2"},
        {"section": "fake", "name": "b / a", "value": 1.25, "unit": "x", "note": "side by side"},
        {"section": "fake", "name": "comm", "value": 123456, "unit": "bytes", "note": "x|y"}]
json.dump(rows, open(a.json, "w"))
print("| table printed by the fake |")
'''
CRASH = '''
import argparse
p = argparse.ArgumentParser(); p.add_argument('--json'); p.parse_args()
raise RuntimeError("fake section exploded")
'''
NOJSON = '''
import argparse
p = argparse.ArgumentParser(); p.add_argument('--quick', action='store_true'); p.parse_args()
print("old-style section")
'''
NOROWS = '''
import argparse
p = argparse.ArgumentParser(); p.add_argument('--json'); p.parse_args()
'''


@pytest.fixture
def fakes(tmp_path):
    paths = {}
    for name, body in (('good', GOOD), ('crash', CRASH), ('nojson', NOJSON), ('norows', NOROWS)):
        p = tmp_path / ('bench_%s.py' % name)
        p.write_text(textwrap.dedent(body))
        paths[name] = str(p)
    return paths


def test_suite_collects_rows_and_survives_bad_sections(tmp_path, fakes, capsys):
    sections = [('good', fakes['good'], ['--scale', '0.5'], ['--scale', '2'], ''),
                ('crash', fakes['crash'], [], [], ''),
                ('nojson', fakes['nojson'], [], [], ''),
                ('norows', fakes['norows'], [], [], ''),
                ('missing', str(tmp_path / 'nope.py'), [], [], '')]
    readme = tmp_path / 'README.md'
    readme.write_text('# Title\n\nintro\n\n%s\nold table\n%s\n\ntail\n' % (run_all.START, run_all.END))
    out = tmp_path / 'results'
    rc = run_all.main(['--quick', '--out', str(out), '--logs', str(tmp_path / 'logs'),
                       '--update-readme', str(readme)], sections=sections)
    assert rc == 1                                   # a section failed, but the run finished
    result = json.loads((out / 'results.json').read_text())
    assert [r['value'] for r in result['rows']] == [50.0, 1.25, 123456.0]     # quick args were used
    assert {r['section'] for r in result['rows']} == {'fake'}
    st = {s['section']: s for s in result['sections']}
    assert st['good']['status'] == 'ok'
    assert st['crash']['status'] == 'failed' and 'fake section exploded' in st['crash']['reason']
    assert st['nojson']['status'] == 'skipped' and 'no --json' in st['nojson']['reason']
    assert st['norows']['status'] == 'failed' and 'no rows' in st['norows']['reason']
    assert st['missing']['status'] == 'skipped'
    assert (tmp_path / 'logs' / 'good.md').read_text().startswith('| table printed by the fake |')

    md = (out / 'results.md').read_text()
    assert '| fake | a img/s | 50.0 | img/s | batch 2 |' in md
    assert '| fake | b / a | 1.25 | x | side by side |' in md
    assert '| fake | comm | 123,456 | bytes | x/y |' in md           # '|' in a note cannot break the table
    assert 'crash failed' in md and 'nojson skipped' in md
    assert 'python bench/run_all.py --quick' in md

    png = (out / 'results.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 1000

    text = readme.read_text()
    assert 'old table' not in text
    assert text.startswith('# Title\n\nintro\n\n' + run_all.START + '\n')
    assert text.endswith(run_all.END + '\n\ntail\n')
    assert '| fake | a img/s | 50.0 |' in text


def test_full_mode_arguments_and_only(tmp_path, fakes):
    sections = [('good', fakes['good'], ['--scale', '0.5'], ['--scale', '2'], ''),
                ('crash', fakes['crash'], [], [], '')]
    out = tmp_path / 'r'
    rc = run_all.main(['--only', 'good', '--out', str(out), '--logs', str(tmp_path / 'l')], sections=sections)
    assert rc == 0
    result = json.loads((out / 'results.json').read_text())
    assert result['mode'] == 'full' and [s['section'] for s in result['sections']] == ['good']
    assert result['rows'][0]['value'] == 200.0


def test_bad_input_errors(tmp_path, fakes):
    sections = [('good', fakes['good'], [], [], '')]
    with pytest.raises(SystemExit, match="unknown section 'nope'; valid: good"):
        run_all.main(['--only', 'nope'], sections=sections)
    readme = tmp_path / 'R.md'
    readme.write_text('no markers here\n')
    with pytest.raises(SystemExit, match='no <!-- bench-results:start -->'):
        run_all.update_readme(str(readme), 'table')
    with pytest.raises(ValueError, match='lacks one of'):
        run_all._check_rows([{'name': 'x'}], 's')


def test_real_sections_all_take_json():
    """Every section the suite runs by default is a bench script that exists and declares
    ``--json`` through bench.common.add_json_arg (a section without it is skipped by the suite)."""
    here = os.path.dirname(run_all.__file__)
    for name, script, quick, full, what in run_all.SECTIONS:
        path = os.path.join(here, script)
        assert os.path.isfile(path), script
        with open(path) as f:
            assert 'add_json_arg(' in f.read(), script
        assert what


def test_precision_decision_rule():
    # the rule: bf16 only if faster AND |accuracy diff| < 0.2 points
    assert decide(100.0, 140.0, -0.04)[0] is True
    assert decide(100.0, 140.0, 0.2)[0] is False       # not strictly under 0.2
    assert decide(100.0, 140.0, -0.25)[0] is False
    ok, why = decide(100.0, 90.0, 0.0)
    assert ok is False and 'not faster (0.90x)' in why
