"""AFDS mask selection: held-out training split only, gate statistics against numpy,
thresholds, MACs-budget search, mask application, the two-phase schedule and the report."""
import math

import numpy as np
import pytest
import mxnet as mx

from gluon_transfer.afds import (TrainHoldout, afds_report, afds_schedule, apply_masks, collect_gate_statistics,
                                 current_masks, format_afds_report, select_masks, split_train_holdout,
                                 update_masks)
from gluon_transfer.data.base import ArrayIter
from gluon_transfer.errors import ConfigError, DataError
from gluon_transfer.macs import afs_macs
from gluon_transfer.models.afs_resnet import AFSResNetV1b, afs_gates

from data_helpers import write_rec


def _net(density=0.5, seed=0):
    mx.random.seed(seed)
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=4, density=density, gate_init='random')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    return net


def _data(rng, n=24):
    images = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
    labels = np.arange(n) % 4
    return images, labels


def test_statistics_refuse_anything_but_a_training_holdout(rng):
    net = _net()
    images, labels = _data(rng)
    val = ArrayIter(images, labels, 8)
    with pytest.raises(ConfigError, match='held-out split of the training data'):
        collect_gate_statistics(net, val)
    with pytest.raises(ConfigError, match='TrainHoldout'):
        update_masks(net, val, thres_m=0.1, thres_s=0.1)


def test_statistics_refuse_non_finite_gate_values(rng):
    net = _net()
    images, labels = _data(rng)
    holdout, _, _ = TrainHoldout.from_arrays(images, labels, fraction=0.5, seed=0, batch_size=4)
    bias = net.layer2[0].gate1.fc.bias
    bias.set_data(mx.nd.full(bias.shape, float('inf')))
    with pytest.raises(DataError, match=r'AFS gate layer2\.0\.gate1: \d+ non-finite gate values'):
        collect_gate_statistics(net, holdout)
    np.testing.assert_array_equal(net.layer2[0].gate1.mask_m.data().asnumpy(), 1)      # masks restored


def test_from_arrays_split_is_disjoint_and_class_balanced(rng):
    images, labels = _data(rng, 40)
    hold, tr_images, tr_labels = TrainHoldout.from_arrays(images, labels, fraction=0.2, seed=3, batch_size=4)
    assert hold.num_samples == 8 and len(tr_images) == 32        # 2 of each class's 10
    assert np.bincount(labels[hold.positions]).tolist() == [2, 2, 2, 2]
    held = {images[p].tobytes() for p in hold.positions}
    assert not any(img.tobytes() in held for img in tr_images)


def test_split_train_holdout_recordio(tmp_path):
    rec, _ = write_rec(str(tmp_path / 'train'), 40, label_of=lambda i: i % 4)
    out = split_train_holdout('cifar10', rec, fraction=0.2, seed=1, cache_dir=str(tmp_path / 'cache'),
                              batch_size=3, input_size=8)
    hold = out['holdout']
    assert isinstance(hold, TrainHoldout) and out['num_holdout'] == 8 and out['num_train'] == 32
    from gluon_transfer.data.recordio import inspect_recordio
    rest = inspect_recordio(out['train_rec'], out['train_idx'])
    hkeys = set(hold.positions.tolist())
    assert hkeys.isdisjoint(set(rest.keys.tolist())) and hkeys | set(rest.keys.tolist()) == set(range(40))
    seen = sum(b.data.shape[0] - b.pad for b in hold)
    assert seen == 8
    again = split_train_holdout('cifar10', rec, fraction=0.2, seed=1, cache_dir=str(tmp_path / 'cache'),
                                batch_size=3, input_size=8)
    np.testing.assert_array_equal(again['holdout'].positions, hold.positions)


def _numpy_pi(x_in, gate, d):
    """Gate values of ``gate`` (raw GAP input, all masks 1) for the conv input ``x_in``, numpy."""
    W, b = gate.fc.weight.data().asnumpy(), gate.fc.bias.data().asnumpy()
    h = np.maximum(x_in.mean(axis=(2, 3)) @ W.T + b, 0).astype(np.float64)
    k = math.ceil(d * h.shape[1] - 1e-9)
    pi = np.zeros_like(h)
    for i in range(len(h)):
        top = sorted(range(h.shape[1]), key=lambda j: (-h[i, j], j))[:k]
        pi[i, top] = h[i, top]
    return pi


