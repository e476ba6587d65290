"""float16 on CPU: type inference of every registered network, fusion block, the AFS gate and
the loss modules after ``cast('float16')``, and the float16 inputs of the imperative losses.

MXNet 1.9.1 has no float16 convolution or dense layer on CPU, but its type inference runs
anywhere: a graph that mixes float16 and float32 where an operator needs one dtype fails
``sym.infer_type`` here exactly as it would fail the first float16 step on a GPU. The graphs
are traced from uninitialised blocks (no parameter memory), so every registered name is
checked at its real size. What is asserted:

* networks (``--dtype float16`` casts them with ``net.cast('float16')``): logits and feature
  taps are float16, no tensor of rank >= 3 (a feature map) is float32 or float64 anywhere
  in the graph (no silent upcast), every parameter's inferred dtype is its Parameter's --
  float16 except BatchNorm's (Gluon keeps them float32) and the AFS gates' WTA density
  (kept float32 so ``k = ceil(d * n - 1e-3)`` is the float32 one);
* fusion blocks: the same; the fused CPU kernel is float32-only, and the blocks never emit
  it for a float16 graph;
* loss modules: their trainable parts (AFD predictors, AFA attention) trace in float16 when
  cast; the attention-transfer taps of a float16 network return float16 logits and float32
  maps; the imperative loss terms (KD, DELTA, feature distance, L2-SP, AFD, AFA) take
  float16 maps and return float32 values equal to a float64 numpy computation of the same
  float16 numbers (in float16 their summed squares would overflow: max 65504).
"""
import json
import warnings

import numpy as np
import pytest
import mxnet as mx
from mxnet.gluon import nn

import gluon_transfer as gt
from gluon_transfer.errors import ConfigError
from gluon_transfer.registry import FUSIONS, MODELS
from gluon_transfer.nn import fused
from gluon_transfer.nn.fusion import MSCAM
from gluon_transfer.nn.gates import AFSGate

F16, F32 = np.dtype('float16'), np.dtype('float32')


def _registered_models():
    """The package's own networks (tests may register tiny helper models of their own)."""
    gt.list_models(include_gluoncv=False)        # imports every network module
    return [n for n in MODELS.names()
            if getattr(MODELS.get(n), '__module__', '').startswith('gluon_transfer.')]


def graph_types(sym, **inputs):
    """``(output dtypes, {internal output: (dtype, shape)}, {argument/aux name: dtype})`` of
    ``sym`` for ``inputs`` = ``{name: (shape, dtype)}``; any type conflict raises here."""
    args = set(sym.list_arguments())
    types = {k: v[1] for k, v in inputs.items() if k in args}
    shapes = {k: v[0] for k, v in inputs.items() if k in args}
    arg_t, out_t, aux_t = sym.infer_type(**types)
    internals = sym.get_internals()
    _, int_t, _ = internals.infer_type(**types)
    _, int_s, _ = internals.infer_shape(**shapes)
    nodes = {n: (np.dtype(t), tuple(s)) for n, t, s in zip(internals.list_outputs(), int_t, int_s)}
    params = dict(zip(sym.list_arguments(), map(np.dtype, arg_t)))
    params.update(zip(sym.list_auxiliary_states(), map(np.dtype, aux_t)))
    return [np.dtype(t) for t in out_t], nodes, params


def upcast_maps(nodes):
    """Internal outputs of rank >= 3 that are not float16 (feature maps silently upcast)."""
    return sorted(n for n, (t, s) in nodes.items() if len(s) >= 3 and t != F16)


def float32_params(block):
    """Names of the parameters a float16 cast keeps in float32: BatchNorm's and the gates' density."""
    keep = set()

    def walk(b):
        if isinstance(b, nn.BatchNorm):
            keep.update(p.name for p in b.params.values())
        if isinstance(b, AFSGate):
            keep.add(b.wta_density.name)
        for c in b._children.values():
            walk(c)
    walk(block)
    return keep


def check_params(block, params):
    """Every parameter of ``block`` in the graph has the inferred dtype of its Parameter, which
    is float16 except those :func:`float32_params` names."""
    keep = float32_params(block)
    seen = 0
    for p in block.collect_params().values():
        if p.name not in params:
            continue
        seen += 1
        want = F32 if p.name in keep else F16
        assert np.dtype(p.dtype) == want, (p.name, p.dtype)
        assert params[p.name] == want, (p.name, params[p.name])
    assert seen > 0


def grouped(out):
    """One symbol from a block's symbolic output (a symbol, or nested lists/tuples of them)."""
    flat = []

    def walk(o):
        if isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        else:
            flat.extend(o[i] for i in range(len(o.list_outputs())))
    walk(out)
    return flat[0] if len(flat) == 1 else mx.sym.Group(flat)


