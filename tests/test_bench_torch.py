"""bench/bench_torch.py without PyTorch: the skip when no separate PyTorch environment is
given, the suite's handling of a skipped section, the ratio rows from known rates, and the
whole orchestration with a stand-in "PyTorch Python" (a shell script that answers like
bench/torch_side.py) and a real one-step MXNet worker. No timing is asserted."""
import json
import os
import stat
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import bench_torch, run_all  # noqa: E402


def test_skipped_without_a_torch_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(bench_torch.ENV_VAR, raising=False)
    out = tmp_path / 'rows.json'
    assert bench_torch.main(['--json', str(out)]) == 0
    assert 'skipped' in json.loads(out.read_text())
    assert 'skipped' in capsys.readouterr().out
    assert bench_torch.main(['--torch-python', str(tmp_path / 'nope'), '--json', str(out)]) == 0
    assert 'not an executable' in json.loads(out.read_text())['skipped']


def test_suite_lists_a_skipped_section_with_its_reason(tmp_path):
    script = tmp_path / 'bench_skip.py'
    script.write_text(textwrap.dedent('''
        import argparse, json
        p = argparse.ArgumentParser(); p.add_argument('--json'); a = p.parse_args()
        json.dump({"skipped": "no PyTorch environment here"}, open(a.json, "w"))
    '''))
    status, rows = run_all.run_section('torch', str(script), [], 60, None)
    assert status['status'] == 'skipped' and status['reason'] == 'no PyTorch environment here' and rows == []


def test_ratio_rows_from_known_rates():
    samples = {('mxnet', 'm', 'train', 'imperative'): [80.0, 100.0, 90.0],
               ('mxnet', 'm', 'train', 'hybrid'): [70.0, 75.0, 72.0],
               ('pytorch', 'm', 'train', 'nchw'): [150.0, 140.0, 160.0],
               ('pytorch', 'm', 'train', 'channels_last'): [200.0, 220.0, 180.0]}
    rows = {r['name']: r for r in bench_torch.summarise(samples)}
    # medians: imperative 90, hybrid 72, nchw 150, channels_last 200; best MXNet = 90
    assert rows['mxnet m train imperative img/s']['value'] == 90.0
    assert rows['pytorch m train nchw img/s']['value'] == 150.0
    assert abs(rows['MXNet/PyTorch m train']['value'] - 90.0 / 150.0) < 1e-12
    assert 'imperative' in rows['MXNet/PyTorch m train']['note']
    assert abs(rows['MXNet/PyTorch-channels_last m train']['value'] - 90.0 / 200.0) < 1e-12


def test_orchestration_with_a_stand_in_torch_python(tmp_path):
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo 9.9.9; exit 0; fi\n'
                    'echo \'{"framework": "pytorch", "version": "9.9.9", "threads": 1, "images_per_sec": 100.0}\'\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / 'rows.json'
    assert bench_torch.main(['--torch-python', str(fake), '--models', 'cifar_resnet56_v1', '--what', 'infer',
                             '--rounds', '1', '--iters', '1', '--warmup', '0', '--batch', '2',
                             '--json', str(out)]) == 0
    rows = {r['name']: r for r in json.loads(out.read_text())}
    mx_rates = [rows['mxnet cifar_resnet56_v1 infer %s img/s' % m]['value'] for m in ('imperative', 'hybrid')]
    assert all(v > 0 for v in mx_rates)
    assert rows['pytorch cifar_resnet56_v1 infer nchw img/s']['value'] == 100.0
    assert abs(rows['MXNet/PyTorch cifar_resnet56_v1 infer']['value'] - max(mx_rates) / 100.0) < 1e-9
