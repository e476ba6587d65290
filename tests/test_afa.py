"""AFA (attentive feature alignment): the AST/ACT losses against numpy, their engine units
through the generic Transfer task, tap resolution (ResNet, MobileNetV2), the stage-2 source,
export. train_transfer.py runs: tests/test_afa_train.py."""

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from gluon_transfer.methods import afa
from gluon_transfer.data.base import ArrayIter
from gluon_transfer.engine.tasks import Transfer
from gluon_transfer.engine.trainer import Engine, FitConfig
from gluon_transfer.errors import CheckpointError, ConfigError
from gluon_transfer.losses import (SpatialAttention, ChannelAttention, afa_ast_loss, afa_act_loss,
                                   AFASpatial, AFAChannel)
from gluon_transfer.losses.transfer_common import bottleneck_taps
from gluon_transfer.registry import REGULARIZERS
from gluon_transfer.zoo import get_model


# ------------------------------------------------------------------ numpy references
def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_spatial_attention(s, w1, w2, b2):
    n = s.shape[0]
    p = s.mean(axis=1).reshape(n, -1)
    return np_softmax(np.maximum(p @ w1.T, 0) @ w2.T + b2)


def np_channel_attention(s, w1, w2, bias):
    n, c = s.shape[:2]
    x = s.reshape(n, c, -1)
    e = (np.maximum(x @ w1.T, 0) @ w2.T).reshape(n, c)
    return np_softmax(e + bias)


def np_ast(s, t, a):
    """0.5/N * sum_{n,c,pos} ((t - s) * a * HW)^2 and its gradient w.r.t. t."""
    n, c, h, w = s.shape
    hw = h * w
    d = (t - s).reshape(n, c, hw)
    weighted = d * a[:, None, :] * hw
    loss = 0.5 / n * np.sum(weighted ** 2)
    grad = (d * (a[:, None, :] * hw) ** 2 / n).reshape(s.shape)
    return loss, grad


def np_act(s, t, a):
    """0.5/N * sum_{n,c} C * a * ||t - s||^2 and its gradient w.r.t. t."""
    n, c = s.shape[:2]
    d = (t - s).reshape(n, c, -1)
    loss = 0.5 / n * np.sum(c * a * np.sum(d ** 2, axis=2))
    grad = (c * a[:, :, None] * d / n).reshape(s.shape)
    return loss, grad


def maps(shape, seed):
    rng = np.random.RandomState(seed)
    return rng.randn(*shape).astype(np.float32), rng.randn(*shape).astype(np.float32)


def value_and_grad(fn, s, t, attention):
    sn, tn = mx.nd.array(s), mx.nd.array(t)
    sn.attach_grad()
    tn.attach_grad()
    with autograd.record():
        loss = fn(sn, tn, attention)
    loss.backward()
    return float(loss.asscalar()), tn.grad.asnumpy(), sn.grad.asnumpy()


# ------------------------------------------------------------------ losses
def test_spatial_attention_structure_and_numpy_forward():
    att = SpatialAttention(16, 4)
    att.initialize()
    assert att.fc1.weight.shape == (4, 16) and att.fc1.bias is None
    assert att.fc2.weight.shape == (16, 4) and att.fc2.bias.shape == (16,)
    # PyTorch nn.Linear default init: |w| <= 1/sqrt(fan_in), bias too.
    assert np.abs(att.fc1.weight.data().asnumpy()).max() <= 0.25 + 1e-7
    assert np.abs(att.fc2.bias.data().asnumpy()).max() <= 0.5 + 1e-7
    assert np.abs(att.fc2.bias.data().asnumpy()).max() > 0
    s, _ = maps((3, 5, 4, 4), 0)
    a = att(mx.nd.array(s)).asnumpy()
    ref = np_spatial_attention(s, att.fc1.weight.data().asnumpy(), att.fc2.weight.data().asnumpy(),
                               att.fc2.bias.data().asnumpy())
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.sum(axis=1), 1, rtol=1e-6)


