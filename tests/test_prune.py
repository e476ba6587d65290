"""Pruned export of AFS networks: equal outputs, reduced widths, plain ConvBN when no
dynamic channel is left, symbol export and ``tools/export.py --prune``."""
import json
import warnings

import numpy as np
import pytest
import mxnet as mx

from gluon_transfer.errors import ConfigError
from gluon_transfer.export import export_symbol
from gluon_transfer.macs import afs_macs, count_macs
from gluon_transfer.models.afs_resnet import AFSResNetV1b, afs_gates
from gluon_transfer.prune import prune_afs, verify_pruned
from tool_helpers import load_tool



def _randomise_bn(net, rng):
    """Non-trivial BatchNorm running statistics and shifts, so folding them is tested."""
    for name, p in net.collect_params().items():
        if name.endswith('running_var'):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith(('running_mean', 'beta')):
            p.set_data(mx.nd.array(rng.uniform(-0.1, 0.3, p.shape)))


def _masked_net(density, rng, p_keep=0.6, p_dyn=0.5, gate_init='random'):
    mx.random.seed(1)
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, density=density, gate_init=gate_init)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    _randomise_bn(net, rng)
    for _, _, _, gate, _, _ in afs_gates(net):
        c = gate.channels
        gate.mask_m.set_data(mx.nd.array(rng.rand(c) < p_keep))
        gate.mask_s.set_data(mx.nd.array(rng.rand(c) < p_dyn))
        gate.gamma.set_data(mx.nd.array(rng.uniform(0.2, 1.5, c)))
    return net


@pytest.mark.parametrize('density', [1.0, 0.6])
def test_pruned_equals_gated(density, rng):
    net = _masked_net(density, rng)
    pruned = prune_afs(net)
    x = mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 32)))
    ref = net(x).asnumpy()
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(pruned(x).asnumpy(), ref, rtol=1e-4, atol=1e-5)
    net.hybridize()
    pruned.hybridize()
    np.testing.assert_allclose(pruned(x).asnumpy(), ref, rtol=1e-4, atol=1e-5)
    # widths are the kept channel counts; conv3 keeps the residual width
    for li in range(1, 5):
        b, pb = getattr(net, 'layer%d' % li)[0], getattr(pruned, 'layer%d' % li)[0]
        for k in (1, 2):
            kept = int(getattr(b, 'gate%d' % k).mask_m.data().asnumpy().sum())
            assert getattr(pb, 'conv%d' % k)._channels == kept
        assert pb.conv3._channels == b.conv3._channels
    # the pruned network costs what was removed (conv3 rows stay, dense layout)
    mc = afs_macs(net, (1, 3, 32, 32))
    assert count_macs(pruned, (1, 3, 32, 32))['total'] < mc['baseline']


def test_all_static_gives_plain_network_and_exports(tmp_path, rng):
    net = _masked_net(0.9, rng, p_dyn=0.0)
    pruned = prune_afs(net)
    assert all(pb.gate1 is None and pb.gate2 is None and pb.gate3 is None
               for pb in (pruned.layer1[0], pruned.layer2[0], pruned.layer3[0], pruned.layer4[0]))
    assert verify_pruned(net, pruned, (2, 3, 32, 32)) < 1e-4
    res = export_symbol(pruned, str(tmp_path / 'pruned'), (2, 3, 32, 32))
    with open(res['symbol']) as f:
        ops = {n['op'] for n in json.load(f)['nodes']}
    assert 'argsort' not in ops and 'FullyConnected' in ops       # only the classifier is dense
    # no gate FC, all channels static: counted MACs = static accounting + kept conv3 rows
    assert count_macs(pruned, (1, 3, 32, 32))['dense'] == 2048 * 10


def test_disabled_gates_prune_nothing(rng):
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, gates=False)
    net.initialize(mx.init.Xavier())
    pruned = prune_afs(net)
    assert pruned.layer2[0].conv1._channels == 128 and pruned.layer2[0].gate1 is None
    assert verify_pruned(net, pruned, (2, 3, 32, 32)) < 1e-5


def test_prune_rejects_plain_networks():
    from gluoncv.model_zoo import resnet50_v1b
    with pytest.raises(ConfigError, match='AFS network'):
        prune_afs(resnet50_v1b())


