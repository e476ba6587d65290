"""Start a ps-lite job: one scheduler, S servers and N workers, and supervise it.

    python -m gluon_transfer.launch -n 2 -s 1 --local -- \\
        python train_cifar.py --kvstore dist_sync --batch-size 64 ...
    python -m gluon_transfer.launch -n 4 -s 2 --hosts hosts.txt --port 9091 -- \\
        /opt/venv/bin/python train_cifar.py --kvstore dist_sync ...

Every process gets the ``DMLC_*`` environment (see ``engine/distributed.py``); the
scheduler and servers run ``PYTHON -c "import mxnet"`` (importing mxnet with those roles
runs ps-lite's loop and returns when the workers finalise). MXNet's own
``tools/launch.py``/``dmlc_tracker`` is not used: it fails on Python >= 3.9.

``--local`` starts everything on this machine on loopback (``DMLC_NODE_HOST=127.0.0.1``).
``--hosts FILE`` starts them over SSH (``[user@]host[:sshport]`` per line; ``#`` comments):
the scheduler on the first host, server ``i`` and worker ``i`` on host ``i mod H``.

Supervision: each process runs in its own process group. The job stops -- every group
gets SIGTERM, then SIGKILL after ``--grace`` seconds -- as soon as any worker exits
non-zero, the scheduler or a server exits before the workers finish, the launcher
receives SIGINT/SIGTERM/SIGHUP, or ``--timeout`` passes. When the launcher itself dies
without stopping the job (SIGKILL, a crash), the job dies with it: on Linux every process
gets SIGKILL from the kernel when the launcher goes (``PR_SET_PDEATHSIG``), and a small
watchdog process (started first, fed the process ids through a pipe only the launcher
holds) sees the pipe close and stops every process group as above, which also reaches the
processes' own children and works where ``prctl`` does not exist. Exit status: 0 when all workers
succeed; the failed worker's status (128+signal for a signal) when one fails; 1 when the
scheduler or a server fails; 124 on timeout; 128+signal when interrupted. Worker ``i`` is
the i-th worker started; ps-lite assigns the kvstore rank when workers connect (the
training log prints it).

Output: each line of a process is printed with a ``[worker 0]``/``[server 0]``/``[scheduler]``
prefix, or written to ``LOG_DIR/worker0.log`` etc. with ``--log-dir``.
"""
import argparse
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple

from .engine.distributed import dmlc_env, find_free_port

__all__ = ['Host', 'ProcSpec', 'LaunchError', 'parse_hosts', 'parse_args', 'ssh_command', 'plan', 'Launcher',
           'check_port_free', 'parent_death_signal', 'start_watchdog', 'main']

Host = namedtuple('Host', ['address', 'user', 'ssh_port'])
ProcSpec = namedtuple('ProcSpec', ['role', 'index', 'argv', 'env', 'host'])

class LaunchError(Exception):
    """A bad launcher argument or hosts file (printed as one ``error:`` line)."""


def parse_hosts(path):
    """Read a hosts file: ``[user@]host[:sshport]`` per line; blank lines and ``#`` comments
    are ignored. Returns a list of :class:`Host`."""
    if not os.path.isfile(path):
        raise LaunchError('hosts file not found: %s' % path)
    hosts = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            if len(line.split()) != 1:
                raise LaunchError('%s:%d: expected one [user@]host[:port] per line, got %r' % (path, lineno, line))
            user, _, rest = line.rpartition('@')
            addr, _, port = rest.partition(':')
            if not addr or (port and not port.isdigit()):
                raise LaunchError('%s:%d: bad host entry %r (expected [user@]host[:port])' % (path, lineno, line))
            hosts.append(Host(addr, user or None, int(port) if port else None))
    if not hosts:
        raise LaunchError('hosts file %s lists no hosts' % path)
    return hosts


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise LaunchError(message)