def test_channel_attention_structure_and_numpy_forward():
    att = ChannelAttention(9, 3, 6)
    att.initialize()
    assert att.fc1.weight.shape == (3, 9) and att.fc1.bias is None
    assert att.fc2.weight.shape == (1, 3) and att.fc2.bias is None
    assert att.bias.shape == (6,) and not att.bias.data().asnumpy().any()    # zeros at start
    att.bias.set_data(mx.nd.array(np.linspace(-1, 1, 6)))
    s, _ = maps((2, 6, 3, 3), 1)
    a = att(mx.nd.array(s)).asnumpy()
    ref = np_channel_attention(s, att.fc1.weight.data().asnumpy(), att.fc2.weight.data().asnumpy(),
                               np.linspace(-1, 1, 6))
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-7)


def test_ast_loss_value_and_target_gradient_match_numpy():
    s, t = maps((2, 3, 4, 4), 2)
    att = SpatialAttention(16, 4)
    att.initialize()
    a = np_spatial_attention(s, att.fc1.weight.data().asnumpy(), att.fc2.weight.data().asnumpy(),
                             att.fc2.bias.data().asnumpy())
    ref_loss, ref_grad = np_ast(s, t, a)
    loss, gt, gs = value_and_grad(afa_ast_loss, s, t, att)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(gt, ref_grad, rtol=1e-4, atol=1e-6)
    assert not gs.any()                 # the source map is detached


def test_act_loss_value_and_target_gradient_match_numpy():
    s, t = maps((3, 5, 3, 3), 3)
    att = ChannelAttention(9, 3, 5)
    att.initialize()
    att.bias.set_data(mx.nd.array([0.3, -0.2, 0.0, 0.5, -0.4]))
    a = np_channel_attention(s, att.fc1.weight.data().asnumpy(), att.fc2.weight.data().asnumpy(),
                             np.array([0.3, -0.2, 0.0, 0.5, -0.4]))
    ref_loss, ref_grad = np_act(s, t, a)
    loss, gt, gs = value_and_grad(afa_act_loss, s, t, att)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(gt, ref_grad, rtol=1e-4, atol=1e-6)
    assert not gs.any()


def test_act_bias_gradient_matches_softmax_derivative():
    """d/d bias_c of 0.5/N sum_n C sum_c a_nc D_nc = 0.5 C/N sum_n a_nc (D_nc - sum_k a_nk D_nk)."""
    s, t = maps((2, 4, 2, 2), 4)
    att = ChannelAttention(4, 2, 4)
    att.initialize()
    with autograd.record():
        loss = afa_act_loss(mx.nd.array(s), mx.nd.array(t), att)
    loss.backward()
    a = np_channel_attention(s, att.fc1.weight.data().asnumpy(), att.fc2.weight.data().asnumpy(), np.zeros(4))
    dist = ((t - s) ** 2).reshape(2, 4, -1).sum(axis=2)
    ref = 0.5 * 4 / 2 * np.sum(a * (dist - np.sum(a * dist, axis=1, keepdims=True)), axis=0)
    np.testing.assert_allclose(att.bias.grad().asnumpy(), ref, rtol=1e-4, atol=1e-6)


def test_uniform_attention_equals_plain_feature_distance():
    s, t = maps((2, 3, 4, 5), 5)
    plain = 0.5 / 2 * np.sum((t - s) ** 2)
    a_sp = mx.nd.full((2, 20), 1.0 / 20)
    a_ch = mx.nd.full((2, 3), 1.0 / 3)
    np.testing.assert_allclose(float(afa_ast_loss(mx.nd.array(s), mx.nd.array(t), a_sp).asscalar()), plain,
                               rtol=1e-5)
    np.testing.assert_allclose(float(afa_act_loss(mx.nd.array(s), mx.nd.array(t), a_ch).asscalar()), plain,
                               rtol=1e-5)


def test_bad_shapes_raise_config_error():
    s = mx.nd.zeros((2, 3, 4, 4))
    with pytest.raises(ConfigError, match='shapes'):
        afa_ast_loss(s, mx.nd.zeros((2, 3, 4, 5)), mx.nd.ones((2, 16)))
    with pytest.raises(ConfigError, match='attention weights'):
        afa_act_loss(s, s, mx.nd.ones((2, 16)))


