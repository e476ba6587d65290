"""Reading .pth files without torch (restricted unpickler) and the functional-zoo ->
GluonCV key maps, checked against numpy forwards of the folded source networks."""
import collections
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import mxnet as mx

import gluon_transfer as gt
from gluon_transfer.convert_torch import read_pth, flatten_state, convert_state_dict, detect_arch, convert_file
from gluon_transfer.errors import CheckpointError
from gluon_transfer.weights import load_params

import numpy_ref as R
import pth_writer
from tool_helpers import load_tool

FIX = os.path.join(os.path.dirname(__file__), 'fixtures')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- reading
@pytest.mark.parametrize('name', ['tensors_zip.pth', 'tensors_legacy.pth'])
def test_reads_real_torch_files(name):
    """Fixtures written by torch 2.13 (tests/fixtures/make_pth_fixtures.py)."""
    d = read_pth(os.path.join(FIX, name))
    assert isinstance(d, collections.OrderedDict)
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    want = {
        'conv0': np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3) / np.float32(10),
        'transposed': base.T, 'sliced': base[1:3, 2:5], 'shared_flat': base.ravel(),
        'double': np.arange(5, dtype=np.float64) * 0.5,
        'half': np.array([1.5, -2.25, 65504.0], np.float16),
        'bfloat16': np.array([1.0, -3.5, 0.15625], np.float32),
        'long': np.array([1, -2, 3000000000], np.int64), 'uint8': np.array([0, 7, 255], np.uint8),
        'bool': np.array([True, False, True]), 'scalar': np.array(3.25, np.float32),
        'empty': np.zeros((0, 4), np.float32), 'param': np.full((2, 2), -1.0, np.float32),
    }
    assert list(d) == list(want)
    for k, v in want.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape, k
        np.testing.assert_array_equal(d[k], v, err_msg=k)
    assert d['transposed'].flags['C_CONTIGUOUS'] and d['transposed'].flags['WRITEABLE']