def build_parser():
    p = _Parser(
        prog='python -m gluon_transfer.launch',
        usage='%(prog)s -n WORKERS [-s SERVERS] [--hosts FILE | --local] [options] -- COMMAND ...',
        description='Start a scheduler, servers and workers for MXNet\'s dist_sync kvstore and supervise them.')
    p.add_argument('-n', '--num-workers', type=int, required=True, help='number of worker processes')
    p.add_argument('-s', '--num-servers', type=int, default=None, help='number of servers (default: = workers)')
    where = p.add_mutually_exclusive_group()
    where.add_argument('--hosts', default=None, help='hosts file: start the processes over SSH')
    where.add_argument('--local', action='store_true', help='start all processes here on 127.0.0.1 (default)')
    p.add_argument('--port', type=int, default=0,
                   help='scheduler port (default: a free port of this machine; with --local, a port in use is '
                        'an error)')
    p.add_argument('--timeout', type=float, default=0, help='stop the job after this many seconds (0: never)')
    p.add_argument('--grace', type=float, default=5.0, help='seconds between SIGTERM and SIGKILL when stopping')
    p.add_argument('--log-dir', default=None, help='write LOG_DIR/<role><i>.log instead of prefixed output')
    p.add_argument('--python', default=sys.executable, help='interpreter for scheduler and servers')
    p.add_argument('--env', action='append', default=[], metavar='NAME[=VALUE]',
                   help='(--hosts) also export NAME (its local value, or VALUE) on the remote hosts')
    p.add_argument('--cwd', default=None, help='(--hosts) remote working directory (default: the current one)')
    p.add_argument('--interface', default=None,
                   help='(--hosts) network interface for ps-lite (DMLC_INTERFACE) instead of binding the '
                        'host address from the hosts file')
    p.add_argument('--ssh-option', action='append', default=[], metavar='OPT',
                   help='(--hosts) extra ssh -o option, e.g. StrictHostKeyChecking=no')
    return p


def parse_args(argv=None):
    """Split ``argv`` at ``--`` into launcher options and the worker command; validate both."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--' not in argv:
        if '-h' in argv or '--help' in argv:
            build_parser().parse_args(['--help'])
        raise LaunchError('missing the worker command: put it after --, e.g. '
                          '-n 2 --local -- python train_cifar.py --kvstore dist_sync')
    cut = argv.index('--')
    args = build_parser().parse_args(argv[:cut])
    args.command = argv[cut + 1:]
    if not args.command:
        raise LaunchError('missing the worker command after --')
    if args.num_workers < 1:
        raise LaunchError('-n/--num-workers must be at least 1, got %d' % args.num_workers)
    if args.num_servers is None:
        args.num_servers = args.num_workers
    if args.num_servers < 1:
        raise LaunchError('-s/--num-servers must be at least 1, got %d' % args.num_servers)
    if not 0 <= args.port < 65536:
        raise LaunchError('--port must be in 0..65535, got %d' % args.port)
    if args.timeout < 0 or args.grace < 0:
        raise LaunchError('--timeout and --grace must be >= 0')
    for item in args.env:
        name = item.split('=', 1)[0]
        if not name.isidentifier():
            raise LaunchError('--env expects NAME or NAME=VALUE, got %r' % item)
    args.hosts_list = parse_hosts(args.hosts) if args.hosts else None
    return args


def ssh_command(host, argv, env, cwd=None, options=()):
    """The local argv that runs ``argv`` on ``host`` with ``env`` exported.

    ``ssh -tt`` gives the remote command a terminal, so it gets SIGHUP and ends when the
    launcher stops the local ssh client; BatchMode makes a missing key fail instead of
    prompting. The remote shell line is ``cd DIR && export K=V ... && exec ARGV`` with
    every piece quoted by ``shlex.quote``."""
    cmd = ['ssh', '-tt', '-o', 'BatchMode=yes']
    for opt in options:
        cmd += ['-o', opt]
    if host.ssh_port:
        cmd += ['-p', str(host.ssh_port)]
    cmd.append('%s@%s' % (host.user, host.address) if host.user else host.address)
    parts = []
    if cwd:
        parts.append('cd %s' % shlex.quote(cwd))
    if env:
        parts.append('export ' + ' '.join('%s=%s' % (k, shlex.quote(str(v))) for k, v in sorted(env.items())))
    parts.append('exec ' + ' '.join(shlex.quote(a) for a in argv))
    cmd.append(' && '.join(parts))
    return cmd


def check_port_free(host, port):
    """Raise :class:`LaunchError` naming ``host:port`` when a socket already listens there.

    Binds the way the ps-lite scheduler will (ZeroMQ sets ``SO_REUSEADDR``, so connections
    lingering in TIME_WAIT do not count as in use)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise LaunchError('--port %d is not available on %s (%s): another process uses it; pick another '
                              'port, or leave --port out to get a free one' % (port, host, e.strerror or e)) from None