# ------------------------------------------------------------------ regularizers
def test_registered_and_reference_defaults():
    assert REGULARIZERS.get('afa-ast') is AFASpatial and REGULARIZERS.get('afa-act') is AFAChannel
    assert (AFASpatial().alpha, AFAChannel().alpha, AFASpatial().beta) == (0.1, 0.15, 0.01)
    assert (AFASpatial(model='mobilenetv2_1.0').alpha, AFAChannel(model='mobilenetv2_1.0').alpha) == (0.09, 0.04)
    p = afa.preset_for('resnet101_v1b')
    assert (p['ast']['lr'], p['act']['lr'], p['ast']['batch_size'], p['ast']['max_iter'], p['ast']['decay_at']) == \
        (0.01, 0.001, 64, 4500, 0.67)
    assert (afa.PRESETS['mobilenetv2']['ast']['lr'], afa.PRESETS['mobilenetv2']['act']['lr']) == (0.01, 0.001)


def test_attention_hidden_size_is_map_height():
    reg = AFASpatial()
    reg.set_feature_shapes([(256, 56, 56), (2048, 7, 7)])
    p = reg.blocks()['afa_ast']._collect_params_with_prefix()
    assert p['0.fc1.weight'].shape == (56, 3136) and p['0.fc2.weight'].shape == (3136, 56)
    assert p['1.fc1.weight'].shape == (7, 49)
    reg = AFAChannel()
    reg.set_feature_shapes([(96, 14, 14)])
    p = reg.blocks()['afa_act']._collect_params_with_prefix()
    assert p['0.fc1.weight'].shape == (14, 196) and p['0.fc2.weight'].shape == (1, 14) and p['0.bias'].shape == (96,)


class HeadNet(gluon.HybridBlock):
    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.fc = gluon.nn.Dense(3, in_units=4)

    def hybrid_forward(self, F, x):
        return self.fc(x)


@pytest.mark.parametrize('cls', [AFASpatial, AFAChannel])
def test_regularizer_terms_in_engine_units(cls):
    """Slice contribution = alpha * N * (0.5/N sum ...) + N * beta * 0.5 ||fc||^2 (bias included)."""
    shapes = [(3, 4, 4), (5, 2, 2)]
    feats = [maps((4,) + s, 10 + i) for i, s in enumerate(shapes)]
    net = HeadNet()
    net.initialize(mx.init.Uniform(1.0))
    reg = cls(alpha=0.3, beta=0.05)
    reg.set_feature_shapes(shapes)
    reg.setup(net, [mx.cpu()])
    for block in reg.blocks().values():
        for p in block.collect_params().values():
            assert p.wd_mult == 0.0
    terms = dict(reg.terms(mx.cpu(), 4, [mx.nd.array(t) for s, t in feats], [mx.nd.array(s) for s, t in feats]))
    ref = 0.0
    for (s, t), module in zip(feats, reg.modules):
        w = {k: v.data().asnumpy() for k, v in module._collect_params_with_prefix().items()}
        if cls is AFASpatial:
            ref += np_ast(s, t, np_spatial_attention(s, w['fc1.weight'], w['fc2.weight'], w['fc2.bias']))[0]
        else:
            ref += np_act(s, t, np_channel_attention(s, w['fc1.weight'], w['fc2.weight'], w['bias']))[0]
    np.testing.assert_allclose(float(terms[reg.name].asscalar()), 0.3 * 4 * ref, rtol=1e-5)
    head = sum(np.sum(p.data().asnumpy() ** 2) for p in net.collect_params().values())
    np.testing.assert_allclose(float(terms[reg.name + '_new'].asscalar()), 4 * 0.05 * 0.5 * head, rtol=1e-5)


# ------------------------------------------------------------------ tiny network with stages
class Block2(gluon.HybridBlock):
    def __init__(self, channels, stride):
        super().__init__()
        with self.name_scope():
            self.conv1 = gluon.nn.Conv2D(channels, 3, stride, 1)
            self.conv2 = gluon.nn.Conv2D(channels, 3, 1, 1)

    def hybrid_forward(self, F, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class StageNet(gluon.HybridBlock):
    """A BN-free ResNet-shaped net (``layer1..layer4`` of blocks, ``fc``): stage-end taps at
    strides 4/8/16/32."""

    def __init__(self, classes=3):
        super().__init__()
        with self.name_scope():
            self.conv1 = gluon.nn.Conv2D(4, 3, 4, 1)
            for k, (c, st) in enumerate([(4, 1), (6, 2), (8, 2), (8, 2)]):
                layer = gluon.nn.HybridSequential()
                with layer.name_scope():
                    layer.add(Block2(c, st), Block2(c, 1))
                setattr(self, 'layer%d' % (k + 1), layer)
            self.fc = gluon.nn.Dense(classes)

    def hybrid_forward(self, F, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(F.relu(self.conv1(x))))))
        return self.fc(F.mean(x, axis=(2, 3)))


