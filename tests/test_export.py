"""Deployment export (symbol + params re-import, MKLDNN option, ONNX) and the two tools."""
import importlib.util
import json
import os
import warnings

import numpy as np
import pytest
import mxnet as mx

import gluon_transfer as gt
from gluon_transfer.errors import ConfigError
from gluon_transfer.export import export_onnx, export_symbol, parse_shape
from tool_helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_net(fusion='iaff', features=('stage2', 'stage1')):
    net = gt.get_model('cifar_aff_resnet', blocks=1, channel_times=1, fusion=fusion, classes=10, features=features)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    for key, p in net._collect_params_with_prefix().items():  # non-trivial BN statistics
        if key.endswith('running_var'):
            p.set_data(mx.nd.random.uniform(0.5, 1.5, shape=p.shape))
        elif key.endswith(('running_mean', 'beta')):
            p.set_data(mx.nd.random.normal(0, 0.2, shape=p.shape))
    return net


def test_export_drops_taps_and_round_trips(tmp_path):
    net = small_net()
    prefix = str(tmp_path / 'out' / 'aff')
    res = export_symbol(net, prefix, (2, 3, 32, 32))
    assert os.path.isfile(prefix + '-symbol.json') and os.path.isfile(prefix + '-0000.params')
    assert res['taps_dropped'] and res['max_abs_diff'] is not None and res['max_abs_diff'] < 1e-5
    # one output (the logits), equal to the tapped network's logits on a fresh input
    with open(prefix + '-symbol.json') as f:
        graph = json.load(f)
    assert len(graph['heads']) == 1
    x = mx.nd.array(np.random.RandomState(7).uniform(size=(2, 3, 32, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # "cannot decide type for data": float32 is meant
        imported = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0000.params')
    np.testing.assert_allclose(imported(x).asnumpy(), net(x)[0].asnumpy(), rtol=1e-5, atol=1e-6)
    # the exported params are the network's arrays (arg:/aux: keys)
    saved = mx.nd.load(prefix + '-0000.params')
    assert len(saved) == len(net._collect_params_with_prefix())


def test_export_mkldnn_option(tmp_path):
    net = small_net(fusion='aff', features=())
    res = export_symbol(net, str(tmp_path / 'opt'), (1, 3, 32, 32), optimize=True)
    if mx.runtime.Features().is_enabled('MKLDNN'):
        assert res['optimized'] and 'kept' in res['optimize_note']
    else:
        assert not res['optimized']
    assert res['max_abs_diff'] < 1e-4


def test_parse_shape():
    assert parse_shape('1,3,32,32') == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match='N,C,H,W'):
        parse_shape('3,32,32')


def _onnxruntime_logits(onnx_file, x):
    import onnxruntime
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    sess = onnxruntime.InferenceSession(onnx_file, sess_options=opts, providers=['CPUExecutionProvider'])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize('fusion', ['iaff', 'aff', 'add'])
def test_onnx_export_matches(tmp_path, fusion):
    """AFF networks convert (their global branch's ``mean`` is ReduceMean, whose ``axes`` the
    converter writes as an attribute: valid at the declared opset 13, not at 18+), pass
    onnx.checker, and onnxruntime reproduces the Gluon network (rtol 1e-4)."""
    onnx = pytest.importorskip('onnx')
    from gluon_transfer.export import ONNX_OPSET
    net = small_net(fusion=fusion)
    res = export_symbol(net, str(tmp_path / 'm'), (2, 3, 32, 32))
    check_graph = onnx.checker.check_graph
    out = export_onnx(res['symbol'], res['params'], (2, 3, 32, 32), str(tmp_path / 'm.onnx'))
    assert onnx.checker.check_graph is check_graph                 # the converter's check is restored
    assert os.path.isfile(out['onnx']) and out['opset'] == ONNX_OPSET == 13
    model = onnx.load(out['onnx'])
    assert [(o.domain, o.version) for o in model.opset_import] == [('', 13)]
    ops = {n.op_type for n in model.graph.node}
    assert ('ReduceMean' in ops) == (fusion != 'add')
    assert [f for f in os.listdir(str(tmp_path)) if '.tmp-' in f] == []
    if importlib.util.find_spec('onnxruntime') is None:
        pytest.skip('onnxruntime not installed: conversion checked, outputs not compared')
    # includes the input BatchNorm(scale=False): fix_gamma must survive the conversion
    assert out['checked_with_onnxruntime'] and out['max_abs_diff'] < 1e-4
    x = np.random.RandomState(11).uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    want = net(mx.nd.array(x))[0].asnumpy()                      # the Gluon network (taps dropped)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(_onnxruntime_logits(out['onnx'], x), want, rtol=1e-4, atol=1e-5)


def _export_tool_onnx(tmp_path, capsys, model, extra, shape):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    tool = load_tool('export')
    net = gt.get_model(model, classes=10, **extra[1])
    mx.random.seed(1)
    net.initialize(mx.init.Xavier())
    rng = np.random.RandomState(1)
    for key, p in net._collect_params_with_prefix().items():  # non-trivial BN statistics
        if key.endswith('running_var'):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif key.endswith(('running_mean', 'beta')):
            p.set_data(mx.nd.array(rng.normal(0, 0.2, p.shape)))
    params = str(tmp_path / 'w.params')
    net.save_parameters(params)
    prefix = str(tmp_path / 'deploy' / 'net')
    rc = tool.main(['--model', model] + extra[0] + ['--classes', '10', '--params', params,
                    '--input-shape', ','.join(map(str, shape)), '--out', prefix, '--onnx'])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert 'opset 13; onnx.checker passed' in out.out and 'onnxruntime output matches MXNet' in out.out
    x = np.random.RandomState(5).uniform(-1, 1, size=shape).astype(np.float32)
    np.testing.assert_allclose(_onnxruntime_logits(prefix + '.onnx', x), net(mx.nd.array(x)).asnumpy(),
                               rtol=1e-4, atol=1e-5)


def test_export_tool_onnx_cifar_aff(tmp_path, capsys):
    """``tools/export.py --onnx`` on a CIFAR AFF network (the default MKLDNN export plus the plain
    graph converted for ONNX)."""
    _export_tool_onnx(tmp_path, capsys, 'cifar_aff_resnet',
                      (['--blocks', '1', '--channel-times', '1', '--fusion', 'aff'],
                       dict(blocks=1, channel_times=1, fusion='aff')),
                      (1, 3, 32, 32))


@pytest.mark.slow
def test_export_tool_onnx_imagenet_aff_resnet50(tmp_path, capsys):
    _export_tool_onnx(tmp_path, capsys, 'aff_resnet50', ([], {}), (1, 3, 64, 64))


def test_onnx_gated_afs_network_is_a_clear_error(tmp_path):
    """The converter has no ``sort`` (the gates' winner-take-all): a one-line ConfigError, no
    file left behind, and onnx's checker restored."""
    onnx = pytest.importorskip('onnx')
    net = gt.get_model('afs_resnet_v1b', layers=[1, 1, 1, 1], classes=4, density=0.8)
    net.initialize(mx.init.Xavier())
    res = export_symbol(net, str(tmp_path / 'afs'), (1, 3, 32, 32))
    check_graph = onnx.checker.check_graph
    with pytest.raises(ConfigError, match=r'^ONNX export of .*afs-symbol.json failed: .*\bsort\b'):
        export_onnx(res['symbol'], res['params'], (1, 3, 32, 32), str(tmp_path / 'afs.onnx'))
    assert onnx.checker.check_graph is check_graph
    assert not [f for f in os.listdir(str(tmp_path)) if f.endswith('.onnx') or '.tmp-' in f]


def test_onnx_missing_is_clear(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == 'onnx':
            raise ImportError('no onnx')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_onnx)
    with pytest.raises(ConfigError, match='onnx>=1.15,<1.19'):
        export_onnx('a-symbol.json', 'a-0000.params', (1, 3, 32, 32), 'a.onnx')


def test_export_tool(tmp_path, capsys):
    tool = load_tool('export')
    net = small_net(fusion='aff', features=())
    params = str(tmp_path / 'w.params')
    net.save_parameters(params)
    prefix = str(tmp_path / 'exp' / 'net')
    rc = tool.main(['--model', 'cifar_aff_resnet', '--blocks', '1', '--channel-times', '1', '--fusion', 'ASKCFuse',
                    '--classes', '10', '--params', params, '--input-shape', '1,3,32,32', '--out', prefix])
    out = capsys.readouterr().out
    assert rc == 0 and 'loaded' in out and 'outputs match' in out
    assert os.path.isfile(prefix + '-symbol.json')
    # a checkpoint of another model: one-line error naming the key
    rc = tool.main(['--model', 'cifar_aff_resnet', '--blocks', '1', '--channel-times', '1', '--fusion', 'iaff',
                    '--classes', '10', '--params', params, '--input-shape', '1,3,32,32', '--out', prefix])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: ') and 'local_att2' in err and err.count('\n') == 1
    rc = tool.main(['--model', 'cifar_aff_resnet', '--out', prefix])
    assert rc == 2 and '--params' in capsys.readouterr().err


def _graph_ops(prefix):
    with open(prefix + '-symbol.json') as f:
        return {node['op'] for node in json.load(f)['nodes']}


@pytest.mark.skipif(not mx.runtime.Features().is_enabled('MKLDNN'), reason='needs an MKLDNN build')
def test_export_tool_fused_by_default(tmp_path, capsys):
    """tools/export.py writes the oneDNN-fused graph unless --no-optimize; either file, re-imported,
    reproduces the Gluon network (imperative, inference mode) on a new input."""
    tool = load_tool('export')
    net = small_net(fusion='aff', features=())
    params = str(tmp_path / 'w.params')
    net.save_parameters(params)
    x = mx.nd.array(np.random.RandomState(3).uniform(-1, 1, size=(2, 3, 32, 32)))
    want = net(x).asnumpy()  # not hybridized: the Gluon blocks themselves
    common = ['--model', 'cifar_aff_resnet', '--blocks', '1', '--channel-times', '1', '--fusion', 'aff',
              '--classes', '10', '--params', params, '--input-shape', '2,3,32,32']
    for extra, fused in (([], True), (['--no-optimize'], False)):
        prefix = str(tmp_path / ('fused' if fused else 'plain'))
        assert tool.main(common + ['--out', prefix] + extra) == 0
        out = capsys.readouterr().out
        ops = _graph_ops(prefix)
        assert ('_sg_mkldnn_conv' in ops) == fused, ops
        assert ('MKLDNN graph kept' in out) == fused
        assert 'gt_aff_fuse' not in ops  # exports never need the kernel library
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)
            imported = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0000.params')
        np.testing.assert_allclose(imported(x).asnumpy(), want, rtol=1e-4, atol=1e-5)