def ops_of(sym):
    return {n['op'] for n in json.loads(sym.tojson())['nodes']}


# ------------------------------------------------------------------ networks
# Networks whose stride/valid-padding chain needs more than 32 px (Inception-v4: 75 px).
MIN_INPUT_SIZE = {'inception_v4': 75}


@pytest.mark.parametrize('name', _registered_models())
def test_every_registered_network_types_float16(name):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        probe = gt.get_model(name, classes=10)
        taps = tuple(f['name'] for f in probe.feature_info)
        net = gt.get_model(name, classes=10, features=taps)
    net.cast('float16')
    logits, maps = net(mx.sym.var('data', dtype='float16'))
    assert len(maps) == len(taps) >= 3
    sym = mx.sym.Group([logits] + list(maps))
    size = MIN_INPUT_SIZE.get(name, 32)
    out, nodes, params = graph_types(sym, data=((2, 3, size, size), 'float16'))
    assert out == [F16] * (1 + len(taps))
    assert upcast_maps(nodes) == []
    check_params(net, params)
    assert fused.OP_NAME not in ops_of(sym) and fused.MEAN_OP not in ops_of(sym)


def test_afs_network_gates_are_in_the_float16_graph():
    """The AFS ResNet's gates (WTA mask, multiplier) are traced, and their density stays float32."""
    net = gt.get_model('afs_resnet_v1b', layers=[1, 1, 1, 1], classes=4, density=0.9, gate_input_norm='l2')
    net.cast('float16')
    sym = net(mx.sym.var('data', dtype='float16'))
    out, nodes, params = graph_types(sym, data=((2, 3, 32, 32), 'float16'))
    assert out == [F16]
    masks = [n for n in nodes if n.endswith('_where0_output')]           # the WTA masks
    assert len(masks) == 12 and all(nodes[n][0] == F16 for n in masks)   # 4 bottlenecks x 3 gates
    densities = [k for k in params if k.endswith('_density')]
    assert len(densities) == 12 and all(params[k] == F32 for k in densities)
    assert upcast_maps(nodes) == []


# ------------------------------------------------------------------ fusion blocks
FUSION_NAMES = FUSIONS.names()


@pytest.mark.parametrize('name', FUSION_NAMES + ['mscam'])
def test_fusion_blocks_type_float16(name, monkeypatch):
    # As if the fused kernel were built: a float16 graph must still use the composition.
    monkeypatch.setattr(fused, 'load_kernel', lambda: True)
    block = MSCAM(16, r=4) if name == 'mscam' else FUSIONS.get(name)(16, 4)
    block.cast('float16')
    x, y = mx.sym.var('x', dtype='float16'), mx.sym.var('y', dtype='float16')
    sym = block(x) if name == 'mscam' else block(x, y)
    inputs = {'x': ((2, 16, 6, 6), 'float16')}
    if name != 'mscam':
        inputs['y'] = ((2, 16, 6, 6), 'float16')
    out, nodes, params = graph_types(sym, **inputs)
    assert out == [F16]
    assert upcast_maps(nodes) == []
    if name not in ('add', 'DirectAdd'):
        check_params(block, params)
    assert fused.OP_NAME not in ops_of(sym) and fused.MEAN_OP not in ops_of(sym)


def test_fused_kernel_is_float32_only_and_float32_graphs_type_check():
    """The kernel's own type function accepts float32 only; its float32 graph infers float32.
    (Why the blocks fall back to the composition for float16, bfloat16 AMP and export.)"""
    if not fused.load_kernel():
        pytest.skip('fused AFF kernel unavailable: %s' % fused._state['error'])
    names = ('x', 'y', 'l', 'g')
    syms = [mx.sym.var(n) for n in names]
    op = getattr(mx.sym, fused.OP_NAME)(*syms, scale=2.0)
    shapes = dict(x=(2, 8, 3, 3), y=(2, 8, 3, 3), l=(2, 8, 3, 3), g=(2, 8, 1, 1))
    assert op.infer_type(**{n: 'float32' for n in names})[1] == [np.float32]
    with pytest.raises(mx.base.MXNetError):
        op.infer_type(**{n: 'float16' for n in names})
    for cls in (FUSIONS.get('aff'), FUSIONS.get('iaff')):
        block = cls(8, 4)
        block.initialize()                        # float32 parameters on the CPU: the kernel path
        sym = block(mx.sym.var('x'), mx.sym.var('y'))
        assert fused.OP_NAME in ops_of(sym)
        out, _, _ = graph_types(sym, x=(shapes['x'], 'float32'), y=(shapes['y'], 'float32'))
        assert out == [F32]


