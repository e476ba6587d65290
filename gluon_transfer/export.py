"""Deployment export: hybridized symbol + params (checked by re-import) and optional ONNX.

``export_symbol`` writes ``<prefix>-symbol.json`` and ``<prefix>-0000.params`` for the
*student alone*: a network built with feature taps is first rebuilt with ``features=()``
(parameters copied), so the exported graph has one output, the logits. The files are then
re-imported with ``mx.gluon.SymbolBlock.imports`` and the re-imported outputs are compared
with the Gluon network's on a fixed random input (inference mode, running BN statistics).

``export_onnx`` converts such a pair with mxnet 1.9.1's ONNX converter (needs ``onnx<1.19``;
see requirements-onnx.txt) at ONNX opset 13 (:data:`ONNX_OPSET`), runs ``onnx.checker`` and,
when ``onnxruntime`` is installed, compares its outputs with MXNet's.

Why a fixed opset: ``mx.onnx.export_model`` labels the model with the newest opset of the
installed onnx package (18 and above for onnx >= 1.13) but its operator translations stop at
opset 13, so ops that changed later come out in their opset-13 form. ``mean`` (the AFF global
branch) becomes ``ReduceMean`` with an ``axes`` attribute, which opset 18 moved to an input:
onnx >= 1.13 rejects such a model ("Unrecognized attribute: axes for operator ReduceMean").
Declaring opset 13 makes the file say what the converter wrote.
"""
import contextlib
import os
import warnings

import numpy as np
import mxnet as mx

from .errors import CheckpointError, ConfigError
from .nn import fused
from .models.common import rebuild_without_taps

__all__ = ['export_symbol', 'export_onnx', 'parse_shape', 'ONNX_OPSET']

# The newest opset mxnet 1.9.1's ONNX translations are written for (see the module docstring).
ONNX_OPSET = 13


def parse_shape(text):
    """``'1,3,32,32'`` -> ``(1, 3, 32, 32)``; ConfigError on anything else."""
    try:
        shape = tuple(int(v) for v in str(text).replace('x', ',').split(','))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError('input shape must be N,C,H,W with positive integers; got %r' % (text,))
    return shape


def _probe(input_shape, dtype, ctx, seed):
    rng = np.random.RandomState(seed)
    return mx.nd.array(rng.uniform(-1, 1, size=input_shape), ctx=ctx, dtype=dtype)


def _compare(what, ref, out, rtol, atol):
    ref, out = ref.asnumpy().astype(np.float64), out.asnumpy().astype(np.float64)
    if ref.shape != out.shape:
        raise CheckpointError('%s output has shape %s but the network gives %s' % (what, out.shape, ref.shape))
    diff = float(np.abs(ref - out).max())
    if not np.allclose(out, ref, rtol=rtol, atol=atol):
        raise CheckpointError('%s output differs from the network by up to %.3g (rtol=%g, atol=%g)'
                              % (what, diff, rtol, atol))
    return diff


def export_symbol(net, prefix, input_shape, ctx=None, epoch=0, dtype='float32', check=True, optimize=False,
                  rtol=1e-4, atol=1e-5, seed=0, log=None):
    """Export ``net`` (initialised, any mode) for deployment.

    Parameters
    ----------
    net : HybridBlock
        Our networks (feature taps are dropped) or any HybridBlock with one input.
    prefix : str
        Output prefix; the folder is created.
    input_shape : tuple (N, C, H, W)
        Shape used to trace the graph and for the equality check.
    optimize : bool
        Partition the graph for the oneDNN (``MKLDNN``) backend (``optimize_for``) before
        export -- the CPU inference fast path (conv+BN+ReLU+add fusion; tools/export.py's
        default, see docs/benchmarks.md). It is kept only if its
        outputs match the plain graph within ``rtol/atol``; otherwise the plain graph is
        exported and the report says why. Exported optimized symbols need an MKLDNN-enabled
        MXNet and cannot be converted to ONNX.
    check : bool
        Re-import the files with ``SymbolBlock.imports`` and compare outputs.

    Returns
    -------
    dict: ``symbol``, ``params`` (paths), ``input_shape``, ``optimized`` (bool),
    ``optimize_note``, ``max_abs_diff`` (re-import vs network; None without ``check``),
    ``taps_dropped`` (bool).

    AFF/iAFF blocks are traced with their operator composition, not the fused kernel of
    ``gluon_transfer.nn.fused`` (an external library the deployment side would need), so the
    network is left hybridized with that graph.
    """
    with fused.disabled():  # the exported graph must load without the AFF kernel library
        return _export_symbol(net, prefix, input_shape, ctx, epoch, dtype, check, optimize, rtol, atol, seed, log)


