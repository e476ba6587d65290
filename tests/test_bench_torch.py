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
    # 0.6 < 0.8: the training goal is missed; a faster MXNet (130 / 150 = 0.867) meets it
    assert rows['MXNet/PyTorch m train']['note'].startswith('goal >= 0.80: missed (0.600)')
    samples[('mxnet', 'm', 'train', 'hybrid')] = [130.0, 130.0, 130.0]
    rows = {r['name']: r for r in bench_torch.summarise(samples)}
    assert rows['MXNet/PyTorch m train']['note'].startswith('goal >= 0.80: met (0.867)')


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


def test_torch_profile_categories_match_mxnet_names():
    """torch_side.py sorts aten/autograd events into profile_ops.py's category names."""
    from bench import torch_side
    from bench.profile_ops import CATEGORIES
    want = {'aten::mkldnn_convolution': 'convolution', 'aten::convolution_backward': 'convolution',
            'aten::addmm': 'convolution', 'aten::native_batch_norm': 'BatchNorm',
            'aten::native_batch_norm_backward': 'BatchNorm', 'aten::relu_': 'activation / elementwise',
            'aten::clamp_min_': 'activation / elementwise',
            'aten::threshold_backward': 'activation / elementwise', 'aten::add_': 'activation / elementwise',
            'aten::_foreach_add_': 'optimizer update', 'Optimizer.step#SGD.step': 'optimizer update',
            'aten::adaptive_avg_pool2d': 'pooling / reductions', 'aten::mean': 'pooling / reductions',
            'aten::_log_softmax': 'loss / softmax', 'aten::nll_loss_forward': 'loss / softmax',
            'aten::copy_': 'reorders / copies', 'aten::view': 'reorders / copies',
            'autograd::engine::evaluate_function: ConvolutionBackward0': 'engine bookkeeping',
            'aten::empty': 'other'}
    assert {k: torch_side.category(k) for k in want} == want
    assert set(want.values()) - {'other'} <= {c for c, _ in CATEGORIES}


def test_profile_side_by_side_with_a_stand_in_torch_python(tmp_path, capsys):
    """profile_ops.py --torch-python: both frameworks' categories in one table; the PyTorch
    numbers are the stand-in's, so its rows and differences are checked against them."""
    from bench import profile_ops
    fake = tmp_path / 'python'
    answer = {'framework': 'pytorch', 'version': '9.9.9', 'threads': 1, 'wall_ms': 50.0,
              'operators': {'aten::mkldnn_convolution': [30.0, 3], 'aten::native_batch_norm': [10.0, 3]},
              'categories': {'convolution': [30.0, 3], 'BatchNorm': [10.0, 3]}}
    fake.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo 9.9.9; exit 0; fi\necho \'%s\'\n' % json.dumps(answer))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / 'prof.json'
    assert profile_ops.main(['--model', 'cifar_resnet20_v1', '--batch', '2', '--steps', '1', '--warmup', '0',
                             '--torch-python', str(fake), '--json', str(out), '--top', '0']) == 0
    text = capsys.readouterr().out
    rec = json.loads(out.read_text())
    conv = rec['categories']['convolution'][0]
    line = [l for l in text.splitlines() if l.startswith('| convolution |')][-1]
    assert line == '| convolution | %.1f | 30.0 | %+.1f |' % (conv, conv - 30.0)
    total = sum(v[0] for v in rec['operators'].values())
    assert '| all operators | %.1f | 40.0 | %+.1f |' % (total, total - 40.0) in text
    assert '| not in operators | %.1f | 10.0 |' % (rec['wall_ms'] - total) in text
    assert rec['pytorch']['version'] == '9.9.9'


def test_profile_side_by_side_refuses_networks_pytorch_lacks(tmp_path):
    import pytest
    from bench import profile_ops
    with pytest.raises(SystemExit, match='cifar_resnet<6n\\+2>_v1 and resnet50_v1b, not .aff32'):
        profile_ops.main(['--model', 'aff32', '--torch-python', str(tmp_path / 'nope')])
