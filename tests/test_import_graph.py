"""The package's import graph, read from the source with ``ast`` (module-level and
function-level imports alike, since a function-level import is still a dependency):
no import cycle inside gluon_transfer, the losses import nothing above them, and the
fine-tune driver names no method."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'gluon_transfer'


def _modules():
    """``{dotted name: path}`` of every module of the package (``pkg.__init__`` as ``pkg``)."""
    out = {}
    base = os.path.join(ROOT, PACKAGE)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != '__pycache__']
        rel = os.path.relpath(dirpath, ROOT).replace(os.sep, '.')
        for f in filenames:
            if f.endswith('.py'):
                name = rel if f == '__init__.py' else rel + '.' + f[:-3]
                out[name] = os.path.join(dirpath, f)
    return out


def _imports(name, path, modules):
    """Names of the package's modules that module ``name`` imports anywhere in its body."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith('__init__.py')
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + '.'):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split('.')
                if not is_pkg:
                    parts = parts[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = '.'.join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ''
            if not (base == PACKAGE or base.startswith(PACKAGE + '.')):
                continue
            for alias in node.names:
                sub = base + '.' + alias.name
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope='module')
def graph():
    modules = _modules()
    assert len(modules) > 30, modules
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path(graph, start, goal):
    """One import chain start -> ... -> goal (breadth first), for the failure message."""
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    chain, v = [], goal
    while v is not None:
        chain.append(v)
        v = prev.get(v)
    return ' -> '.join(reversed(chain))


def test_the_graph_sees_relative_and_function_level_imports(graph):
    # a module-level relative import, a function-level one, and `from . import submodule`
    assert 'gluon_transfer.registry' in graph['gluon_transfer.losses.l2sp']
    assert 'gluon_transfer.data' in graph['gluon_transfer.cli']            # inside cli.run
    assert 'gluon_transfer.losses.afd' in graph['gluon_transfer.losses']
    # a synthetic cycle is found
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_import_cycle_inside_the_package(graph):
    cycles = _cycles(graph)
    msgs = []
    for comp in cycles:
        a = comp[0]
        b = next(w for w in sorted(graph[a]) if w in comp)
        msgs.append('%s: e.g. %s and back %s' % (', '.join(comp), _path(graph, a, b), _path(graph, b, a)))
    assert not cycles, 'import cycles:\n' + '\n'.join(msgs)


LOSSES_MAY_IMPORT = ('gluon_transfer.losses', 'gluon_transfer.registry', 'gluon_transfer.errors')


def test_losses_import_only_the_registry_and_each_other(graph):
    """Losses import only mxnet, numpy and the registry (and its errors): never the engine,
    the data layer, the methods, the CLI or anything else of the package."""
    bad = []
    for name, deps in sorted(graph.items()):
        if name == 'gluon_transfer.losses' or name.startswith('gluon_transfer.losses.'):
            for dep in sorted(deps):
                if not any(dep == ok or dep.startswith(ok + '.') for ok in LOSSES_MAY_IMPORT):
                    bad.append('%s imports %s' % (name, dep))
    assert not bad, '\n'.join(bad)
    for forbidden in ('engine', 'data', 'methods', 'cli', 'finetune'):
        prefix = 'gluon_transfer.' + forbidden
        assert not any(d == prefix or d.startswith(prefix + '.')
                       for n, deps in graph.items() if n.startswith('gluon_transfer.losses') for d in deps)


def test_the_fine_tune_driver_names_no_method(graph):
    """finetune.py looks methods up in the registry: it imports the methods package and its
    shared base, never one method's module."""
    modules = set(graph)
    methods = {m for m in modules if m.startswith('gluon_transfer.methods.')} - {'gluon_transfer.methods.base'}
    assert methods, 'no method modules found'
    assert not graph['gluon_transfer.finetune'] & methods, graph['gluon_transfer.finetune'] & methods
    assert not any(d.startswith('gluon_transfer.afds') for d in graph['gluon_transfer.finetune'])