def _export_symbol(net, prefix, input_shape, ctx, epoch, dtype, check, optimize, rtol, atol, seed, log):
    say = log or (lambda msg: None)
    ctx = ctx or mx.cpu()
    student = rebuild_without_taps(net)
    dropped = student is not net
    if dropped:
        say('rebuilt %s without feature taps %s for export' % (type(net).__name__, list(net.features_requested)))
    x = _probe(input_shape, dtype, ctx, seed)
    student.hybridize(static_alloc=True, static_shape=True)
    ref = student(x)
    if isinstance(ref, (list, tuple)):
        raise ConfigError('export needs a single-output network; %s returns %d outputs' % (type(net).__name__, len(ref)))
    optimized, note = False, ''
    if optimize:
        if not mx.runtime.Features().is_enabled('MKLDNN'):
            note = 'this MXNet build has no MKLDNN; exported the plain graph'
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    student.optimize_for(x, backend='MKLDNN', static_alloc=True, static_shape=True)
                diff = _compare('MKLDNN-optimized graph', ref, student(x), rtol, atol)
                optimized, note = True, 'MKLDNN graph kept (max |diff| %.3g vs plain graph)' % diff
            except (CheckpointError, mx.base.MXNetError) as err:
                note = 'MKLDNN graph not used: %s' % str(err).splitlines()[0]
                student.hybridize(active=False)
                student.hybridize(static_alloc=True, static_shape=True)
                student(x)
        say(note)
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    student.export(prefix, epoch=epoch)
    sym_file, params_file = '%s-symbol.json' % prefix, '%s-%04d.params' % (prefix, epoch)
    say('wrote %s and %s' % (sym_file, params_file))
    diff = None
    if check:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            imported = mx.gluon.SymbolBlock.imports(sym_file, ['data'], params_file, ctx=ctx)
        if dtype != 'float32':
            imported.cast(dtype)
        diff = _compare('re-imported symbol', ref, imported(x), rtol, atol)
        say('re-imported with SymbolBlock.imports: outputs match (max |diff| %.3g)' % diff)
    return {'symbol': sym_file, 'params': params_file, 'input_shape': tuple(input_shape), 'optimized': optimized,
            'optimize_note': note, 'max_abs_diff': diff, 'taps_dropped': dropped}


def _require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError('ONNX export needs the onnx package (onnx>=1.15,<1.19): '
                          'pip install -r requirements-onnx.txt') from None
    if not hasattr(mx, 'onnx') or not hasattr(mx.onnx, 'export_model'):
        raise ConfigError('this MXNet build has no mx.onnx.export_model')


def _symbol_for_onnx(symbol_file, params_file):
    """Load a checkpoint for the ONNX exporter. MXNet's BatchNorm with ``fix_gamma=True``
    (Gluon ``scale=False``, e.g. the CIFAR AFF-ResNet input BN) computes with gamma = 1 whatever
    the stored array holds, but the exporter copies the stored gamma; so those gammas are set
    to ones here. Returns ``(symbol, {name: NDArray}, number of gammas fixed)``."""
    import json
    sym = mx.sym.load(symbol_file)
    params = {}
    for key, value in mx.nd.load(params_file).items():
        params[key.split(':', 1)[1] if key.startswith(('arg:', 'aux:')) else key] = value
    graph = json.loads(sym.tojson())
    nodes = graph['nodes']
    fixed = 0
    for node in nodes:
        attrs = node.get('attrs', node.get('param', {})) or {}
        if node['op'] == 'BatchNorm' and str(attrs.get('fix_gamma', 'True')).lower() in ('true', '1'):
            gamma = nodes[node['inputs'][1][0]]['name']
            if gamma in params:
                params[gamma] = mx.nd.ones_like(params[gamma])
                fixed += 1
    return sym, params, fixed