def plan(args):
    """The processes of the job, in start order: scheduler, servers, workers."""
    server_argv = [args.python, '-c', 'import mxnet']
    n, s = args.num_workers, args.num_servers
    roles = [('scheduler', 0, server_argv)] + [('server', i, server_argv) for i in range(s)] + \
            [('worker', i, list(args.command)) for i in range(n)]
    specs = []
    if args.hosts_list is None:
        if args.port:
            check_port_free('127.0.0.1', args.port)
        port = args.port or find_free_port('127.0.0.1')
        extra = {'PYTHONUNBUFFERED': os.environ.get('PYTHONUNBUFFERED', '1')}
        for role, i, argv in roles:
            env = dict(os.environ, **extra)
            env.update(dmlc_env(role, '127.0.0.1', port, n, s, node_host='127.0.0.1',
                                interface='lo' if sys.platform.startswith('linux') else None))
            specs.append(ProcSpec(role, i, argv, env, None))
        return specs, ('127.0.0.1', port)
    hosts = args.hosts_list
    port = args.port or find_free_port('')
    root = hosts[0].address
    forward = {'PYTHONUNBUFFERED': os.environ.get('PYTHONUNBUFFERED', '1')}
    for item in args.env:
        name, eq, value = item.partition('=')
        if eq:
            forward[name] = value
        elif name in os.environ:
            forward[name] = os.environ[name]
    cwd = args.cwd or os.getcwd()
    for role, i, argv in roles:
        host = hosts[0] if role == 'scheduler' else hosts[i % len(hosts)]
        env = dict(forward)
        env.update(dmlc_env(role, root, port, n, s, node_host=None if args.interface else host.address,
                            interface=args.interface))
        specs.append(ProcSpec(role, i, ssh_command(host, argv, env, cwd, args.ssh_option), os.environ.copy(), host))
    return specs, (root, port)


def _name(spec):
    return 'scheduler' if spec.role == 'scheduler' else '%s %d' % (spec.role, spec.index)


def _describe_status(rc):
    if rc < 0:
        try:
            return 'status %d (%s)' % (rc, signal.Signals(-rc).name)
        except ValueError:
            return 'status %d' % rc
    return 'status %d' % rc


_PR_SET_PDEATHSIG = 1      # <linux/prctl.h>