def stage_net(seed, classes=3):
    mx.random.seed(seed)
    net = StageNet(classes)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    return net


def copy_into(src, dst):
    for (_, a), (_, b) in zip(src.collect_params().items(), dst.collect_params().items()):
        b.set_data(a.data(a.list_ctx()[0]))


def images(n, seed=0, size=32):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, 3, size, size)).astype(np.uint8), rng.randint(0, 3, n)


@pytest.mark.parametrize('cls', [AFASpatial, AFAChannel])
def test_engine_step_two_slices_equals_one(cls):
    """One engine step on [cpu(0), cpu(1)] equals the step on [cpu(0)]: network AND attention
    modules (the batch-mean loss enters as n_slice * slice mean)."""
    imgs, labels = images(8)
    source = stage_net(1)
    ref = stage_net(2)
    out = []
    for ctx in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        net = stage_net(3)
        copy_into(ref, net)
        net.collect_params().reset_ctx(ctx)
        src = stage_net(4)
        copy_into(source, src)
        task = Transfer([cls(alpha=0.5, beta=0.1, seed=7, input_size=32)], src, crop=32)
        data = ArrayIter(imgs, labels, 8, mean=(128,) * 3, std=(64,) * 3, last_batch='rollover')
        eng = Engine(net, task, ctx, FitConfig(num_epochs=1, lr=0.05, wd=0.0, log_interval=0, mode='imperative'),
                     data, None, 3)
        eng.fit()
        params = {k: v.data(mx.cpu(0)).asnumpy() for k, v in net._collect_params_with_prefix().items()}
        for name, block in task.blocks().items():
            params.update({name + k: v.data(mx.cpu(0)).asnumpy() for k, v in block._collect_params_with_prefix().items()})
        params['source'] = np.concatenate([p.data(mx.cpu(0)).asnumpy().ravel() for p in src.collect_params().values()])
        out.append(params)
    assert set(out[0]) == set(out[1]) and any(k.startswith('afa') for k in out[0])
    for k in out[0]:
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-4, atol=1e-6, err_msg=k)
    # The source never moves; the attention modules do.
    src0 = np.concatenate([p.data().asnumpy().ravel() for p in source.collect_params().values()])
    np.testing.assert_array_equal(out[0]['source'], src0)


def test_source_gets_no_gradient_and_attention_trains():
    imgs, labels = images(4)
    src = stage_net(1)
    net = stage_net(2)
    task = Transfer([AFASpatial(alpha=1.0, input_size=32)], src, crop=32)
    task.setup(net, [mx.cpu()])
    assert all(p.grad_req == 'null' for p in src.collect_params().values())
    x = mx.nd.array((imgs - 128.0) / 64)
    with autograd.record():
        total, _, terms = task.loss(net, x, mx.nd.array(labels), mx.nd.array(labels))
    total.backward()
    assert set(terms) == {'ce', 'afa-ast', 'afa-ast_new'}
    att = task.blocks()['afa_ast']
    assert any(np.abs(p.grad().asnumpy()).sum() > 0 for p in att.collect_params().values())
    assert np.abs(net.layer1[1].conv2.weight.grad().asnumpy()).sum() > 0