@contextlib.contextmanager
def _graph_check_at(opset):
    """Within this block ``onnx.checker.check_graph`` validates against ``opset``: the converter
    checks its graph with onnx's default context (the newest opset), which would reject the
    opset-13 operators it writes before the model even declares its opset."""
    from onnx import checker, helper
    ctx = checker.C.CheckerContext()
    ctx.opset_imports = {'': opset}
    ctx.ir_version = helper.find_min_ir_version_for([helper.make_opsetid('', opset)], ignore_unknown=True)
    original = checker.check_graph

    def check_graph(graph, _ctx=None, *args, **kwargs):
        return original(graph, ctx, *args, **kwargs)
    checker.check_graph = check_graph
    try:
        yield
    finally:
        checker.check_graph = original


def _convert_to_onnx(sym, params, input_shape, onnx_file):
    """``mx.onnx.export_model``'s conversion with the opset pinned to :data:`ONNX_OPSET` (the
    public function takes no opset); the file is written atomically. The IR version is the
    lowest one that carries that opset, so older onnxruntime builds load the file too."""
    import onnx
    from onnx import TensorProto, helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    with _graph_check_at(ONNX_OPSET):
        graph = MXNetGraph().create_onnx_graph_proto(sym, params, in_shapes=[tuple(input_shape)],
                                                     in_types=[TensorProto.FLOAT], opset_version=ONNX_OPSET,
                                                     dynamic=False)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', ONNX_OPSET)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    tmp = '%s.tmp-%d' % (onnx_file, os.getpid())
    try:
        onnx.save(model, tmp)
        os.replace(tmp, onnx_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_onnx(symbol_file, params_file, input_shape, onnx_file, check=True, rtol=1e-4, atol=1e-5, seed=0,
                log=None):
    """Convert an exported symbol/params pair to ONNX (opset :data:`ONNX_OPSET`).

    Runs ``onnx.checker.check_model``; with ``check`` and ``onnxruntime`` installed, compares
    onnxruntime's output with ``SymbolBlock.imports``' on a fixed random input.
    Returns a dict: ``onnx`` (path), ``opset``, ``checked_with_onnxruntime`` (bool), ``max_abs_diff``.
    """
    say = log or (lambda msg: None)
    _require_onnx()
    import onnx
    os.makedirs(os.path.dirname(os.path.abspath(onnx_file)), exist_ok=True)
    sym, params, fixed = _symbol_for_onnx(symbol_file, params_file)
    if fixed:
        say('set gamma = 1 in %d fix_gamma BatchNorm(s) for ONNX (MXNet ignores their stored gamma)' % fixed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            _convert_to_onnx(sym, params, input_shape, onnx_file)
        except Exception as err:  # the converter raises bare exceptions for unsupported ops
            raise ConfigError('ONNX export of %s failed: %s' % (symbol_file, str(err).splitlines()[0])) from None
    try:
        onnx.checker.check_model(onnx.load(onnx_file))
    except onnx.checker.ValidationError as err:
        raise ConfigError('ONNX export of %s: %s fails onnx.checker: %s'
                          % (symbol_file, onnx_file, str(err).strip().splitlines()[0])) from None
    say('wrote %s (opset %d; onnx.checker passed)' % (onnx_file, ONNX_OPSET))
    result = {'onnx': onnx_file, 'opset': ONNX_OPSET, 'checked_with_onnxruntime': False, 'max_abs_diff': None}
    if not check:
        return result
    try:
        import onnxruntime
    except ImportError:
        say('onnxruntime not installed: outputs not compared')
        return result
    x = _probe(input_shape, 'float32', mx.cpu(), seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ref = mx.gluon.SymbolBlock.imports(symbol_file, ['data'], params_file)(x)
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3  # MXNet's exporter lists initializers as inputs: one warning per array
    sess = onnxruntime.InferenceSession(onnx_file, sess_options=opts, providers=['CPUExecutionProvider'])
    out = sess.run(None, {sess.get_inputs()[0].name: x.asnumpy()})[0]
    result['max_abs_diff'] = _compare('onnxruntime', ref, mx.nd.array(out), rtol, atol)
    result['checked_with_onnxruntime'] = True
    say('onnxruntime output matches MXNet (max |diff| %.3g)' % result['max_abs_diff'])
    return result
