"""Distributed training: the launcher (argument checks, SSH command lines, supervision)
and dist_sync jobs on loopback (1 scheduler + 1 server + 2 workers) compared with a
single-process run on the union of the shards.

Every process a test starts has a hard time limit and is stopped by PID / process group."""
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from gluon_transfer import launch
from gluon_transfer.engine import distributed
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.engine.tasks import Classify
from gluon_transfer.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
import dist_worker  # noqa: E402  (the worker program's problem definition)

WORKER = [sys.executable, os.path.join(ROOT, 'tests', 'dist_worker.py')]
PID_LINE = re.compile(r'launch: started (scheduler|server \d+|worker \d+) \(pid (\d+)\)')


# ---------------------------------------------------------------------------- helpers
def _alive(pid):
    """Running (a zombie waiting for a reaper that is not ours counts as dead)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class LauncherRun:
    """``python -m gluon_transfer.launch ARGS`` in its own session, output collected live."""

    def __init__(self, args):
        self.p = subprocess.Popen([sys.executable, '-m', 'gluon_transfer.launch'] + list(args), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        self.lines = []
        self._q = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        with self.p.stdout:
            for line in self.p.stdout:
                self.lines.append(line.rstrip('\n'))
                self._q.put(line)

    def wait_for(self, predicate, timeout):
        end = time.time() + timeout
        while time.time() < end:
            if predicate('\n'.join(self.lines)):
                return True
            if self.p.poll() is not None and self._q.empty():
                return predicate('\n'.join(self.lines))
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass
        return False

    def pids(self):
        return {m.group(1): int(m.group(2)) for m in map(PID_LINE.search, self.lines) if m}

    def finish(self, timeout):
        """Wait for the launcher; past ``timeout`` stop it (SIGTERM, then SIGKILL of it and of
        every process group it reported) and fail."""
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                for pid in self.pids().values():
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
            pytest.fail('launcher did not finish within %ss:\n%s' % (timeout, self.text()))
        finally:
            self._t.join(timeout=5)
        return self.p.returncode

    def text(self):
        return '\n'.join(self.lines)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load_npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ---------------------------------------------------------------------------- kvstore helpers
def test_dmlc_env_and_free_port():
    env = distributed.dmlc_env('server', '10.0.0.1', 9091, 4, 2, node_host='10.0.0.2')
    assert env == {'DMLC_ROLE': 'server', 'DMLC_PS_ROOT_URI': '10.0.0.1', 'DMLC_PS_ROOT_PORT': '9091',
                   'DMLC_NUM_WORKER': '4', 'DMLC_NUM_SERVER': '2', 'DMLC_NODE_HOST': '10.0.0.2'}
    with pytest.raises(ValueError):
        distributed.dmlc_env('boss', 'h', 1, 1, 1)
    port = distributed.find_free_port()
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', port))          # it really is free


def test_create_kvstore_errors(monkeypatch):
    assert distributed.create_kvstore(None) == (None, 0, 1)
    assert distributed.create_kvstore('device') == ('device', 0, 1)
    with pytest.raises(ConfigError, match="unknown kvstore 'dist_snyc'.*dist_sync"):
        distributed.create_kvstore('dist_snyc')
    with pytest.raises(ConfigError, match='dist_async is not supported.*use dist_sync'):
        distributed.create_kvstore('dist_async')
    for var in distributed.DMLC_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match='needs the ps-lite environment.*gluon_transfer.launch'):
        distributed.create_kvstore('dist_sync')
    assert distributed.global_batch_size(16, 3) == 48


def test_average_running_stats_over_devices():
    """One process, two devices: every BatchNorm running statistic becomes the mean of its
    device copies; weights and other no-gradient parameters (AFS-style masks) are untouched;
    with one copy of everything nothing is done."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(3, 1, in_channels=2), gluon.nn.BatchNorm(in_channels=3))
    mask = net.params.get('mask_m', shape=(3,), init=mx.init.One(), grad_req='null', differentiable=False)
    ctx = [mx.cpu(0), mx.cpu(1)]
    net.initialize(ctx=ctx)
    rng = np.random.RandomState(0)
    values = {}
    for p in net.collect_params().values():
        copies = [rng.normal(size=p.shape).astype(np.float32) for _ in ctx]
        for d, v in zip(p.list_data(), copies):
            d[:] = v
        values[p.name] = copies
    names = [p.name for p in distributed.running_stat_params(net.collect_params())]
    assert len(names) == 2 and all(n.endswith(('running_mean', 'running_var')) for n in names)
    assert distributed.average_running_stats(None, net.collect_params()) == 2
    for p in net.collect_params().values():
        got = [d.asnumpy() for d in p.list_data()]
        want = [(values[p.name][0] + values[p.name][1]) / 2] * 2 if p.name in names else values[p.name]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=p.name)
    one = gluon.nn.BatchNorm(in_channels=3)
    one.initialize()
    assert distributed.average_running_stats('device', one.collect_params()) == 0