def test_exported_student_has_no_attention_params(tmp_path):
    imgs, labels = images(8)
    net = stage_net(2)
    task = Transfer([AFAChannel(input_size=32)], stage_net(1), crop=32)
    data = ArrayIter(imgs, labels, 4, mean=(128,) * 3, std=(64,) * 3, last_batch='rollover')
    eng = Engine(net, task, [mx.cpu()], FitConfig(num_epochs=1, lr=0.05, wd=0.0, log_interval=0), data, None, 3)
    eng.fit()
    att_names = {p.name for p in task.blocks()['afa_act'].collect_params().values()}
    assert att_names
    from gluon_transfer.export import export_symbol
    prefix = str(tmp_path / 'student')
    files = export_symbol(net, prefix, (1, 3, 32, 32))
    saved = mx.nd.load(files['params'])
    assert saved and not any(k.split(':', 1)[1] in att_names for k in saved)
    assert not any('afa' in k for k in saved)
    sym = mx.sym.load(files['symbol'])
    assert not any('afa' in a for a in sym.list_arguments())


# ------------------------------------------------------------------ taps
def test_resnet_taps_match_the_reference_hooks():
    assert afa.default_taps(get_model('resnet101_v1b', classes=2)) == \
        ['layer1.2.conv3', 'layer2.3.conv3', 'layer3.22.conv3', 'layer4.2.conv3']
    assert afa.default_taps(get_model('resnet50_v1b', classes=2))[2] == 'layer3.5.conv3'


def test_mobilenetv2_taps_channels_and_strides():
    net = get_model('mobilenetv2_1.0', classes=5)
    net.initialize()
    taps = afa.default_taps(net)
    assert len(taps) == 4
    shapes = afa.check_taps(net, taps, 64)
    assert [s[0] for s in shapes] == [32, 64, 96, 320]
    assert [64 // s[1] for s in shapes] == [8, 16, 16, 32]
    # Each tap is a 1x1 conv followed by its BatchNorm in the block (the linear projection).
    from gluon_transfer.losses.taps import conv_paths
    convs = conv_paths(net)
    for t in taps:
        assert convs[t]._kwargs['kernel'] == (1, 1)
        parent, idx = t.rsplit('.', 1)
        seq = net
        for part in parent.split('.'):
            seq = seq._children[part]
        assert isinstance(seq._children[str(int(idx) + 1)], gluon.nn.BatchNorm)


def test_tap_errors_are_one_line_config_errors():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(2))
    with pytest.raises(ConfigError, match='name the feature taps'):
        afa.default_taps(net)
    res = stage_net(0)
    with pytest.raises(ConfigError, match='unknown feature tap'):
        afa.check_taps(res, ['layer1.1.conv3'], 32)


# ------------------------------------------------------------------ stage 2
def test_stage2_source_is_stage1_network_without_head(tmp_path):
    stage1 = get_model('resnet18_v1b', classes=5)
    mx.random.seed(3)
    stage1.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(2, 3, 32, 32))
    stage1(x)
    path = str(tmp_path / 'stage1.params')
    stage1.save_parameters(path)
    src = afa.stage2_source(path, 'resnet18_v1b', 5)
    assert all(p.grad_req == 'null' for p in src.collect_params().values())
    assert not src.fc.weight.data().asnumpy().any()      # the classifier is not taken
    taps = afa.default_taps(stage1)
    a = bottleneck_taps(stage1, taps, with_logits=False)(x)
    b = bottleneck_taps(src, taps, with_logits=False)(x)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u.asnumpy(), v.asnumpy())
    # A file missing a feature weight is refused by name.
    arrays = mx.nd.load(path)
    del arrays['layer2.0.conv1.weight']
    bad = str(tmp_path / 'bad.params')
    mx.nd.save(bad, arrays)
    with pytest.raises(CheckpointError, match='layer2.0.conv1.weight'):
        afa.stage2_source(bad, 'resnet18_v1b', 5)


def test_holdout_split_is_class_balanced_and_disjoint(tmp_path):
    from data_helpers import write_rec
    from gluon_transfer.data.recordio import inspect_recordio
    write_rec(str(tmp_path / 'train'), 40, label_of=lambda i: i % 4, size=8)
    tr, ho = afa.holdout_split(str(tmp_path / 'train.rec'), 0.25, str(tmp_path / 'split'), seed=1)
    a, b = inspect_recordio(tr), inspect_recordio(ho)
    # 25 % of 10 records per class, rounded half up: 3 per class held out.
    assert np.bincount(b.labels.astype(int)).tolist() == [3, 3, 3, 3]
    assert a.num_records == 28 and not set(a.keys.tolist()) & set(b.keys.tolist())