def parent_death_signal(sig=signal.SIGKILL):
    """A ``preexec_fn`` for ``subprocess.Popen`` that makes the kernel send ``sig`` to the
    child when the thread that started it dies (``prctl(PR_SET_PDEATHSIG)``; the setting
    survives ``exec``), or None where that is not available (not Linux, no ``prctl``).

    The kernel ties the signal to the *thread* that forked the child, so the launcher must
    start and outlive its children in one thread (``Launcher.run`` does: it stops them
    before it returns). A parent that died between ``fork`` and ``prctl`` is caught by
    comparing ``getppid()`` with the parent's pid."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl    # resolved here: no dlopen after fork
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    signum = int(sig)

    def preexec():
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)     # on failure the watchdog remains
        if os.getppid() != parent:
            os._exit(128 + signum)
    return preexec


def start_watchdog(grace):
    """Start the watchdog process (``_launch_watchdog.py``) and return its ``Popen``: write
    ``"<pgid>\\n"`` to its stdin for every process group to guard, ``"done\\n"`` once the
    job is stopped. It runs in its own session and ignores SIGINT/SIGHUP/SIGTERM, so what
    takes the launcher down (a terminal's signals included) does not take it down too."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_launch_watchdog.py')
    return subprocess.Popen([sys.executable, '-I', '-S', script, repr(float(grace)), str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)


class Launcher:
    """Start ``specs`` (each in its own process group) and supervise them (see module doc)."""

    def __init__(self, specs, timeout=0, grace=5.0, log_dir=None, out=None, err=None, poll=0.1):
        self.specs = list(specs)
        self.timeout = float(timeout or 0)
        self.grace = float(grace)
        self.log_dir = log_dir
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.poll = poll
        self.procs = []             # (spec, Popen)
        self._threads = []
        self._files = []
        self._lock = threading.Lock()
        self._signal = None
        self._watchdog = None

    def _say(self, msg):
        with self._lock:
            self.err.write(msg + '\n')
            self.err.flush()

    def _pump(self, stream, prefix):
        # One thread per process: prefix every line, keep lines whole under the lock.
        for raw in iter(stream.readline, b''):
            line = raw.decode('utf-8', 'replace').rstrip('\r\n')
            with self._lock:
                self.out.write('%s %s\n' % (prefix, line))
                self.out.flush()
        stream.close()

    def _log_path(self, spec):
        fname = 'scheduler.log' if spec.role == 'scheduler' else '%s%d.log' % (spec.role, spec.index)
        return os.path.join(self.log_dir, fname)

    def _log_hint(self, spec):
        return ' (its output: %s)' % self._log_path(spec) if self.log_dir else ''

    def _start(self, spec):
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            f = open(self._log_path(spec), 'ab')
            self._files.append(f)
            stdout = f
        else:
            stdout = subprocess.PIPE
        # Own session (pgid == pid) so a stop reaches the process's children; SIGKILL from the
        # kernel if this thread dies without stopping it (parent_death_signal).
        p = subprocess.Popen(spec.argv, env=spec.env, stdin=subprocess.DEVNULL, stdout=stdout,
                             stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=parent_death_signal())
        self._guard('%d\n' % p.pid)
        if stdout is subprocess.PIPE:
            t = threading.Thread(target=self._pump, args=(p.stdout, '[%s]' % _name(spec)), daemon=True)
            t.start()
            self._threads.append(t)
        self.procs.append((spec, p))
        where = ' on %s' % spec.host.address if spec.host else ''
        self._say('launch: started %s (pid %d)%s' % (_name(spec), p.pid, where))
        return p

    def _guard(self, line):
        """Tell the watchdog a process group to guard (or ``done``)."""
        if self._watchdog is None:
            return
        try:
            self._watchdog.stdin.write(line.encode())
            self._watchdog.stdin.flush()
        except OSError:         # it died: the parent-death signal still covers the children
            self._say('launch: the watchdog process (pid %d) is gone' % self._watchdog.pid)
            self._watchdog = None

    def _on_signal(self, signum, frame):
        self._signal = signum

    def _stop(self):
        """SIGTERM to every process group we started, SIGKILL to what is left after the grace."""
        def signal_groups(sig):
            for _, p in self.procs:
                try:
                    os.killpg(p.pid, sig)      # own session: pgid == pid
                except (ProcessLookupError, PermissionError):
                    pass
        alive = [p for _, p in self.procs if p.poll() is None]
        if alive:
            signal_groups(signal.SIGTERM)
            end = time.time() + self.grace
            while time.time() < end and any(p.poll() is None for p in alive):
                time.sleep(0.05)
        signal_groups(signal.SIGKILL)        # also any children left in the groups
        for _, p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._say('launch: pid %d did not die after SIGKILL' % p.pid)

    def _finish(self):
        self._stop()
        if self._watchdog is not None:
            self._guard('done\n')
            try:
                self._watchdog.stdin.close()
            except OSError:
                pass
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
        for t in self._threads:
            t.join(timeout=2)
        for f in self._files:
            f.close()

    def run(self):
        """Start all processes, supervise, stop everything; returns the exit status."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._watchdog = start_watchdog(self.grace)
            return self._run()
        finally:
            self._finish()
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _run(self):
        t0 = time.time()
        for spec in self.specs:
            self._start(spec)
            if self._signal:
                break
        workers = [(s, p) for s, p in self.procs if s.role == 'worker']
        others = [(s, p) for s, p in self.procs if s.role != 'worker']
        done_at = None
        while True:
            if self._signal:
                name = signal.Signals(self._signal).name
                self._say('launch: received %s; stopping the job' % name)
                return 128 + self._signal
            for spec, p in workers:
                rc = p.poll()
                if rc:
                    self._say('error: %s (pid %d) exited with %s; stopping the job%s'
                              % (_name(spec), p.pid, _describe_status(rc), self._log_hint(spec)))
                    return rc if rc > 0 else 128 - rc
            workers_done = all(p.poll() is not None for _, p in workers)
            for spec, p in others:
                # Status 0 is their normal end: ps-lite lets them go once all workers
                # finalised, which can be before the worker processes have exited.
                rc = p.poll()
                if rc:
                    self._say('error: %s (pid %d) exited with %s; stopping the job%s'
                              % (_name(spec), p.pid, _describe_status(rc), self._log_hint(spec)))
                    return 1
            if workers_done:
                # Scheduler and servers leave by themselves once the workers finalised.
                done_at = done_at or time.time()
                if all(p.poll() is not None for _, p in others):
                    return 0
                if time.time() - done_at > max(self.grace, 10.0):
                    self._say('launch: workers finished but %s still running; stopping them'
                              % ', '.join(_name(s) for s, p in others if p.poll() is None))
                    return 0
            if self.timeout and time.time() - t0 > self.timeout:
                self._say('error: the job ran longer than --timeout %gs; stopping it' % self.timeout)
                return 124
            time.sleep(self.poll)


def main(argv=None):
    try:
        args = parse_args(argv)
        specs, (root, port) = plan(args)
    except LaunchError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    where = 'hosts from %s' % args.hosts if args.hosts else 'this machine (loopback)'
    print('launch: 1 scheduler, %d server(s), %d worker(s) on %s; scheduler at %s:%d'
          % (args.num_servers, args.num_workers, where, root, port), file=sys.stderr)
    return Launcher(specs, args.timeout, args.grace, args.log_dir).run()


if __name__ == '__main__':
    sys.exit(main())
