"""bench/bench_aff_ratio.py without timing anything real: the rows (medians, per-mode and
best-mode AFF/add time ratios, their per-round spread, the goal verdict) from known rates,
the process-per-configuration runner shared with bench_torch.py (bench.common) driven by a
stand-in command, and the option errors. No speed is asserted."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import bench_aff_ratio, common, run_all  # noqa: E402


def test_rows_from_known_rates():
    s = {('aff32', 'train', 'aff', 'imperative'): [10.0, 12.0, 11.0],   # median 11
         ('aff32', 'train', 'aff', 'hybrid'): [9.0, 10.0, 9.5],         # median 9.5
         ('aff32', 'train', 'add', 'imperative'): [15.0, 13.0, 14.0],   # median 14
         ('aff32', 'train', 'add', 'hybrid'): [16.0, 18.0, 17.0]}       # median 17
    rows = {r['name']: r for r in bench_aff_ratio.summarise(s, {'aff32': 32}, 'OMP_NUM_THREADS=1')}
    assert rows['AFF-ResNet-32 train, aff, imperative']['value'] == 11.0
    assert '10-12' in rows['AFF-ResNet-32 train, aff, imperative']['note']
    # same-mode ratios: time ratio = add img/s / aff img/s
    assert abs(rows['AFF/add time, AFF-ResNet-32 train, imperative']['value'] - 14.0 / 11.0) < 1e-12
    assert abs(rows['AFF/add time, AFF-ResNet-32 train, hybrid']['value'] - 17.0 / 9.5) < 1e-12
    # best modes: AFF imperative (11 > 9.5), add hybrid (17 > 14)
    best = rows['AFF/add time, AFF-ResNet-32 train, best modes']
    assert abs(best['value'] - 17.0 / 11.0) < 1e-12
    assert 'AFF imperative, add hybrid' in best['note'] and 'missed' in best['note']
    per = [16 / 10, 18 / 12, 17 / 11]          # per-round ratios of the best modes
    assert 'rounds %.3g-%.3g' % (min(per), max(per)) in best['note']
    assert 'OMP_NUM_THREADS=1' in best['note'] and 'batch 32' in best['note']


def test_goal_met_and_missing_partner():
    s = {('aff50', 'infer', 'aff', 'hybrid'): [9.0], ('aff50', 'infer', 'add', 'hybrid'): [10.0]}
    rows = {r['name']: r for r in bench_aff_ratio.summarise(s, {'aff50': 2}, '')}
    best = rows['AFF/add time, AFF-ResNet-50 infer, best modes']
    assert abs(best['value'] - 10.0 / 9.0) < 1e-12 and 'goal <= 1.15: met' in best['note']
    assert 'AFF/add time, AFF-ResNet-50 infer, imperative' not in rows


def test_alternating_rounds_one_process_each(tmp_path):
    log = tmp_path / 'calls.txt'
    code = ('import json, sys; open(%r, "a").write(sys.argv[1] + "\\n"); '
            'print("noise"); print(json.dumps({"images_per_sec": float(len(sys.argv[1]))}))' % str(log))
    configs = [('a',), ('bbb',)]
    got = common.alternating_rounds(configs, 2, lambda c: [sys.executable, '-c', code, c[0]], 60, echo=None)
    assert got == {('a',): [1.0, 1.0], ('bbb',): [3.0, 3.0]}
    assert log.read_text().split() == ['a', 'bbb', 'a', 'bbb']      # alternating, one process per call
    both = common.alternating_rounds(configs, 1, lambda c: [sys.executable, "-c", code, c[0]], 60, echo=None,
                                     key=("images_per_sec",))
    assert both == {("a",): {"images_per_sec": [1.0]}, ("bbb",): {"images_per_sec": [3.0]}}


def test_runner_errors_name_the_command():
    with pytest.raises(SystemExit, match='error: .* failed: ValueError: boom'):
        common.run_json_process([sys.executable, '-c', 'raise ValueError("boom")'], 60)
    with pytest.raises(SystemExit, match='printed no JSON'):
        common.run_json_process([sys.executable, '-c', 'print("hello")'], 60)


def test_bad_options_and_suite_listing(tmp_path):
    with pytest.raises(SystemExit, match='unknown --models'):
        bench_aff_ratio.main(['--models', 'resnet9'])
    with pytest.raises(SystemExit, match='--rounds'):
        bench_aff_ratio.main(['--rounds', '0'])
    assert 'aff-ratio' in [s[0] for s in run_all.SECTIONS]
    assert bench_aff_ratio.configurations(['aff32'], ['train'])[:2] == [
        ('aff32', 'train', 'aff', 'imperative'), ('aff32', 'train', 'add', 'imperative')]


def test_cpu_time_rows_are_ratios_only():
    s = {('aff32', 'infer', 'aff', 'hybrid'): [8.0, 10.0], ('aff32', 'infer', 'add', 'hybrid'): [10.0, 12.0]}
    rows = bench_aff_ratio.summarise(s, {'aff32': 16}, '', clock='cpu')
    assert {r['unit'] for r in rows} == {'x'}
    names = {r['name']: r['value'] for r in rows}
    assert abs(names['AFF/add CPU time, AFF-ResNet-32 infer, best modes'] - 11.0 / 9.0) < 1e-12


def test_median_rates_counts_cpu_time_not_sleep():
    import time
    wall, cpu, fastest = common.median_rates(lambda: time.sleep(0.05), 10, 3, warmup=0)
    assert 150 < wall < 210          # 10 images per ~0.05 s of wall clock
    assert cpu > 4 * wall            # sleeping uses (almost) no CPU time
    assert fastest >= wall


def test_profile_categories():
    from bench.profile_ops import category
    want = {'_backward_Convolution': 'convolution', 'gt_aff_fuse': 'fused AFF kernels',
            '_backward_gt_global_mean': 'fused AFF kernels', 'multi_sgd_mom_update': 'optimizer update',
            '_backward_BatchNorm': 'BatchNorm', 'Reshape': 'reorders / copies', 'reshape_like': 'reorders / copies',
            'add_n': 'activation / elementwise', 'broadcast_add': 'activation / elementwise',
            '_backward_Pooling': 'pooling / reductions', 'mean': 'pooling / reductions',
            'DeleteVariable': 'engine bookkeeping', 'log_softmax': 'loss / softmax', 'SomethingNew': 'other'}
    assert {k: category(k) for k in want} == want