def test_export_tool_prune(tmp_path, rng, capsys):
    net = _masked_net(1.0, rng)
    params = str(tmp_path / 'afs.params')
    net.save_parameters(params)
    export_tool = load_tool('export')
    out = str(tmp_path / 'exp' / 'afs')
    rc = export_tool.main(['--model', 'afs_resnet_v1b', '--kw', 'layers=[1,1,1,1]', '--kw', 'gate_init="random"',
                           '--classes', '10', '--params', params, '--input-shape', '2,3,32,32', '--out', out,
                           '--prune'])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert 'pruned network equals the gated one' in text
    if mx.runtime.Features().is_enabled('MKLDNN'):
        # runtime gates inside the fused oneDNN graph (refused before the residual + o3 order)
        assert 'MKLDNN graph kept' in text, text
    with open(out + '-pruned.json') as f:
        cfg = json.load(f)['kwargs']
    rebuilt = AFSResNetV1b(**cfg)
    rebuilt.load_parameters(out + '-pruned.params')
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    np.testing.assert_allclose(rebuilt(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')          # SymbolBlock.imports: "cannot decide type" of data
        imported = mx.gluon.SymbolBlock.imports(out + '-symbol.json', ['data'], out + '-0000.params')
    np.testing.assert_allclose(imported(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-5)
    rc = export_tool.main(['--model', 'resnet18_v1b', '--random-init', '--input-shape', '1,3,32,32', '--out', out,
                           '--prune'])
    assert rc == 2 and 'AFS network' in capsys.readouterr().err


def test_export_tool_reads_recorded_gate_norm(tmp_path, rng, capsys):
    """A ``--afs`` run with L2-normalised gate inputs records ``gate_input_norm`` in its
    checkpoint JSON; tools/export.py rebuilds that function from the weights file alone."""
    mx.random.seed(2)
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, density=0.5, gate_init='random', gate_input_norm='l2')
    net.initialize(mx.init.Xavier())
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    net(x)
    for key, p in net._collect_params_with_prefix().items():   # gates far from uniform
        if key.endswith('fc.weight') and '.gate' in key:
            p.set_data(mx.nd.array(rng.uniform(-5, 5, p.shape)))
    want = net(x).asnumpy()
    params = str(tmp_path / 'run-0003.params')
    net.save_parameters(params)
    with open(str(tmp_path / 'run-0003.json'), 'w') as f:
        json.dump({'afds': {'gate_input_norm': 'l2', 'phase': 2}}, f)
    export_tool = load_tool('export')
    out = str(tmp_path / 'exp' / 'afs')
    common = ['--model', 'afs_resnet_v1b', '--kw', 'layers=[1,1,1,1]', '--kw', 'density=0.5', '--classes', '10',
              '--params', params, '--input-shape', '2,3,32,32', '--no-optimize']
    assert export_tool.main(common + ['--out', out]) == 0
    assert "gate_input_norm='l2' as recorded in" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        imported = mx.gluon.SymbolBlock.imports(out + '-symbol.json', ['data'], out + '-0000.params')
    np.testing.assert_allclose(imported(x).asnumpy(), want, rtol=1e-4, atol=1e-5)
    # the raw-input network is a different function on the same weights: the record matters
    raw = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, density=0.5, gate_init='random')
    raw.load_parameters(params)
    assert np.abs(raw(x).asnumpy() - want).max() > 0.1 * np.abs(want).max()
    # an explicit --kw wins over the record
    assert export_tool.main(common + ['--kw', "gate_input_norm='none'", '--out', out + 'b']) == 0
    assert 'as recorded in' not in capsys.readouterr().out


# ---------------------------------------------------------------------- basic blocks
def _masked_basic(kind, density, rng, p_keep=0.6, p_dyn=0.5):
    """A tiny AFS basic-block network (CIFAR ResNet-v1 or ResNet-v1b, one block per stage) with
    random masks, gate constants and BN statistics."""
    from gluon_transfer.models.afs_resnet import AFSCIFARResNetV1
    mx.random.seed(1)
    if kind == 'cifar':
        net = AFSCIFARResNetV1(layers=[1, 1, 1], classes=5, density=density, gate_init='random')
    else:
        net = AFSResNetV1b(layers=[1, 1, 1, 1], block='basic', classes=5, density=density, gate_init='random')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    _randomise_bn(net, rng)
    for _, _, _, gate, _, _ in afs_gates(net):
        c = gate.channels
        m = (rng.rand(c) < p_keep).astype(np.float32)
        m[0] = 1
        gate.mask_m.set_data(mx.nd.array(m))
        gate.mask_s.set_data(mx.nd.array(rng.rand(c) < p_dyn))
        gate.gamma.set_data(mx.nd.array(rng.uniform(0.2, 1.5, c)))
    return net


@pytest.mark.parametrize('kind,density', [('cifar', 1.0), ('cifar', 0.6), ('v1b', 0.7)])
def test_basic_block_pruned_equals_masked(kind, density, rng):
    net = _masked_basic(kind, density, rng)
    pruned = prune_afs(net)
    x = mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 32)))
    ref = net(x).asnumpy()
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(pruned(x).asnumpy(), ref, rtol=1e-4, atol=1e-5)
    net.hybridize()
    pruned.hybridize()
    np.testing.assert_allclose(pruned(x).asnumpy(), ref, rtol=1e-4, atol=1e-5)
    # conv1 keeps the channels with m = 1; conv2 keeps the shortcut's width (its pruned rows are zero)
    blocks = dict(zip([n for n, _, k, _, _, _ in afs_gates(net) if k == 1],
                      [b for _, b, k, _, _, _ in afs_gates(pruned) if k == 1]))
    for name, b, k, gate, conv, _ in afs_gates(net):
        pconv = blocks[name[:-1] + '1'].convbn(k)[0]
        if k == 1:
            assert pconv._channels == int(gate.mask_m.data().asnumpy().sum()) < conv._channels
        else:
            assert pconv._channels == conv._channels
            dead = gate.mask_m.data().asnumpy() == 0
            assert dead.any() and np.all(pconv.weight.data().asnumpy()[dead] == 0)


def test_export_tool_prunes_a_cifar_basic_block_network(tmp_path, rng, capsys):
    net = _masked_basic('cifar', 0.8, rng, p_dyn=0.0)
    params = str(tmp_path / 'afs.params')
    net.save_parameters(params)
    export_tool = load_tool('export')
    out = str(tmp_path / 'exp' / 'afs')
    rc = export_tool.main(['--model', 'afs_cifar_resnet_v1', '--kw', 'layers=[1,1,1]', '--classes', '5',
                           '--params', params, '--input-shape', '2,3,32,32', '--out', out, '--prune'])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert 'pruned network equals the gated one' in text
    with open(out + '-pruned.json') as f:
        saved = json.load(f)
    assert saved['class'] == 'gluon_transfer.models.afs_resnet.AFSCIFARResNetV1'
    assert all(b['gated'] == [False, False] for b in saved['kwargs']['block_config'])   # all static: plain ConvBNs
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        imported = mx.gluon.SymbolBlock.imports(out + '-symbol.json', ['data'], out + '-0000.params')
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    np.testing.assert_allclose(imported(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-5)