# ---------------------------------------------------------------------------- launcher arguments
@pytest.mark.parametrize('argv, message', [
    (['-n', '0', '--', 'true'], '-n/--num-workers must be at least 1, got 0'),
    (['-n', '2', '-s', '0', '--', 'true'], '-s/--num-servers must be at least 1'),
    (['-n', '2', '--local'], 'missing the worker command: put it after --'),
    (['-n', '2', '--local', '--'], 'missing the worker command after --'),
    (['-n', 'two', '--', 'true'], "invalid int value: 'two'"),
    (['-n', '2', '--local', '--hosts', 'h.txt', '--', 'true'], 'not allowed with argument'),
    (['-n', '2', '--hosts', '/nonexistent/hosts.txt', '--', 'true'], 'hosts file not found: /nonexistent/hosts.txt'),
    (['-n', '2', '--port', '70000', '--', 'true'], '--port must be in 0..65535'),
    (['-n', '2', '--env', 'A B', '--', 'true'], "--env expects NAME or NAME=VALUE"),
])
def test_launcher_argument_errors_are_one_line(argv, message, capsys):
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and message in err, err


def test_parse_hosts(tmp_path):
    f = tmp_path / 'hosts'
    f.write_text('# cluster\nnode1\n\nalice@node2:2222  # gpu box\n10.0.0.3\n')
    assert launch.parse_hosts(str(f)) == [launch.Host('node1', None, None), launch.Host('node2', 'alice', 2222),
                                          launch.Host('10.0.0.3', None, None)]
    f.write_text('node1 node2\n')
    with pytest.raises(launch.LaunchError, match=r'hosts:1: expected one \[user@\]host'):
        launch.parse_hosts(str(f))
    f.write_text('node1:ssh\n')
    with pytest.raises(launch.LaunchError, match='bad host entry'):
        launch.parse_hosts(str(f))
    f.write_text('# nothing\n')
    with pytest.raises(launch.LaunchError, match='lists no hosts'):
        launch.parse_hosts(str(f))


# ---------------------------------------------------------------------------- SSH command lines
def test_ssh_command_quoting_round_trips_through_a_shell(tmp_path):
    """The remote shell line, run by a local ``sh -c`` (what sshd does), must reproduce the
    working directory, the exported values and every argument exactly."""
    host = launch.Host('node7', 'bob', 2200)
    env = {'DMLC_ROLE': 'worker', 'ODD': "it's a \"test\" $HOME `x` ; rm -rf /"}
    probe = ('import json, os, sys; '
             'print(json.dumps([os.getcwd(), os.environ["DMLC_ROLE"], os.environ["ODD"], sys.argv[1:]]))')
    argv = [sys.executable, '-c', probe, 'a b', '$PATH', "o'neil", '--lr=0.1']
    wd = tmp_path / 'dir with space'
    wd.mkdir()
    cmd = launch.ssh_command(host, argv, env, cwd=str(wd), options=['StrictHostKeyChecking=no'])
    assert cmd[:-1] == ['ssh', '-tt', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-p', '2200',
                        'bob@node7']
    remote = cmd[-1]
    assert remote.startswith('cd ') and ' && export ' in remote and ' && exec ' in remote
    out = subprocess.run(['sh', '-c', remote], capture_output=True, text=True, timeout=60,
                         env={'PATH': os.environ['PATH'], 'HOME': '/nowhere'})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == [os.path.realpath(str(wd)), 'worker', env['ODD'], argv[3:]]


