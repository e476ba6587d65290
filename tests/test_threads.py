"""gluon_transfer.threads: the OpenMP thread count set before MXNet loads. The rule is checked
on hand-made topologies (what MXNet 1.9 would pick by itself, hand-derived: half the usable
processors on x86, all of them elsewhere); the import is checked in fresh processes."""
import os
import subprocess
import sys

import pytest

from gluon_transfer import threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_sys(tmp_path, pairs):
    """/sys/devices/system/cpu with cpu<i>/topology/{physical_package_id, core_id} = pairs[i]."""
    for i, (package, core) in enumerate(pairs):
        d = tmp_path / ('cpu%d' % i) / 'topology'
        d.mkdir(parents=True)
        (d / 'physical_package_id').write_text('%d\n' % package)
        (d / 'core_id').write_text('%d\n' % core)
    return str(tmp_path)


def test_physical_cores_from_the_topology(tmp_path):
    # 4 processors, two hardware threads on each of 2 cores
    ht = fake_sys(tmp_path / 'ht', [(0, 0), (0, 1), (0, 0), (0, 1)])
    assert threads.physical_cores([0, 1, 2, 3], ht) == 2
    assert threads.physical_cores([0, 2], ht) == 1          # both threads of core 0
    # 2 sockets with the same core ids are 4 cores
    two = fake_sys(tmp_path / 'two', [(0, 0), (0, 1), (1, 0), (1, 1)])
    assert threads.physical_cores([0, 1, 2, 3], two) == 4
    assert threads.physical_cores([0, 7], two) is None      # cpu7 has no topology: unknown


def test_mxnet_default_is_half_on_x86():
    assert [threads.mxnet_default_threads(n, 'x86_64') for n in (1, 2, 3, 16)] == [1, 1, 1, 8]
    assert threads.mxnet_default_threads(4, 'aarch64') == 4


@pytest.mark.parametrize('cpus, cores, machine, want', [
    ([0, 1], 2, 'x86_64', 2),              # 2 cores, 1 thread each: MXNet would use 1
    ([0, 1, 2, 3], 2, 'x86_64', None),     # 2 cores, 2 threads each: MXNet's 2 is right
    (list(range(16)), 16, 'x86_64', 16),   # 16 single-thread cores: MXNet would use 8
    ([0], 1, 'x86_64', None),              # one processor: nothing to gain
    ([0, 1, 2, 3], 4, 'aarch64', None),    # MXNet uses them all there
    ([0, 1], 0, 'x86_64', None),           # no core count: leave MXNet's choice
])
def test_rule(cpus, cores, machine, want):
    assert threads.omp_threads_to_set({}, cpus, cores, machine) == want


def test_a_users_setting_is_never_overridden():
    assert threads.omp_threads_to_set({'OMP_NUM_THREADS': '1'}, [0, 1], 2, 'x86_64') is None
    assert threads.omp_threads_to_set({'MXNET_OMP_MAX_THREADS': '1'}, [0, 1], 2, 'x86_64') is None


def _import_and_report(env):
    code = ('import os, gluon_transfer; from gluon_transfer import threads; '
            'print(os.environ.get("OMP_NUM_THREADS"), threads.APPLIED)')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_import_sets_the_rule_s_value_or_keeps_the_user_s():
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MXNET_OMP_MAX_THREADS')}
    value, applied = _import_and_report(env)
    want = threads.omp_threads_to_set({})
    assert (value, applied) == ((str(want), str(want)) if want else ('None', 'None'))
    assert _import_and_report(dict(env, OMP_NUM_THREADS='1')) == ['1', 'None']


def test_nothing_changes_when_mxnet_was_loaded_first():
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    code = ('import os, mxnet, gluon_transfer; from gluon_transfer import threads; '
            'print(os.environ.get("OMP_NUM_THREADS"), threads.APPLIED)')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ['None', 'None'], out.stderr