# ------------------------------------------------------------------ AFS gate
@pytest.mark.parametrize('input_norm', ['none', 'l2'])
@pytest.mark.parametrize('enabled', [True, False])
def test_afs_gate_types_float16(input_norm, enabled):
    gate = AFSGate(8, 12, density=0.9, input_norm=input_norm, enabled=enabled)
    gate.cast('float16')
    assert np.dtype(gate.wta_density.dtype) == F32 and np.dtype(gate.fc.weight.dtype) == F16
    sym = gate(mx.sym.var('x', dtype='float16'), mx.sym.var('y', dtype='float16'))
    out, nodes, params = graph_types(sym, x=((3, 8, 5, 5), 'float16'), y=((3, 12, 4, 4), 'float16'))
    assert out == [F16]
    assert upcast_maps(nodes) == []
    if enabled:
        check_params(gate, params)
        mask = [n for n in nodes if n.endswith('_where0_output')]
        assert len(mask) == 1 and nodes[mask[0]] == (F16, (3, 12))    # the WTA mask is in h's dtype


def test_afs_gate_float16_keeps_float32_density_value():
    gate = AFSGate(4, 2048, density=0.9)
    gate.initialize()
    gate.cast('float16')
    d = gate.wta_density.data()
    assert d.dtype == np.float32 and d.asscalar() == np.float32(0.9)
    assert gate.mask_m.data().dtype == np.float16


# ------------------------------------------------------------------ loss modules (symbolic)
def _symbol_of(block, *names_shapes):
    return grouped(block(*[mx.sym.var(n, dtype='float16') for n, _ in names_shapes]))


@pytest.mark.parametrize('kind', ['afd', 'afd_bias', 'afd_multi', 'afa_ast', 'afa_act'])
def test_trainable_loss_modules_type_float16(kind):
    from gluon_transfer.losses.afd import AFDPredictors, TransferabilityPredictor
    from gluon_transfer.losses.afa import ChannelAttention, SpatialAttention
    shape = (2, 6, 5, 5)
    inputs = [('s', shape)]
    if kind == 'afd':
        block, n_out = TransferabilityPredictor(6, 25, 5), 1
    elif kind == 'afd_bias':
        block, n_out = TransferabilityPredictor(6, 25, 5, channel_bias=True), 1
    elif kind == 'afd_multi':
        block, n_out = AFDPredictors([(6, 5, 5), (4, 3, 3)], channel_bias=True), 2
        inputs.append(('s2', (2, 4, 3, 3)))
    elif kind == 'afa_ast':
        block, n_out = SpatialAttention(25, 5), 1
    else:
        block, n_out = ChannelAttention(25, 5, 6), 1
    block.cast('float16')
    sym = _symbol_of(block, *inputs)
    out, nodes, params = graph_types(sym, **{n: (s, 'float16') for n, s in inputs})
    assert out == [F16] * n_out
    assert upcast_maps(nodes) == []
    check_params(block, params)


def _at_student(name):
    if name == 'wrn16_1':
        return gt.get_model('wrn16_1', classes=10), ('stage1', 'stage2', 'stage3')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        net = gt.get_model('resnet18_v1b', classes=10)            # a GluonCV network: FeatureTaps path
    return net, ('stage2', 'layer3.1', 'stage4')


@pytest.mark.parametrize('name', ['wrn16_1', 'resnet18_v1b'])
@pytest.mark.parametrize('p', [2, 1])
def test_attention_taps_of_float16_network(name, p):
    """The AT training graph of a float16 student: float16 logits, float32 attention maps."""
    from gluon_transfer.engine.tasks import AttentionTaps
    net, taps = _at_student(name)
    net.initialize()
    net.cast('float16')
    view = AttentionTaps(net, taps, p=p)
    sym = grouped(view(mx.sym.var('data', dtype='float16')))
    out, nodes, _ = graph_types(sym, data=((2, 3, 32, 32), 'float16'))
    assert out == [F16] + [F32] * len(taps)