def test_plan_over_hosts(tmp_path, monkeypatch):
    hosts = tmp_path / 'hosts'
    hosts.write_text('alice@n1\nn2:2022\n')
    monkeypatch.setenv('MY_FLAG', 'x y')
    args = launch.parse_args(['-n', '3', '-s', '2', '--hosts', str(hosts), '--port', '9099', '--env', 'MY_FLAG',
                              '--env', 'OMP_NUM_THREADS=4', '--cwd', '/shared/proj', '--',
                              '/opt/py/bin/python', 'train_cifar.py', '--kvstore', 'dist_sync'])
    specs, root = launch.plan(args)
    assert root == ('n1', 9099)
    placed = [(s.role, s.index, s.host.address) for s in specs]
    assert placed == [('scheduler', 0, 'n1'), ('server', 0, 'n1'), ('server', 1, 'n2'),
                      ('worker', 0, 'n1'), ('worker', 1, 'n2'), ('worker', 2, 'n1')]
    w1 = specs[4].argv
    assert w1[:w1.index('n2')] == ['ssh', '-tt', '-o', 'BatchMode=yes', '-p', '2022']
    remote = shlex.split(w1[-1])
    assert remote[:3] == ['cd', '/shared/proj', '&&']
    exports = dict(tok.split('=', 1) for tok in remote[4:remote.index('&&', 3)])
    assert exports == {'DMLC_ROLE': 'worker', 'DMLC_PS_ROOT_URI': 'n1', 'DMLC_PS_ROOT_PORT': '9099',
                       'DMLC_NUM_WORKER': '3', 'DMLC_NUM_SERVER': '2', 'DMLC_NODE_HOST': 'n2',
                       'MY_FLAG': 'x y', 'OMP_NUM_THREADS': '4', 'PYTHONUNBUFFERED': '1'}
    assert remote[-5:] == ['exec', '/opt/py/bin/python', 'train_cifar.py', '--kvstore', 'dist_sync']
    sched = shlex.split(specs[0].argv[-1])
    assert specs[0].argv[-2] == 'alice@n1' and sched[-4:] == ['exec', sys.executable, '-c', 'import mxnet']


def test_plan_local_env():
    args = launch.parse_args(['-n', '2', '-s', '1', '--local', '--', 'python', 'w.py'])
    specs, (host, port) = launch.plan(args)
    assert host == '127.0.0.1' and 0 < port < 65536
    assert [(s.role, s.index) for s in specs] == [('scheduler', 0), ('server', 0), ('worker', 0), ('worker', 1)]
    for s in specs:
        assert s.env['DMLC_NODE_HOST'] == '127.0.0.1' and s.env['DMLC_PS_ROOT_URI'] == '127.0.0.1'
        assert s.env['DMLC_PS_ROOT_PORT'] == str(port) and s.env['DMLC_ROLE'] == s.role
        assert s.env['DMLC_NUM_WORKER'] == '2' and s.env['DMLC_NUM_SERVER'] == '1'
    assert specs[2].argv == ['python', 'w.py'] and specs[0].argv == [sys.executable, '-c', 'import mxnet']


# ---------------------------------------------------------------------------- supervision (no mxnet)
def _spec(role, index, script):
    return launch.ProcSpec(role, index, ['sh', '-c', script], dict(os.environ), None)


class _Sink:
    def __init__(self):
        self.parts = []

    def write(self, s):
        self.parts.append(s)

    def flush(self):
        pass

    def text(self):
        return ''.join(self.parts)