class _Open:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_malicious_pickles_are_refused_never_run(tmp_path):
    with pytest.raises(CheckpointError, match=r'refusing to load .*malicious.pth.*posix.system|os.system'):
        read_pth(os.path.join(FIX, 'malicious.pth'))
    sentinel = tmp_path / 'pwned'
    payload = pickle.dumps(collections.OrderedDict(w=_Open(str(sentinel))), protocol=2)
    zpath = tmp_path / 'evil.pth'
    with zipfile.ZipFile(zpath, 'w') as zf:
        zf.writestr('evil/data.pkl', payload)
    lpath = tmp_path / 'evil_legacy.pth'
    with open(lpath, 'wb') as f:
        f.write(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
                + pickle.dumps({}, protocol=2) + payload)
    for path in (zpath, lpath):
        with pytest.raises(CheckpointError, match=r"references (builtins|io)\.open"):
            read_pth(str(path))
    assert not sentinel.exists()


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        read_pth(str(tmp_path / 'nope.pth'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'\x00' * 100)
    with pytest.raises(CheckpointError, match='junk.pth'):
        read_pth(str(junk))
    z = tmp_path / 'z.pth'
    with zipfile.ZipFile(z, 'w') as zf:
        zf.writestr('a.txt', 'x')
    with pytest.raises(CheckpointError, match='no <name>/data.pkl'):
        read_pth(str(z))
    trunc = tmp_path / 'trunc.pth'
    pth_writer.save_legacy({'a': np.ones(100, np.float32)}, str(trunc))
    trunc.write_bytes(trunc.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match='truncated'):
        read_pth(str(trunc))
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        flatten_state({'w': np.zeros(2), 'epoch': 3}, 'f')
    assert list(flatten_state({'params': {'w': np.zeros(2)}, 'epoch': 3})) == ['w']


# ----------------------------------------------------------------- synthetic functional-zoo dicts
def _conv(rng, o, i, k):
    return rng.standard_normal((o, i, k, k), dtype=np.float32) * np.float32(np.sqrt(1.0 / (i * k * k)))


def at_resnet18(rng):
    """Key names and shapes of resnet-18-at-export (reference notes 1.6)."""
    sd = collections.OrderedDict()
    aff = lambda c: ((rng.uniform(0.5, 1.5, c)).astype(np.float32), (rng.normal(0, 0.1, c)).astype(np.float32))  # noqa
    sd['conv0'] = _conv(rng, 64, 3, 7)
    sd['affine0.a'], sd['affine0.b'] = aff(64)
    cin = 64
    for g, c in enumerate((64, 128, 256, 512)):
        for b in range(2):
            p = 'group%d.block%d.' % (g, b)
            i = cin if b == 0 else c
            if not (g == 0 and b == 0):
                sd[p + 'affine0.a'], sd[p + 'affine0.b'] = aff(i)
            sd[p + 'conv0'] = _conv(rng, c, i, 3)
            sd[p + 'affine1.a'], sd[p + 'affine1.b'] = aff(c)
            sd[p + 'conv1'] = _conv(rng, c, c, 3)
            if b == 0 and g > 0:
                sd[p + 'conv_dim'] = _conv(rng, c, i, 1)
        cin = c
    sd['affine_last.a'], sd['affine_last.b'] = aff(512)
    sd['fc.weight'] = rng.normal(0, 0.05, (1000, 512)).astype(np.float32)
    sd['fc.bias'] = rng.normal(0, 0.1, 1000).astype(np.float32)
    return sd


def fb_resnet(rng, blocks, dim_bias):
    """Key names and shapes of resnet-18-export / resnet-34-export."""
    sd = collections.OrderedDict()
    bias = lambda c: rng.normal(0, 0.1, c).astype(np.float32)  # noqa: E731
    sd['conv0.weight'], sd['conv0.bias'] = _conv(rng, 64, 3, 7), bias(64)
    cin = 64
    for g, (c, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            p = 'group%d.block%d.' % (g, b)
            i = cin if b == 0 else c
            sd[p + 'conv0.weight'], sd[p + 'conv0.bias'] = _conv(rng, c, i, 3), bias(c)
            sd[p + 'conv1.weight'], sd[p + 'conv1.bias'] = _conv(rng, c, c, 3) * 0.5, bias(c)
            if b == 0 and g > 0:
                sd[p + 'conv_dim.weight'] = _conv(rng, c, i, 1)
                if dim_bias:
                    sd[p + 'conv_dim.bias'] = bias(c)
        cin = c
    sd['fc.weight'] = rng.normal(0, 0.05, (1000, 512)).astype(np.float32)
    sd['fc.bias'] = bias(1000)
    return sd


def np_at_resnet18(sd, x):
    """The notebook's forward of the folded pre-activation ResNet-18."""
    f = {k: v.astype(np.float64) for k, v in sd.items()}
    aff = lambda o, p: R.affine(o, f[p + '.a'], f[p + '.b'])  # noqa: E731
    o = R.maxpool3s2(R.relu(aff(R.conv2d(x, f['conv0'], stride=2, pad=3), 'affine0')))
    for g in range(4):
        for b in range(2):
            p = 'group%d.block%d.' % (g, b)
            if g == 0 and b == 0:
                xr, stride = o, 1
            else:
                xr, stride = R.relu(aff(o, p + 'affine0')), (2 if b == 0 else 1)
            y = R.conv2d(R.relu(aff(R.conv2d(xr, f[p + 'conv0'], stride=stride, pad=1), p + 'affine1')),
                         f[p + 'conv1'], pad=1)
            o = y + (R.conv2d(xr, f[p + 'conv_dim'], stride=2) if p + 'conv_dim' in f else o)
    o = R.global_avg(R.relu(aff(o, 'affine_last')))      # avgpool 7 on a 224 input
    return o @ f['fc.weight'].T + f['fc.bias']


def np_fb_resnet(sd, x, blocks):
    f = {k: v.astype(np.float64) for k, v in sd.items()}
    o = R.maxpool3s2(R.relu(R.conv2d(x, f['conv0.weight'], f['conv0.bias'], stride=2, pad=3)))
    for g, n in enumerate(blocks):
        for b in range(n):
            p = 'group%d.block%d.' % (g, b)
            stride = 2 if (g > 0 and b == 0) else 1
            y = R.relu(R.conv2d(o, f[p + 'conv0.weight'], f[p + 'conv0.bias'], stride=stride, pad=1))
            y = R.conv2d(y, f[p + 'conv1.weight'], f[p + 'conv1.bias'], pad=1)
            if p + 'conv_dim.weight' in f:
                short = R.conv2d(o, f[p + 'conv_dim.weight'], f.get(p + 'conv_dim.bias'), stride=stride)
            else:
                short = o
            o = R.relu(y + short)
    return R.global_avg(o) @ f['fc.weight'].T + f['fc.bias']


def gluon_logits(arch, params_path, x):
    net = gt.get_model(arch)
    report = load_params(net, params_path)          # initialises every parameter from the file
    assert not report['missing'] and not report['unexpected']
    return net(mx.nd.array(x)).asnumpy()            # inference mode: BN = gamma x + beta


def _check(logits, want):
    assert logits.shape == want.shape == (1, 1000)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.fixture
def gen():
    return np.random.default_rng(0)


def test_at_resnet18_zip_to_resnet18_v2(tmp_path, rng, gen):
    sd = at_resnet18(gen)
    assert sum(v.size for v in sd.values()) == 11687720          # the notebook's count
    src = tmp_path / 'resnet-18-at-export.pth'
    pth_writer.save_zip(sd, str(src), root='resnet-18-at-export')
    back = read_pth(str(src))
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    dst = tmp_path / 'r18v2.params'
    conv = convert_file(str(src), str(dst))
    assert (conv.arch, len(conv.params)) == ('resnet18_v2', 98)
    x = rng.uniform(-2, 2, (1, 3, 32, 32))
    _check(gluon_logits('resnet18_v2', str(dst), x), np_at_resnet18(sd, x))
    # the identity BNs: data BN and the missing group0.block0.affine0
    arch, params = convert_state_dict(sd)
    assert (params['features.5.0.bn1.gamma'] == 1).all() and (params['features.5.0.bn1.beta'] == 0).all()
    assert params['features.0.running_var'] == pytest.approx(1 - 1e-5)


def test_fb_resnet18_legacy_to_resnet18_v1b(tmp_path, rng, gen):
    sd = fb_resnet(gen, (2, 2, 2, 2), dim_bias=False)
    src = tmp_path / 'resnet-18-export.pth'
    pth_writer.save_legacy(sd, str(src))
    dst = tmp_path / 'r18.params'
    assert convert_file(str(src), str(dst)).arch == 'resnet18_v1b'
    x = rng.uniform(-2, 2, (1, 3, 32, 32))
    _check(gluon_logits('resnet18_v1b', str(dst), x), np_fb_resnet(sd, x, (2, 2, 2, 2)))


def test_fb_resnet34_dict_to_resnet34_v1b(tmp_path, rng, gen):
    sd = fb_resnet(gen, (3, 4, 6, 3), dim_bias=True)
    assert detect_arch(sd) == 'resnet34_v1b'
    arch, params = convert_state_dict(sd)
    assert params['layer2.0.downsample.1.beta'] is not None
    np.testing.assert_array_equal(params['layer2.0.downsample.1.beta'], sd['group1.block0.conv_dim.bias'])
    path = tmp_path / 'r34.params'
    mx.nd.save(str(path), {k: mx.nd.array(v) for k, v in params.items()})
    x = rng.uniform(-2, 2, (1, 3, 32, 32))
    _check(gluon_logits('resnet34_v1b', str(path), x), np_fb_resnet(sd, x, (3, 4, 6, 3)))


def test_key_map_errors(gen):
    sd = fb_resnet(gen, (2, 2, 2, 2), dim_bias=False)
    bad = dict(sd)
    del bad['group2.block1.conv1.bias']
    with pytest.raises(CheckpointError, match="'group2.block1.conv1.bias' is missing"):
        convert_state_dict(bad)
    extra = dict(sd, **{'group0.block0.bn0.weight': np.ones(64, np.float32)})
    with pytest.raises(CheckpointError, match="'group0.block0.bn0.weight' has no place in resnet18_v1b"):
        convert_state_dict(extra)
    with pytest.raises(CheckpointError, match='ResNet-34 needs|needs \\(3, 4, 6, 3\\)'):
        convert_state_dict(sd, 'resnet34_v1b')
    with pytest.raises(CheckpointError, match='no affine0.a'):
        convert_state_dict(sd, 'resnet18_v2')
    three = {k: v for k, v in sd.items() if not k.startswith('group3')}
    with pytest.raises(CheckpointError, match='cannot tell the architecture'):
        detect_arch(three)


def test_tool_main(tmp_path, gen, capsys):
    tool = load_tool('convert_torch')
    assert tool.main([os.path.join(FIX, 'malicious.pth'), str(tmp_path / 'x.params')]) == 2
    assert 'refusing to load' in capsys.readouterr().err
    assert not (tmp_path / 'x.params').exists()
    src = tmp_path / 'r18.pth'
    pth_writer.save_zip(fb_resnet(gen, (2, 2, 2, 2), dim_bias=False), str(src))
    assert tool.main([str(src), str(tmp_path / 'r18.params'), '--arch', 'resnet18_v1b']) == 0
    assert 'resnet18_v1b' in capsys.readouterr().out
    net = gt.get_model('resnet18_v1b', params=str(tmp_path / 'r18.params'))
    assert net.fc.weight.shape == (1000, 512)


# ----------------------------------------------------------------- declared sizes vs real bytes
def test_declared_sizes_are_checked_before_allocating(tmp_path, capsys):
    """A legacy file declaring 2^40 elements (4 TiB) for a 100-element storage, a zip whose
    pickle and member disagree, and a tensor addressing more than its storage: each is a
    one-line error naming the tensor, never a MemoryError."""
    arr = np.arange(100, dtype=np.float32)
    legacy = tmp_path / 'huge_legacy.pth'
    pth_writer.save_legacy({'conv1.weight': arr[:4], 'layer1.weight': pth_writer.Declared(arr, numel=2 ** 40)},
                           str(legacy))
    with pytest.raises(CheckpointError, match=r"storage 1 \(tensor 'layer1.weight'\) declares 1099511627776 "
                                              r"elements \(4398046511104 bytes\) but only 400 bytes are left"):
        read_pth(str(legacy))
    negative = tmp_path / 'negative.pth'
    pth_writer.save_legacy({'w': pth_writer.Declared(arr, numel=-5)}, str(negative))
    with pytest.raises(CheckpointError, match=r"storage 0 declares -5 elements"):
        read_pth(str(negative))
    mismatch = tmp_path / 'mismatch.pth'
    pth_writer.save_legacy({'w': pth_writer.Declared(arr, numel=50)}, str(mismatch))
    with pytest.raises(CheckpointError, match=r"tensor 'w' reaches element 99 of a storage of 50 elements"):
        read_pth(str(mismatch))
    zpath = tmp_path / 'huge_zip.pth'
    pth_writer.save_zip({'fc.weight': pth_writer.Declared(arr, numel=2 ** 40)}, str(zpath))
    with pytest.raises(CheckpointError, match=r"storage 0 \(tensor 'fc.weight'\) declares 1099511627776 elements "
                                              r"\(4398046511104 bytes\) but its data file holds 400 bytes"):
        read_pth(str(zpath))
    # a tensor of 2^40 elements over the 100-element storage (stride 0: a broadcast view)
    view = tmp_path / 'view.pth'
    pth_writer.save_zip({'w': pth_writer.Declared(arr, size=(2 ** 40,), stride=(0,))}, str(view))
    with pytest.raises(CheckpointError, match=r"tensor 'w' declares 1099511627776 elements .* the file has only"):
        read_pth(str(view))
    far = tmp_path / 'far.pth'
    pth_writer.save_zip({'w': pth_writer.Declared(arr, size=(10, 11), stride=(11, 1))}, str(far))
    with pytest.raises(CheckpointError, match=r"tensor 'w' reaches element 109 of a storage of 100"):
        read_pth(str(far))
    tool = load_tool('convert_torch')
    assert tool.main([str(legacy), str(tmp_path / 'out.params')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and "'layer1.weight'" in err
    assert not (tmp_path / 'out.params').exists()


def _save_safetensors(state, path, header_patch=None):
    """The safetensors layout, written by hand: u64 header length, JSON header, raw data."""
    import json
    codes = {np.dtype('float32'): 'F32', np.dtype('float16'): 'F16', np.dtype('int64'): 'I64'}
    header, blobs, at = {'__metadata__': {'format': 'pt'}}, [], 0
    for k, v in state.items():
        raw = np.ascontiguousarray(v).tobytes()
        header[k] = {'dtype': codes[v.dtype], 'shape': list(v.shape), 'data_offsets': [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    header.update(header_patch or {})
    text = json.dumps(header).encode()
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def test_reads_safetensors(tmp_path):
    want = collections.OrderedDict([('conv.weight', np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)),
                                    ('bn.num_batches_tracked', np.array(7, np.int64)),
                                    ('half', np.array([1.5, -2.0], np.float16))])
    path = tmp_path / 'model.safetensors'
    _save_safetensors(want, str(path))
    got = read_pth(str(path))
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
    bad = tmp_path / 'bad.safetensors'
    _save_safetensors(want, str(bad), {'conv.weight': {'dtype': 'F32', 'shape': [2 ** 20, 2 ** 20],
                                                       'data_offsets': [0, 96]}})
    with pytest.raises(CheckpointError, match=r"tensor 'conv.weight' declares shape \(1048576, 1048576\)"):
        read_pth(str(bad))