@pytest.mark.parametrize('name', ['wrn16_1', 'resnet18_v1b'])
def test_feature_views_of_float16_network(name):
    """The views the losses read, on a float16 network: FeatureTaps (AT/KD taps by name) and
    the transfer regularizers' TapNet (raw conv outputs): every output float16."""
    from gluon_transfer.losses.transfer_common import bottleneck_taps, conv_paths
    from gluon_transfer.nn.feature import FeatureTaps
    net, taps = _at_student(name)
    net.initialize()
    net.cast('float16')
    convs = list(conv_paths(net))
    views = [(FeatureTaps(net, taps), 1 + len(taps)), (bottleneck_taps(net, convs[-3:]), 4)]
    for view, n_out in views:
        sym = grouped(view(mx.sym.var('data', dtype='float16')))
        out, nodes, _ = graph_types(sym, data=((2, 3, 32, 32), 'float16'))
        assert out == [F16] * n_out
        assert upcast_maps(nodes) == []


# ------------------------------------------------------------------ loss terms on float16 maps
def _maps(rng, shape, scale=30.0):
    """float16 maps large enough that the summed squares overflow float16 (max 65504)."""
    return rng.normal(0, scale, size=shape).astype(np.float16)


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _assert_float32_close(got, want):
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.asnumpy().astype(np.float64), want, rtol=2e-5)


def test_kd_on_float16_logits():
    from gluon_transfer.losses.kd import kd_per_sample
    rng = np.random.RandomState(0)
    zs, zt = rng.normal(0, 5, (4, 10)).astype(np.float16), rng.normal(0, 5, (4, 10)).astype(np.float16)
    y = np.array([1, 3, 5, 7])
    kd, ce = kd_per_sample(mx.nd.array(zs, dtype='float16'), mx.nd.array(zt, dtype='float16'),
                           mx.nd.array(y), temperature=4.0, alpha=0.9)
    s, t = zs.astype(np.float64), zt.astype(np.float64)
    logp, logq = np.log(_softmax(s / 4, 1)), np.log(_softmax(t / 4, 1))
    _assert_float32_close(kd, 0.9 * 16 * (np.exp(logq) * (logq - logp)).sum(1))
    _assert_float32_close(ce, 0.1 * -np.log(_softmax(s, 1))[np.arange(4), y])


def test_feature_distance_and_delta_on_float16_maps():
    from gluon_transfer.losses.delta import delta_per_sample
    from gluon_transfer.losses.feature_distance import feature_map_per_sample
    rng = np.random.RandomState(1)
    shapes = [(3, 4, 8, 8), (3, 6, 4, 4)]
    src = [_maps(rng, s) for s in shapes]
    tgt = [_maps(rng, s) for s in shapes]
    w = [rng.dirichlet(np.ones(s[1])).astype(np.float32) for s in shapes]
    nd = lambda a: mx.nd.array(a, dtype=a.dtype)      # noqa: E731
    d2 = [((t.astype(np.float64) - s.astype(np.float64)) ** 2).sum(axis=(2, 3)) for s, t in zip(src, tgt)]
    assert max(d.sum(axis=1).max() for d in d2) > 65504            # would overflow in float16
    got = feature_map_per_sample([nd(s) for s in src], [nd(t) for t in tgt])
    _assert_float32_close(got, sum(0.5 * d.sum(axis=1) for d in d2))
    got = delta_per_sample([nd(s) for s in src], [nd(t) for t in tgt], w)
    want = sum(0.5 * (s[1] * wl[None, :] * d).sum(axis=1) / (s[2] * s[3]) for s, wl, d in zip(shapes, w, d2))
    _assert_float32_close(got, want)


def test_l2sp_penalty_on_float16_weights():
    from gluon_transfer.losses.transfer_common import param_penalty
    rng = np.random.RandomState(2)
    w = rng.normal(0, 40, (64, 32)).astype(np.float16)
    w0 = rng.normal(0, 40, (64, 32)).astype(np.float32)
    head = rng.normal(0, 40, (10, 64)).astype(np.float16)
    got = param_penalty([(mx.nd.array(w, dtype='float16'), mx.nd.array(w0), 0.1),
                         (mx.nd.array(head, dtype='float16'), None, 0.01)])
    want = 0.05 * ((w.astype(np.float64) - w0) ** 2).sum() + 0.005 * (head.astype(np.float64) ** 2).sum()
    _assert_float32_close(got, np.array([want]))