def test_failed_worker_stops_the_job_and_its_children():
    """Worker 1 fails; everything else (including a grandchild in a worker's process
    group) is stopped, and the message names the worker."""
    out, err = _Sink(), _Sink()
    specs = [_spec('scheduler', 0, 'sleep 30'), _spec('server', 0, 'sleep 30'),
             _spec('worker', 0, 'sleep 30 & echo child $!; wait'), _spec('worker', 1, 'sleep 0.5; exit 3')]
    L = launch.Launcher(specs, timeout=60, grace=2, out=out, err=err)
    t0 = time.time()
    rc = L.run()
    assert rc == 3 and time.time() - t0 < 10
    pid1 = L.procs[3][1].pid
    assert 'error: worker 1 (pid %d) exited with status 3; stopping the job' % pid1 in err.text()
    child = int(re.search(r'\[worker 0\] child (\d+)', out.text()).group(1))
    for pid in [p.pid for _, p in L.procs] + [child]:
        assert not _alive(pid), pid


def test_timeout_and_signal_death_status():
    err = _Sink()
    L = launch.Launcher([_spec('scheduler', 0, 'sleep 30'), _spec('worker', 0, 'sleep 30')], timeout=0.5,
                        grace=2, out=_Sink(), err=err)
    assert L.run() == 124
    assert 'ran longer than --timeout 0.5s' in err.text()
    assert not any(_alive(p.pid) for _, p in L.procs)
    err = _Sink()
    L = launch.Launcher([_spec('scheduler', 0, 'sleep 30'), _spec('worker', 0, 'kill -9 $$')], timeout=30,
                        grace=2, out=_Sink(), err=err)
    assert L.run() == 137
    assert 'worker 0 (pid %d) exited with status -9 (SIGKILL)' % L.procs[1][1].pid in err.text()


def test_log_dir_and_clean_exit(tmp_path):
    specs = [_spec('scheduler', 0, 'sleep 0.2; echo sched'), _spec('worker', 0, 'echo hello from w0')]
    L = launch.Launcher(specs, timeout=30, log_dir=str(tmp_path), out=_Sink(), err=_Sink())
    assert L.run() == 0
    assert (tmp_path / 'worker0.log').read_text() == 'hello from w0\n'
    assert (tmp_path / 'scheduler.log').read_text() == 'sched\n'


@pytest.mark.slow
def test_sigterm_to_launcher_stops_everything():
    """A real local job whose workers never connect; SIGTERM to the launcher stops the
    scheduler, the server and the workers (no orphans) with status 128+15."""
    run = LauncherRun(['-n', '2', '-s', '1', '--local', '--grace', '2', '--', 'sleep', '60'])
    try:
        assert run.wait_for(lambda t: 'started worker 1' in t, 30), run.text()
        run.p.send_signal(signal.SIGTERM)
        rc = run.finish(30)
    finally:
        if run.p.poll() is None:
            run.finish(1)
    assert rc == 143 and 'received SIGTERM; stopping the job' in run.text()
    pids = run.pids()
    assert len(pids) == 4 and not any(_alive(p) for p in pids.values())


