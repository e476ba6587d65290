"""How many OpenMP threads MXNet's operators use, decided before MXNet loads.

MXNet 1.9 on x86, when neither ``OMP_NUM_THREADS`` nor ``MXNET_OMP_MAX_THREADS`` is set,
gives its operators (oneDNN convolutions included) half of the processors it may run on: it
assumes two hardware threads per core. On a machine with one thread per core -- most small
cloud VMs -- that leaves half the cores idle: on a 2-core AMD EPYC VM, cifar_resnet56_v1
trained at 91 img/s by default and 142 with ``OMP_NUM_THREADS=2``, ResNet-50 at 3.85 and 6.92.

:func:`omp_threads_to_set` counts the physical cores among the usable processors (from
``/sys/devices/system/cpu/cpu*/topology``) and, when that is more than MXNet would take, the
package sets ``OMP_NUM_THREADS`` to it before importing MXNet. It never overrides a value
the user set, and changes nothing when MXNet was imported first (its choice is made at load
time) or when the topology cannot be read. This module must not import MXNet.
"""
import os
import platform
import sys

__all__ = ['usable_cpus', 'physical_cores', 'mxnet_default_threads', 'omp_threads_to_set', 'apply', 'describe', 'APPLIED']

SYS_CPU = '/sys/devices/system/cpu'
# what apply() did: the number it set, or None (set by the user, MXNet already loaded, or MXNet's own choice kept)
APPLIED = None


def usable_cpus():
    """The processor ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus, sys_cpu=SYS_CPU):
    """Distinct (package, core) pairs among ``cpus``, or None if the topology is unreadable."""
    cores = set()
    for c in cpus:
        base = os.path.join(sys_cpu, 'cpu%d' % c, 'topology')
        try:
            with open(os.path.join(base, 'core_id')) as f:
                core = f.read().strip()
            with open(os.path.join(base, 'physical_package_id')) as f:
                package = f.read().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores)


def mxnet_default_threads(n_cpus, machine=None):
    """The OpenMP thread count MXNet 1.9 picks by itself for ``n_cpus`` usable processors:
    half of them on x86 (it assumes hyper-threading), all of them elsewhere; at least 1."""
    machine = (machine or platform.machine()).lower()
    x86 = machine in ('x86_64', 'amd64', 'i386', 'i686', 'x86')
    return max(1, n_cpus // 2 if x86 else n_cpus)


def omp_threads_to_set(environ=None, cpus=None, cores=None, machine=None):
    """The ``OMP_NUM_THREADS`` value to set, or None to leave MXNet's choice: the number of
    physical cores when it exceeds what MXNet would use, and nothing is set by the user."""
    environ = os.environ if environ is None else environ
    if environ.get('OMP_NUM_THREADS') or environ.get('MXNET_OMP_MAX_THREADS'):
        return None
    cpus = usable_cpus() if cpus is None else cpus
    cores = physical_cores(cpus) if cores is None else cores
    if not cores:
        return None
    return cores if cores > mxnet_default_threads(len(cpus), machine) else None


def apply():
    """Set ``OMP_NUM_THREADS`` per :func:`omp_threads_to_set` unless MXNet is already loaded;
    returns the value set or None (also kept in ``APPLIED``)."""
    global APPLIED
    if 'mxnet' in sys.modules:
        return None
    n = omp_threads_to_set()
    if n:
        os.environ['OMP_NUM_THREADS'] = str(n)
        APPLIED = n
    return n


def describe():
    """One line for logs: the thread count the operators use and where it came from."""
    if APPLIED:
        return 'OpenMP threads: %d (one per physical core, set by gluon_transfer; MXNet alone would use %d)' % (
            APPLIED, mxnet_default_threads(len(usable_cpus())))
    if os.environ.get('OMP_NUM_THREADS'):
        return 'OpenMP threads: %s (OMP_NUM_THREADS)' % os.environ['OMP_NUM_THREADS']
    return 'OpenMP threads: MXNet\'s default'