@pytest.mark.parametrize('predictor', ['entropy', 'joint'])
def test_afd_on_float16_maps(predictor):
    from gluon_transfer.losses.afd import AFD
    rng = np.random.RandomState(3)
    shapes = [(4, 6, 6), (8, 3, 3)]
    reg = AFD(lambda_afd=0.01, afd_predictor=predictor, channel_bias=True).set_shapes(shapes)
    reg.predictors.initialize(mx.init.Uniform(0.5))
    src = [_maps(rng, (3,) + s) for s in shapes]
    tgt = [_maps(rng, (3,) + s) for s in shapes]
    r, _ = reg.per_sample([mx.nd.array(t, dtype='float16') for t in tgt],
                          [mx.nd.array(s, dtype='float16') for s in src])
    want = 0
    for layer, s, t in zip(reg.predictors.layers, src, tgt):
        W1, b1 = layer.fc1.weight.data().asnumpy(), layer.fc1.bias.data().asnumpy()
        W2, b2 = layer.fc2.weight.data().asnumpy(), layer.fc2.bias.data().asnumpy()
        x = s.astype(np.float64).reshape(s.shape[0], s.shape[1], -1)
        e = (np.maximum(x @ W1.T + b1, 0) @ W2.T + b2)[:, :, 0] + layer.cbias.data().asnumpy()
        d = ((t.astype(np.float64) - s.astype(np.float64)) ** 2).sum(axis=(2, 3))
        want = want + (_softmax(e, 1) * d).sum(axis=1)
    _assert_float32_close(r, want)


@pytest.mark.parametrize('stage', ['afa-ast', 'afa-act'])
def test_afa_on_float16_maps(stage):
    from gluon_transfer.registry import REGULARIZERS
    rng = np.random.RandomState(4)
    shapes = [(4, 6, 6), (8, 3, 3)]
    reg = REGULARIZERS.build(stage, alpha=0.1, beta=0.01)
    reg.set_feature_shapes(shapes)
    reg.modules.initialize(mx.init.Uniform(0.5))
    src = [_maps(rng, (3,) + s) for s in shapes]
    tgt = [_maps(rng, (3,) + s) for s in shapes]
    got = reg.per_sample([mx.nd.array(t, dtype='float16') for t in tgt],
                         [mx.nd.array(s, dtype='float16') for s in src])
    want = 0
    for module, s, t in zip(reg.modules, src, tgt):
        s64, t64 = s.astype(np.float64), t.astype(np.float64)
        n, c, h, w = s.shape
        sq = ((t64 - s64) ** 2).reshape(n, c, h * w)
        W1 = module.fc1.weight.data().asnumpy()
        W2 = module.fc2.weight.data().asnumpy()
        if stage == 'afa-ast':
            p = s64.reshape(n, c, -1).mean(axis=1)
            a = _softmax(np.maximum(p @ W1.T, 0) @ W2.T + module.fc2.bias.data().asnumpy(), 1)
            want = want + 0.5 * (h * w) ** 2 * ((a ** 2) * sq.sum(axis=1)).sum(axis=1)
        else:
            e = (np.maximum(s64.reshape(n, c, -1) @ W1.T, 0) @ W2.T)[:, :, 0] + module.bias.data().asnumpy()
            want = want + 0.5 * c * (_softmax(e, 1) * sq.sum(axis=2)).sum(axis=1)
    _assert_float32_close(got, want)


# ------------------------------------------------------------------ the distillation task
def _fp16_student_and_teacher():
    student = gt.get_model('wrn16_1', classes=10)
    student.initialize()
    student.cast('float16')
    teacher = gt.get_model('wrn16_1', classes=10)
    teacher.initialize()
    return student, teacher


def test_distill_checks_shapes_with_the_students_dtype(monkeypatch):
    """Attention transfer into a float16 student: the start-up shape check feeds the student
    float16 and the float32 teacher float32 (a float32 probe would fail the student's graph)."""
    from gluon_transfer.engine.tasks import Distill
    seen = []

    def forward(block, x, with_maps):           # records the probe dtype; no float16 arithmetic on CPU
        seen.append(np.dtype(x.dtype))
        n = x.shape[0]
        return mx.nd.zeros((n, 10)), [mx.nd.zeros((n, 16, 32, 32)), mx.nd.zeros((n, 32, 16, 16))]
    monkeypatch.setattr(Distill, '_forward', staticmethod(forward))
    student, teacher = _fp16_student_and_teacher()
    task = Distill(teacher, ('stage1', 'stage2'), beta=1e3, alpha=0.5, input_shape=(1, 3, 32, 32))
    task.setup(student, [mx.cpu()])
    assert seen == [F16, F32]
    out, _, _ = graph_types(grouped(task._student_at(mx.sym.var('data', dtype='float16'))),
                            data=((2, 3, 32, 32), 'float16'))
    assert out == [F16, F32, F32]


def test_gradient_at_refuses_a_float16_student():
    from gluon_transfer.engine.tasks import Distill
    student, teacher = _fp16_student_and_teacher()
    task = Distill(teacher, grad_at_beta=1.0, input_shape=(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r'^--grad-at-beta needs --dtype float32: .*float16 resolves only'):
        task.setup(student, [mx.cpu()])