def test_port_in_use_is_a_one_line_error(capsys):
    """A --port something already listens on is refused before anything starts, naming the
    port (ps-lite's scheduler would die with an MXNet traceback: 'bind failed')."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        port = s.getsockname()[1]
        assert launch.main(['-n', '1', '-s', '1', '--local', '--port', str(port), '--', 'true']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: --port %d is not available on 127.0.0.1' % port), err
    assert 'leave --port out' in err


def _wait_dead(pids, timeout):
    end = time.time() + timeout
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _kill_groups(pids):
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def test_watchdog_stops_the_groups_when_the_launcher_pipe_closes():
    """The fallback alone: the watchdog stops every group it was told about (grandchildren
    included) when its pipe closes without 'done', and leaves them alone after 'done'."""
    script = 'sleep 60 & echo $!; wait'
    for done in (False, True):
        procs = [subprocess.Popen(['sh', '-c', script], stdout=subprocess.PIPE, text=True, start_new_session=True)
                 for _ in range(2)]
        children = [int(p.stdout.readline()) for p in procs]
        pids = [p.pid for p in procs] + children
        try:
            dog = launch.start_watchdog(grace=1.0)
            for p in procs:
                dog.stdin.write(b'%d\n' % p.pid)
            dog.stdin.write(b'done\n' if done else b'')
            dog.stdin.close()                   # what the launcher's death does
            assert dog.wait(timeout=15) == 0
            for p in procs:
                if not done:
                    p.wait(timeout=10)         # reap our own children (no zombies)
            if done:
                assert all(_alive(p) for p in pids)
            else:
                assert _wait_dead(pids, 10) == []
        finally:
            _kill_groups([p.pid for p in procs])
            for p in procs:
                p.wait(timeout=10)
                p.stdout.close()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux only')
def test_parent_death_signal_kills_the_child():
    """A child started with parent_death_signal() dies when its parent is SIGKILLed."""
    code = ('import subprocess, sys, time; sys.path.insert(0, %r); from gluon_transfer.launch import '
            'parent_death_signal; p = subprocess.Popen(["sleep", "60"], preexec_fn=parent_death_signal(), '
            'start_new_session=True); print(p.pid, flush=True); time.sleep(60)' % ROOT)
    parent = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait(timeout=10)
        assert _wait_dead([child], 10) == []
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()
        if child:
            _kill_groups([child])


def _sigkill_launcher(run, ready, timeout):
    """Wait for ``ready(output)``, SIGKILL the launcher, and return the pids it reported."""
    pids = {}
    try:
        assert run.wait_for(ready, timeout), run.text()
        pids = run.pids()
        os.kill(run.p.pid, signal.SIGKILL)
        assert run.p.wait(timeout=10) == -signal.SIGKILL
    except BaseException:
        run.p.kill()
        _kill_groups(pids.values())
        raise
    return pids


@pytest.mark.slow
def test_sigkill_of_launcher_takes_the_job_down(tmp_path):
    """SIGKILL of a running launcher (no chance to stop anything itself): the scheduler, the
    server and the two training workers of a live dist_sync job are gone soon after, and
    training stopped (no worker finished). With --log-dir the processes do not write to the
    launcher's pipes, so nothing else (a broken pipe) would end them."""
    logs = tmp_path / 'logs'
    run = LauncherRun(['-n', '2', '-s', '1', '--local', '--grace', '2', '--log-dir', str(logs), '--'] + WORKER +
                      ['--out', str(tmp_path), '--epochs', '200', '--sleep', '0.05', '--deferred'])

    def stepping(_):
        texts = [(logs / ('worker%d.log' % i)).read_text() if (logs / ('worker%d.log' % i)).exists() else ''
                 for i in (0, 1)]
        return all('step 3\n' in t for t in texts)
    pids = _sigkill_launcher(run, stepping, 120)
    try:
        assert sorted(pids) == ['scheduler', 'server 0', 'worker 0', 'worker 1']
        assert _wait_dead(pids.values(), 15) == [], run.text()
    finally:
        _kill_groups(pids.values())
        run.finish(15)
    assert not (tmp_path / 'final_rank0.npz').exists() and not (tmp_path / 'final_rank1.npz').exists()


@pytest.mark.slow
def test_sigkill_of_launcher_also_stops_grandchildren():
    """Processes the workers started themselves (in their process groups) go too."""
    run = LauncherRun(['-n', '2', '-s', '1', '--local', '--grace', '1', '--', 'sh', '-c',
                       'sleep 120 & echo child $!; wait'])
    child = re.compile(r'\[worker (\d)\] child (\d+)')
    pids = _sigkill_launcher(run, lambda t: len(child.findall(t)) == 2, 60)
    grandchildren = [int(m[1]) for m in child.findall(run.text())]
    try:
        assert _wait_dead(list(pids.values()) + grandchildren, 15) == [], run.text()
    finally:
        _kill_groups(pids.values())
        run.finish(15)
    assert 'launch watchdog: the launcher (pid %d) died' % run.p.pid in run.text()


# ---------------------------------------------------------------------------- dist_sync on loopback
class _LineSink(_Sink):
    def lines(self):
        return self.text().splitlines()


