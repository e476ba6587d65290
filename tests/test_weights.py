"""Checked parameter loading: keys, shapes and dtypes are compared before anything is set."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import gluon

from gluon_transfer.errors import CheckpointError
from gluon_transfer.weights import load_params, describe_load


def make(classes=10, width=4):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(width, 3, in_channels=3), gluon.nn.BatchNorm(in_channels=width),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(classes, in_units=width))
    net.initialize(mx.init.Normal(1.0))
    return net


def test_roundtrip_strict(tmp_path):
    a, b = make(), make()
    f = str(tmp_path / 'a.params')
    a.save_parameters(f)
    rep = load_params(b, f)
    assert rep['loaded'] == 8 and not rep['missing'] and not rep['unexpected'] and not rep['cast']
    for (ka, pa), (kb, pb) in zip(a._collect_params_with_prefix().items(), b._collect_params_with_prefix().items()):
        assert ka == kb
        np.testing.assert_array_equal(pa.data().asnumpy(), pb.data().asnumpy())


def test_shape_mismatch_names_the_parameter(tmp_path):
    f = str(tmp_path / 'a.params')
    make(classes=10).save_parameters(f)
    with pytest.raises(CheckpointError) as e:
        load_params(make(classes=100), f)
    msg = str(e.value)
    assert "'3.weight'" in msg and '(100, 4)' in msg and '(10, 4)' in msg and 'a.params' in msg


def test_missing_and_unexpected_keys(tmp_path):
    f = str(tmp_path / 'a.params')
    net = make()
    net.save_parameters(f)
    bigger = make()
    extra = gluon.nn.Dense(2, in_units=10)
    extra.initialize()
    bigger.add(extra)
    with pytest.raises(CheckpointError, match=r"missing key '4.weight'"):
        load_params(bigger, f)
    rep = load_params(bigger, f, strict=False, allow_missing=True)
    assert rep['missing'] == ['4.weight', '4.bias']
    smaller = gluon.nn.HybridSequential()
    smaller.add(gluon.nn.Conv2D(4, 3, in_channels=3))
    smaller.initialize()
    with pytest.raises(CheckpointError, match=r"unexpected key '1.gamma'"):
        load_params(smaller, f)
    assert 'unexpected' in describe_load(load_params(smaller, f, strict=False, ignore_extra=True))


def test_float16_file_into_float32_net_is_cast_and_reported(tmp_path):
    src = make()
    src.cast('float16')
    f = str(tmp_path / 'h.params')
    src.save_parameters(f)
    dst = make()
    rep = load_params(dst, f)
    assert rep['cast'] == {'float16->float32': 4}   # conv/dense; Gluon BN stays float32
    assert dst[0].weight.data().dtype == np.float32
    np.testing.assert_array_equal(dst[0].weight.data().asnumpy(), src[0].weight.data().asnumpy().astype(np.float32))
    with pytest.raises(CheckpointError, match='cast_dtype'):
        load_params(make(), f, cast_dtype=False)


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_params(make(), str(tmp_path / 'nope.params'))
    junk = tmp_path / 'junk.params'
    junk.write_bytes(b'this is not an ndarray file')
    with pytest.raises(CheckpointError, match='not an MXNet .params file'):
        load_params(make(), str(junk))
    net = make()
    net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    net.export(str(tmp_path / 'exp'))
    with pytest.raises(CheckpointError, match='SymbolBlock.imports'):
        load_params(make(), str(tmp_path / 'exp-0000.params'))


def test_deferred_init_network_gets_shapes_from_file(tmp_path):
    f = str(tmp_path / 'a.params')
    make().save_parameters(f)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3), gluon.nn.BatchNorm(), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(10))
    net.initialize()
    load_params(net, f)
    assert net[3].weight.shape == (10, 4)
    assert net(mx.nd.ones((1, 3, 8, 8))).shape == (1, 10)
