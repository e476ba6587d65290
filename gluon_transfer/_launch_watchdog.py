"""The launcher's watchdog: ``python -I -S _launch_watchdog.py GRACE LAUNCHER_PID``.

Started by ``gluon_transfer.launch`` before any job process, in its own session. It reads
``<pgid>`` lines from stdin, one per process group the launcher starts. ``done`` means the
launcher stopped the job itself: exit. End of file without ``done`` means the launcher
died (only the launcher holds the pipe's write end): every group still alive gets SIGTERM,
and SIGKILL once ``GRACE`` seconds have passed. Standard library only, and SIGINT/SIGHUP/
SIGTERM are ignored, so whatever took the launcher down does not take this down too.
"""
import os
import signal
import sys
import time


def _alive(groups):
    out = []
    for g in groups:
        try:
            os.killpg(g, 0)
            out.append(g)
        except OSError:
            pass
    return out


def _signal(groups, sig):
    for g in groups:
        try:
            os.killpg(g, sig)
        except OSError:
            pass


def main(grace, launcher):
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    groups, buf = [], b''
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        *lines, buf = (buf + chunk).split(b'\n')
        for line in lines:
            line = line.strip()
            if line == b'done':
                return 0
            if line:
                groups.append(int(line))
    left = _alive(groups)
    if not left:
        return 0
    sys.stderr.write('launch watchdog: the launcher (pid %d) died; stopping process groups %s\n'
                     % (launcher, ' '.join(map(str, left))))
    sys.stderr.flush()
    _signal(left, signal.SIGTERM)
    end = time.time() + grace
    while left and time.time() < end:
        time.sleep(0.05)
        left = _alive(left)
    _signal(left, signal.SIGKILL)
    return 0


if __name__ == '__main__':
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2])))