def launch_in_process(argv, limit=120):
    """Run the launcher on ``argv`` in a thread of this process (saves a launcher start-up);
    returns (status, launcher, output). Past ``limit`` seconds the job is stopped and the
    test fails."""
    sink = _LineSink()
    specs, _ = launch.plan(launch.parse_args(argv))
    L = launch.Launcher(specs, timeout=limit, grace=3, out=sink, err=sink)
    result = []
    t = threading.Thread(target=lambda: result.append(L.run()), daemon=True)
    t.start()
    return t, L, sink, result


def finish_in_process(handle, limit=150):
    t, L, sink, result = handle
    t.join(limit)
    if t.is_alive():
        L._stop()
        pytest.fail('launcher thread still running after %ss:\n%s' % (limit, sink.text()))
    return result[0], sink.text()


def reference_run(init, steps):
    """Single process, no kvstore: SGD (momentum .9, wd 1e-3) on the union of the two shards,
    global batch = both workers' batches of each step (2 x 4 samples), mean cross-entropy,
    the step LR schedule written out by hand (0.2, x0.1 from epoch 2; 2 steps per epoch)."""
    lrs = (0.2, 0.2, 0.02, 0.02)
    net = dist_worker.make_net(0)
    for k, p in net._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(init[k]))
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': lrs[0], 'momentum': 0.9, 'wd': 1e-3},
                            kvstore=None)
    shards = [dist_worker.make_shard(2, r) for r in range(2)]
    states = []
    for epoch in range(2):
        iters = []
        for s in shards:
            s.set_epoch(epoch)
            iters.append(iter(s))
        for _ in range(2):       # the smaller shard has 2 batches of 4 (8 of 17 samples)
            batches = [next(it) for it in iters]
            x = mx.nd.concat(*[b.data for b in batches], dim=0)
            y = mx.nd.concat(*[b.label for b in batches], dim=0)
            with autograd.record():
                logp = mx.nd.log_softmax(net(x), axis=-1)
                loss = -mx.nd.pick(logp, y, axis=-1).sum()
            loss.backward()
            trainer.set_learning_rate(lrs[len(states)])
            trainer.step(x.shape[0])
            states.append({k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()})
    return states[steps - 1]


def _np_conv3x3(x, w):
    """3x3 convolution, padding 1, no bias: x (N, C, H, W), w (O, C, 3, 3) -> (N, O, H, W)."""
    h, wd = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sum(np.einsum('nchw,oc->nohw', xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
               for i in range(3) for j in range(3))


def reference_run_bn(init, steps):
    """The BatchNorm variant (``dist_worker.py --bn``) of a 2-worker job, in one process.

    Weights: each worker's batch on its own device ([cpu(0), cpu(1)]: BatchNorm normalises
    each batch with its own statistics, as per worker), gradients summed over the devices
    (kvstore 'local'), SGD and LR schedule as :func:`reference_run`. Running statistics, in
    numpy from the conv weights of every step: worker r's batch mean ``mu`` and (biased)
    variance ``var`` of the conv output over (N, H, W) update ``m_r <- 0.8 m_r + 0.2 mu``,
    ``v_r <- 0.8 v_r + 0.2 var`` (BatchNorm momentum 0.8, from 0 and 1); returned as their
    mean over the two workers."""
    lrs = (0.2, 0.2, 0.02, 0.02)
    ctx = [mx.cpu(0), mx.cpu(1)]
    net = dist_worker.make_net(0, bn=True)
    net.collect_params().reset_ctx(ctx)
    for k, p in net._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(init[k]))
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': lrs[0], 'momentum': 0.9, 'wd': 1e-3},
                            kvstore='local', update_on_kvstore=False)
    shards = [dist_worker.make_shard(2, r) for r in range(2)]
    means = [np.asarray(init['1.running_mean'], np.float64)] * 2
    variances = [np.asarray(init['1.running_var'], np.float64)] * 2
    for step in range(steps):
        epoch, i = divmod(step, 2)
        if i == 0:
            for s in shards:
                s.set_epoch(epoch)
            iters = [iter(s) for s in shards]
        batches = [next(it) for it in iters]
        w = net[0].weight.data(ctx[0]).asnumpy().astype(np.float64)
        for r, b in enumerate(batches):
            y = _np_conv3x3(b.data.asnumpy().astype(np.float64), w)
            means[r] = 0.8 * means[r] + 0.2 * y.mean(axis=(0, 2, 3))
            variances[r] = 0.8 * variances[r] + 0.2 * y.var(axis=(0, 2, 3))
        with autograd.record():
            losses = []
            for b, c in zip(batches, ctx):
                logp = mx.nd.log_softmax(net(b.data.as_in_context(c)), axis=-1)
                losses.append(-mx.nd.pick(logp, b.label.as_in_context(c), axis=-1).sum())
        autograd.backward(losses)
        trainer.set_learning_rate(lrs[step])
        trainer.step(8)
    out = {k: p.data(ctx[0]).asnumpy() for k, p in net._collect_params_with_prefix().items()
           if not k.endswith(('running_mean', 'running_var'))}
    out['1.running_mean'] = (means[0] + means[1]) / 2
    out['1.running_var'] = (variances[0] + variances[1]) / 2
    return out