def _numpy_block_stats(net, x, d):
    """(pi, act) of the three gates of layer1.0 with numpy gating: convolutions and BNs from
    the block's layers on numpy inputs, gates, WTA, ReLUs and means in numpy. act of gate1/2
    is the mean of relu(pi * y), of gate3 (before the residual add) the mean of |pi * y|."""
    blk = net.layer1[0]
    a = net.maxpool(net.relu(net.bn1(net.conv1(mx.nd.array(x))))).asnumpy()
    out = []
    for k in (1, 2, 3):
        y = getattr(blk, 'bn%d' % k)(getattr(blk, 'conv%d' % k)(mx.nd.array(a))).asnumpy().astype(np.float64)
        pi = _numpy_pi(a, getattr(blk, 'gate%d' % k), d)
        gated = pi[:, :, None, None] * y
        act = (np.maximum(gated, 0) if k < 3 else np.abs(gated)).mean(axis=(2, 3))
        out.append((pi, act))
        a = np.maximum(gated, 0).astype(np.float32)
    return out


def test_statistics_match_numpy_and_restore_state(rng):
    net = _net(density=0.5)
    images, labels = _data(rng, 12)
    # normalised inputs: raw 0..255 pixels through random gates and fresh BN statistics overflow by layer 3
    hold, _, _ = TrainHoldout.from_arrays(images, labels, fraction=0.5, batch_size=3, mean=(127.5,) * 3,
                                          std=(64.0,) * 3)   # 8 samples, last pad 1
    # masks that must not influence the statistics and must come back afterwards
    g = net.layer1[0].gate1
    m = np.ones(g.channels, np.float32)
    m[:10] = 0
    g.mask_m.set_data(mx.nd.array(m))
    net.hybridize()
    stats = collect_gate_statistics(net, hold)
    x = np.concatenate([b.data.asnumpy()[:b.data.shape[0] - b.pad] for b in hold])
    g.mask_m.set_data(mx.nd.ones(g.channels))          # the reference gates every channel
    for k, (pi, act) in enumerate(_numpy_block_stats(net, x, 0.5), 1):
        s = stats['layer1.0.gate%d' % k]
        assert s['count'] == 8
        np.testing.assert_allclose(s['mean'], pi.mean(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s['var'], pi.var(axis=0), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(s['act'], act.mean(axis=0), rtol=1e-4, atol=1e-6)
    g.mask_m.set_data(mx.nd.array(m))
    stats = collect_gate_statistics(net, hold)
    np.testing.assert_array_equal(g.mask_m.data().asnumpy(), m)
    assert net._active                                       # hybridization restored
    assert len(stats) == 12


def _fake_stats(net, rng):
    return {name: {'mean': rng.rand(g.channels), 'var': rng.rand(g.channels) * 0.1, 'act': rng.rand(g.channels),
                   'count': 10}
            for name, _, _, g, _, _ in afs_gates(net)}


def test_threshold_selection(rng):
    net = _net()
    stats = _fake_stats(net, rng)
    # default: relative to the layer (its average mean gate value / variance)
    sel = select_masks(stats, thres_m=0.7, thres_s=0.4)
    assert sel['thres_scale'] == 'layer'
    for name, st in stats.items():
        m, s = sel['masks'][name]
        want = (st['mean'] > 0.7 * st['mean'].sum() / len(st['mean'])).astype(float)
        np.testing.assert_array_equal(m, want)
        np.testing.assert_array_equal(s, want * (st['var'] > 0.4 * st['var'].sum() / len(st['var'])))
        assert 0 < m.sum() < len(m)
    # the same gates at 100x the scale: the same masks (the thresholds follow the statistic's scale)
    scaled = {n: dict(st, mean=100 * st['mean'], var=1e4 * st['var']) for n, st in stats.items()}
    sel100 = select_masks(scaled, thres_m=0.7, thres_s=0.4)
    for name in stats:
        for a, b in zip(sel['masks'][name], sel100['masks'][name]):
            np.testing.assert_array_equal(a, b)
    # absolute: the numbers themselves
    sel = select_masks(stats, thres_m=0.3, thres_s=0.05, thres_scale='absolute')
    for name, st in stats.items():
        m, s = sel['masks'][name]
        np.testing.assert_array_equal(m, (st['mean'] > 0.3).astype(float))
        np.testing.assert_array_equal(s, m * (st['var'] > 0.05))
    # everything below threshold: one channel (largest mean) survives per gate
    sel = select_masks(stats, thres_m=2.0, thres_s=2.0, thres_scale='absolute')
    for name, st in stats.items():
        m, _ = sel['masks'][name]
        assert m.sum() == 1 and m[np.argmax(st['mean'])] == 1
    with pytest.raises(ConfigError, match='thres_scale must be one of layer, absolute'):
        select_masks(stats, thres_m=0.5, thres_scale='median')


def test_random_masks_keep_the_counts_and_the_macs_of_every_layer(rng):
    from gluon_transfer.afds import random_masks
    net = _net(density=0.9)
    stats = _fake_stats(net, rng)
    sel = select_masks(stats, macs_budget=0.5, net=net, input_shape=(1, 3, 32, 32))
    rnd = random_masks(sel['masks'], seed=3)
    assert list(rnd) == list(sel['masks'])
    moved = 0
    for name, (m, s) in sel['masks'].items():
        rm, rs = rnd[name]
        assert rm.sum() == m.sum() and rs.sum() == (m * s).sum() and np.all(rs <= rm)
        moved += int((rm != m).sum())
    assert moved > 0
    a = afs_macs(net, (1, 3, 32, 32), masks=sel['masks'])
    b = afs_macs(net, (1, 3, 32, 32), masks=rnd)
    assert (a['static'], a['expected']) == (b['static'], b['expected'])
    assert [(l['static'], l['expected']) for l in a['layers']] == [(l['static'], l['expected']) for l in b['layers']]
    again = random_masks(sel['masks'], seed=3)
    other = random_masks(sel['masks'], seed=4)
    assert all(np.array_equal(again[n][0], rnd[n][0]) for n in rnd)              # seeded
    assert any(not np.array_equal(other[n][0], rnd[n][0]) for n in rnd)
    # a uniform draw: over many seeds every channel of a layer is kept about equally often
    name = 'layer2.0.gate2'
    kept = np.mean([random_masks({name: sel['masks'][name]}, seed=k)[name][0] for k in range(400)], axis=0)
    frac = sel['masks'][name][0].mean()
    assert np.abs(kept - frac).max() < 0.12


@pytest.mark.parametrize('budget,scope', [(0.5, 'layer'), (0.4, 'global'), (0.4, 'layer')])  # stem+downsample: ~1/3
def test_budget_search_meets_budget(budget, scope, rng):
    net = _net(density=0.9)
    stats = _fake_stats(net, rng)
    sel = select_masks(stats, macs_budget=budget, net=net, input_shape=(1, 3, 64, 64), scope=scope)
    mc = sel['macs']
    assert mc['expected'] <= budget * mc['baseline']
    assert mc['expected'] > 0.5 * budget * mc['baseline']      # not grossly over-pruned
    assert 0 < sel['quantile'] <= 1
    # static pruning only budget
    sel = select_masks(stats, macs_budget=budget, net=net, input_shape=(1, 3, 64, 64), budget_on='static')
    assert sel['macs']['static'] <= budget * sel['macs']['baseline']
    with pytest.raises(ConfigError, match='unreachable'):
        select_masks(stats, macs_budget=0.001, net=net, input_shape=(1, 3, 64, 64))
    with pytest.raises(ConfigError, match='not both'):
        select_masks(stats, thres_m=0.1, macs_budget=0.5, net=net)


def test_apply_masks_sets_gamma_of_new_static_channels(rng):
    net = _net()
    stats = _fake_stats(net, rng)
    sel = select_masks(stats, thres_m=0.2, thres_s=0.05, thres_scale='absolute')
    apply_masks(net, sel['masks'], stats)
    got = current_masks(net)
    for name, g in [(n, g) for n, _, _, g, _, _ in afs_gates(net)]:
        m, s = sel['masks'][name]
        np.testing.assert_array_equal(got[name][0], m)
        static = (m == 1) & (s == 0)
        np.testing.assert_allclose(g.gamma.data().asnumpy()[static], stats[name]['mean'][static], rtol=1e-6)


def test_schedule_two_phases_and_report(rng):
    from gluon_transfer.engine.tasks import Classify
    from gluon_transfer.engine.trainer import Engine, FitConfig
    net = _net(density=0.8)
    images, labels = _data(rng, 24)
    norm = dict(mean=(127.5,) * 3, std=(64.0,) * 3)      # raw pixels overflow the random gates (see above)
    hold, tr_images, tr_labels = TrainHoldout.from_arrays(images, labels, fraction=0.25, batch_size=6, **norm)
    train = ArrayIter(tr_images, tr_labels, 6, shuffle=True, last_batch='rollover', **norm)
    val = ArrayIter(images[:8], labels[:8], 8, **norm)
    cfg = FitConfig(num_epochs=2, lr=0.01, wd=0.0, log_interval=100)
    eng = Engine(net, Classify(), [mx.cpu()], cfg, train, val, num_classes=4)
    out = afds_schedule(eng, hold, macs_budget=0.5, input_shape=(1, 3, 32, 32))
    assert len(out['phase1']) == 1 and len(out['phase2']) == 1
    assert eng.global_step == 2 * len(train)
    mc = out['selection']['macs']
    assert mc['expected'] <= 0.5 * mc['baseline']
    rep = afds_report(net, (1, 3, 32, 32), evaluation=eng.evaluate(val))
    assert rep['expected'] == mc['expected'] and rep['baseline'] == mc['baseline']
    assert 0 <= rep['top1'] <= 1
    text = format_afds_report(rep)
    assert 'baseline MACs' in text and 'top-1' in text


def test_activation_statistic_ranks_the_channels(rng):
    net = _net()
    stats = _fake_stats(net, rng)
    sel = select_masks(stats, thres_m=0.4, thres_s=0.05, mask_stat='activation', thres_scale='absolute')
    for name, st in stats.items():
        m, s = sel['masks'][name]
        np.testing.assert_array_equal(m, (st['act'] > 0.4).astype(float))
        np.testing.assert_array_equal(s, m * (st['var'] > 0.05))          # s still follows the gate variance
    sel = select_masks(stats, macs_budget=0.5, net=net, input_shape=(1, 3, 64, 64), mask_stat='activation')
    for name, st in stats.items():                                        # per layer: the lowest act pruned
        m = sel['masks'][name][0]
        if 0 < m.sum() < len(m):
            assert st['act'][m == 0].max() <= st['act'][m == 1].min()
    with pytest.raises(ConfigError, match='mask_stat must be one of gate, activation'):
        select_masks(stats, thres_m=0.4, mask_stat='magnitude')
    old = {n: {k: v for k, v in st.items() if k != 'act'} for n, st in stats.items()}
    with pytest.raises(ConfigError, match="needs statistics with 'act'"):
        select_masks(old, thres_m=0.4, mask_stat='activation')


@pytest.mark.parametrize('q', [8, 16])
def test_channel_multiple_rounds_the_removable_widths(q, rng):
    net = _net(density=0.9)
    stats = _fake_stats(net, rng)
    # thresholds: kept count of conv1/conv2 gates rounded up with the largest pruned means; conv3 untouched
    sel = select_masks(stats, thres_m=0.5, thres_s=0.05, channel_multiple=q, thres_scale='absolute')
    for name, st in stats.items():
        m = sel['masks'][name][0]
        plain = (st['mean'] > 0.5).astype(float)
        if name.endswith('gate3'):
            np.testing.assert_array_equal(m, plain)
            continue
        want = min(len(m), -(-int(plain.sum()) // q) * q)
        assert m.sum() == want and m.sum() % q == 0
        assert (m >= plain).all()                                          # only adds channels
        added = (m == 1) & (plain == 0)
        if added.any() and (m == 0).any():
            assert st['mean'][added].min() >= st['mean'][m == 0].max()
    # a budget still holds after the rounding, and the rounding happened
    for scope in ('layer', 'global'):
        sel = select_masks(stats, macs_budget=0.5, net=net, input_shape=(1, 3, 64, 64), scope=scope,
                           channel_multiple=q)
        assert sel['macs']['expected'] <= 0.5 * sel['macs']['baseline']
        assert sel['channel_multiple'] == q
        for name, (m, _) in sel['masks'].items():
            if not name.endswith('gate3'):
                assert m.sum() % q == 0 or m.sum() == len(m), (name, m.sum())
    with pytest.raises(ConfigError, match='channel_multiple must be an integer >= 1'):
        select_masks(stats, thres_m=0.5, channel_multiple=0)


def test_static_only_selection_leaves_no_runtime_gate(rng):
    from gluon_transfer.prune import prune_afs
    net = _net(density=0.9)
    stats = _fake_stats(net, rng)
    sel = select_masks(stats, macs_budget=0.5, net=net, input_shape=(1, 3, 64, 64), static_only=True,
                       channel_multiple=8)
    assert sel['static_only'] and all(s.sum() == 0 and m.sum() >= 1 for m, s in sel['masks'].values())
    mc = sel['macs']
    assert mc['static'] == mc['expected'] <= 0.5 * mc['baseline']
    # the same m as a dynamic selection at the quantile found (only s differs)
    plain = select_masks(stats, thres_m=0.5, thres_s=0.05)
    only = select_masks(stats, thres_m=0.5, static_only=True)
    for name in stats:
        np.testing.assert_array_equal(only['masks'][name][0], plain['masks'][name][0])
    apply_masks(net, sel['masks'], stats)
    pruned = prune_afs(net)
    assert not any(any(b['gated']) for b in pruned._config['block_config'])     # a plain narrower ResNet
    x = mx.nd.array(rng.uniform(-1, 1, (2, 3, 32, 32)))
    np.testing.assert_allclose(pruned(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match='thres_s does not apply'):
        select_masks(stats, thres_m=0.5, thres_s=0.1, static_only=True)


def test_basic_block_selection_rounds_only_conv1_and_collects_every_gate(rng):
    """In a basic block only conv1's channels are removable (conv2 feeds the residual add): the
    channel multiple rounds gate1's kept counts and leaves gate2's as the threshold gave them;
    the statistics cover both gates (numpy gating), act with |.| after gate2."""
    from gluon_transfer.models.afs_resnet import AFSCIFARResNetV1
    mx.random.seed(0)
    net = AFSCIFARResNetV1(layers=[1, 1, 1], classes=4, density=0.9, gate_init='random')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    stats = _fake_stats(net, rng)
    sel = select_masks(stats, thres_m=0.5, thres_s=0.05, channel_multiple=8, net=net, input_shape=(1, 3, 32, 32),
                       thres_scale='absolute')
    for name, st in stats.items():
        m = sel['masks'][name][0]
        plain = (st['mean'] > 0.5).astype(float)
        if name.endswith('gate2'):
            np.testing.assert_array_equal(m, plain)
        else:
            assert m.sum() == min(len(m), -(-int(plain.sum()) // 8) * 8)
    images, labels = _data(rng, 16)
    hold, _, _ = TrainHoldout.from_arrays(images, labels, fraction=0.5, batch_size=4, mean=(127.5,) * 3,
                                          std=(64.0,) * 3)
    got = collect_gate_statistics(net, hold)
    assert sorted(got) == sorted(stats) and len(got) == 6
    # first block, numpy gating: act of gate1 = mean relu(pi y), of gate2 (before the add) = mean |pi y|
    x = np.concatenate([b.data.asnumpy()[:b.data.shape[0] - b.pad] for b in hold])
    blk = net.features[2][0]
    a = net.features[1](net.features[0](mx.nd.array(x))).asnumpy()
    for k, (conv, bn) in enumerate(((blk.body[0], blk.body[1]), (blk.body[3], blk.body[4])), 1):
        y = bn(conv(mx.nd.array(a))).asnumpy().astype(np.float64)
        pi = _numpy_pi(a, blk.gate(k), 0.9)
        gated = pi[:, :, None, None] * y
        act = (np.maximum(gated, 0) if k == 1 else np.abs(gated)).mean(axis=(2, 3))
        st = got['features.2.0.gate%d' % k]
        np.testing.assert_allclose(st['mean'], pi.mean(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(st['act'], act.mean(axis=0), rtol=1e-4, atol=1e-6)
        a = np.maximum(gated, 0).astype(np.float32)
    assert (np.abs(gated) > 0).any() and (gated < 0).any()     # |.| and relu differ here


def test_gate_stats_file_movement_and_plot(tmp_path, capsys):
    """afds_gate_stats.json holds both statistics; gate_movement against hand-computed
    numbers; tools/plot_afds_gates.py draws it and refuses a run without it in one line."""
    import os
    import sys
    from gluon_transfer.afds.report import gate_movement, read_gate_stats, write_gate_stats
    start = {'a.gate1': {'mean': np.array([1.0, 1.0]), 'var': np.zeros(2), 'act': np.ones(2),
                         'h_mean': np.array([1.0, 1.0]), 'count': 4},
             'a.gate2': {'mean': np.array([1.0, 1.0, 1.0]), 'var': np.zeros(3), 'act': np.ones(3),
                         'h_mean': np.array([1.0, 1.0, 1.0]), 'count': 4}}
    end = {'a.gate1': dict(start['a.gate1'], mean=np.array([0.5, 1.5]), h_mean=np.array([0.8, 1.2]),
                           var=np.array([0.1, 0.3])),
           'a.gate2': dict(start['a.gate2'], mean=np.array([0.0, 1.0, 2.0]), h_mean=np.array([1.0, 1.0, 1.0]),
                           var=np.array([0.0, 0.0, 0.3]))}
    path = str(tmp_path / 'run' / 'afds_gate_stats.json')
    os.makedirs(os.path.dirname(path))
    write_gate_stats(path, 'start', start, {'gate_lr_mult': 10.0})
    write_gate_stats(path, 'mask_update', end)
    rec = read_gate_stats(path)
    assert set(rec) == {'start', 'mask_update', 'info'} and rec['mask_update']['a.gate2']['mean'] == [0.0, 1.0, 2.0]
    mv = gate_movement(rec['start'], rec['mask_update'])
    # gate1: |moved| = mean(0.5, 0.5) = 0.5, h moved 0.2, spread std(0.8, 1.2) / 1 = 0.2, var 0.2
    assert mv['a.gate1'] == pytest.approx({'moved': 0.5, 'h_moved': 0.2, 'spread': 0.2, 'var': 0.2})
    # gate2: |moved| = 2/3, h moved 0, spread 0 (h all equal), var 0.1
    assert mv['a.gate2'] == pytest.approx({'moved': 2 / 3, 'h_moved': 0.0, 'spread': 0.0, 'var': 0.1})
    assert mv['median'] == pytest.approx({'moved': (0.5 + 2 / 3) / 2, 'h_moved': 0.1, 'spread': 0.1, 'var': 0.15})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, 'tools'))
    try:
        import plot_afds_gates
    finally:
        sys.path.pop(0)
    out = str(tmp_path / 'gates.png')
    assert plot_afds_gates.main([str(tmp_path / 'run'), '--label', 'x, with a comma', '--out', out]) == 0
    assert os.path.getsize(out) > 1000
    assert plot_afds_gates.main([str(tmp_path), '--out', out]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'no AFDS gate statistics' in err and err.count('\n') == 1