@pytest.mark.slow
def test_dist_sync_batchnorm_statistics_agree(tmp_path):
    """With BatchNorm each worker's running statistics average only its own shard's batches.
    After a 2-epoch job both workers hold the same statistics (their mean, bit-identical),
    so both report the same val numbers every epoch; the statistics and weights equal the
    single-process reference (per-worker BatchNorm, running statistics in numpy)."""
    argv = ['-n', '2', '-s', '1', '--local', '--'] + WORKER + ['--out', str(tmp_path), '--epochs', '2', '--bn', '--val']
    rc, text = finish_in_process(launch_in_process(argv))
    assert rc == 0, text
    info, init, final = _load_run(tmp_path)
    stats = [k for k in final[0] if k.endswith(('running_mean', 'running_var'))]
    assert len(stats) == 2
    for k in final[0]:
        np.testing.assert_array_equal(final[0][k], final[1][k], err_msg=k)
    assert [len(i['val']) for i in info] == [2, 2] and info[0]['val'] == info[1]['val']
    ref = reference_run_bn(init[0], steps=4)
    for k in ref:
        np.testing.assert_allclose(final[0][k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert np.abs(ref[stats[0]]).max() > 1e-2 and np.abs(ref[stats[1]] - 1).max() > 1e-2   # they moved


@pytest.fixture(scope='module')
def dist_runs(tmp_path_factory):
    """Two dist_sync jobs of 2 workers: A trains epoch 1 (2 steps) and checkpoints; B
    resumes from A's checkpoint (every worker loads it) and trains epoch 2."""
    out = tmp_path_factory.mktemp('dist')
    ckpt = out / 'ckpt'
    base = ['-n', '2', '-s', '1', '--local', '--'] + WORKER + ['--save-dir', str(ckpt), '--epochs', '2']
    rc, text = finish_in_process(launch_in_process(base + ['--out', str(out / 'a'), '--max-iters', '2']))
    assert rc == 0, text
    with open(ckpt / 'metrics.jsonl') as f:
        metrics_a = f.read()
    pointer_a = read_json(ckpt / 'checkpoint.json')
    pointer_a['config_kvstore'] = read_json(ckpt / pointer_a['latest'])['config']['kvstore']
    rc, text = finish_in_process(launch_in_process(base + ['--out', str(out / 'b'), '--resume', str(ckpt)]))
    assert rc == 0, text
    return out, metrics_a, pointer_a


def _load_run(d):
    info = [read_json(d / ('info_rank%d.json' % r)) for r in range(2)]
    init = [load_npz(d / ('init_rank%d.npz' % r)) for r in range(2)]
    final = [load_npz(d / ('final_rank%d.npz' % r)) for r in range(2)]
    return info, init, final


def _check_against_reference(final, ref):
    for k in ref:
        np.testing.assert_array_equal(final[0][k], final[1][k], err_msg=k)     # identical replicas
        # float32 sums of the 8 per-sample gradients in two orders (4 + 4 over the kvstore
        # vs 8 in one reduction): rounding differences ~1e-7 on values of 0.1-1.
        np.testing.assert_allclose(final[0][k], ref[k], rtol=1e-6, atol=2e-7, err_msg=k)


@pytest.mark.slow
def test_dist_sync_two_workers_equal_single_process(dist_runs):
    out, metrics_a, pointer_a = dist_runs
    info, init, final = _load_run(out / 'a')
    # 17 samples: shards of 8 and 9 give 2 and 3 batches of 4; both workers run 2 per epoch.
    assert sorted(i['shard_batches'] for i in info) == [2, 3]
    assert sorted(i['rank'] for i in info) == [0, 1] and [i['num_workers'] for i in info] == [2, 2]
    assert [i['iters_per_epoch'] for i in info] == [2, 2] and [i['global_step'] for i in info] == [2, 2]
    for i in info:
        np.testing.assert_allclose(i['lr_trace'], [0.2, 0.2], rtol=1e-12)
    # Workers start from different weights; the kvstore broadcasts rank 0's before step 1.
    assert any(np.abs(init[0][k] - init[1][k]).max() > 1e-3 for k in init[0])
    ref = reference_run(init[0], steps=2)
    _check_against_reference(final, ref)
    assert all(np.abs(ref[k] - init[0][k]).max() > 1e-3 for k in ref)        # training moved them
    # Only rank 0 wrote the checkpoint and the metrics log (one line for the one epoch).
    assert [json.loads(line)['epoch'] for line in metrics_a.splitlines()] == [1]
    assert pointer_a == {'latest': 'tiny-0001.json', 'config_kvstore': 'dist_sync'}


@pytest.mark.slow
def test_dist_sync_resume_continues_exactly(dist_runs):
    """Job B resumed from job A's checkpoint: after epoch 2 both replicas equal the
    uninterrupted single-process run of 4 steps (momentum state included)."""
    out, _, _ = dist_runs
    info, _, final = _load_run(out / 'b')
    assert [i['global_step'] for i in info] == [4, 4]
    for i in info:
        np.testing.assert_allclose(i['lr_trace'], [0.02, 0.02], rtol=1e-12)
    _, init_a, _ = _load_run(out / 'a')
    _check_against_reference(final, reference_run(init_a[0], steps=4))
    with open(out / 'ckpt' / 'metrics.jsonl') as f:
        assert [json.loads(line)['epoch'] for line in f] == [1, 2]
    assert read_json(out / 'ckpt' / 'checkpoint.json') == {'latest': 'tiny-0002.json'}


@pytest.mark.slow
def test_killed_worker_fails_the_job_quickly(tmp_path):
    handle = launch_in_process(['-n', '2', '-s', '1', '--local', '--'] + WORKER +
                               ['--out', str(tmp_path), '--epochs', '200', '--sleep', '0.05', '--deferred'])
    t, L, sink, _ = handle
    # Mid-run: both workers made 3 steps (with deferred shapes, the weights are broadcast
    # after the first forward pass).
    stepping = lambda: all('[worker %d] step 3' % i in sink.text() for i in (0, 1))  # noqa: E731
    end = time.time() + 60
    while time.time() < end and t.is_alive() and not stepping():
        time.sleep(0.1)
    try:
        assert stepping(), sink.text()
        victim = dict((s.role, p.pid) for s, p in L.procs if s.role == 'worker' and s.index == 1)['worker']
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
    finally:
        rc, text = finish_in_process(handle, limit=40)
    assert time.time() - t0 < 30
    assert rc == 137
    assert 'error: worker 1 (pid %d) exited with status -9 (SIGKILL); stopping the job' % victim in text
    assert not any(_alive(p.pid) for _, p in L.procs)
    assert not (tmp_path / 'final_rank0.npz').exists()


def test_engine_without_kvstore_has_one_worker():
    """Without a dist kvstore: rank 0 of 1, the epoch is the whole iterator."""
    net = dist_worker.make_net(0)
    cfg = FitConfig(num_epochs=1, kvstore=None, **dist_worker.FIT)
    e = Engine(net, Classify(), [mx.cpu()], cfg, dist_worker.make_shard(1, 0), num_classes=3)
    assert (e.rank, e.num_workers, e.iters_per_epoch) == (0, 1, 5)
