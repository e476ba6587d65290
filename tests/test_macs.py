"""MACs counter: hand counts on small layers, GluonCV resnet50_v1b (~4.1 G), and the AFS
accounting (baseline / static / expected) against an independent per-layer computation."""
import math

import numpy as np
import pytest
import mxnet as mx
from mxnet.gluon import nn
from gluoncv.model_zoo import resnet50_v1b

from gluon_transfer.errors import ConfigError
from gluon_transfer.macs import afs_macs, count_macs, format_macs_table
from gluon_transfer.models.afs_resnet import AFSResNetV1b, afs_gates


def test_hand_counted_layers():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, in_channels=3),          # 8*10*10 * 3*9 = 21600
            nn.BatchNorm(),                                      # 800 elements
            nn.Activation('relu'),                               # 800 elements
            nn.Conv2D(8, 3, strides=2, padding=1, groups=4),     # 8*5*5 * (8/4)*9 = 3600
            nn.Conv2D(8, 3, padding=1, groups=8),                # depthwise: 8*5*5 * 1*9 = 1800
            nn.Dense(5))                                         # 200 * 5 = 1000
    r = count_macs(net, (2, 3, 10, 10))
    assert [row['macs'] for row in r['rows'] if row['op'] != 'BatchNorm' and row['op'] != 'Activation'] == \
        [21600, 3600, 1800, 1000]
    assert r['conv'] == 21600 + 3600 + 1800
    assert r['dense'] == 1000
    assert r['total'] == 28000
    assert r['bn'] == 800 and r['elementwise'] == 800
    assert 'total (conv+dense)' in format_macs_table(r)


def _resnet50_hand_count(size=224):
    """Bottleneck ResNet-50-v1b MACs from the architecture (stride on the 3x3 conv)."""
    s = size // 2
    total = s * s * 64 * 3 * 49                       # stem 7x7/2
    s //= 2                                           # max pool
    cin = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            st = stride if i == 0 else 1
            so = s // st
            total += s * s * planes * cin                 # conv1 1x1 at input resolution
            total += so * so * planes * planes * 9        # conv2 3x3, stride
            total += so * so * planes * 4 * planes        # conv3 1x1
            if i == 0:
                total += so * so * planes * 4 * cin       # downsample 1x1, stride
            s, cin = so, planes * 4
    return total + 2048 * 1000


def test_resnet50_v1b_is_4_1_gmacs():
    r = count_macs(resnet50_v1b(), (1, 3, 224, 224))
    assert r['total'] == _resnet50_hand_count() == 4089184256
    assert r['dense'] == 2048000
    assert abs(r['total'] / 4.1e9 - 1) < 0.005          # the published "4.1 G"
    # batch is divided out
    assert count_macs(resnet50_v1b(), (4, 3, 64, 64))['total'] == _resnet50_hand_count(64)


def test_bad_shape():
    with pytest.raises(ConfigError):
        count_macs(resnet50_v1b(), (0, 3, 224, 224))


def test_afs_accounting_matches_independent_formula():
    rng = np.random.RandomState(0)
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, density=0.7)
    net.initialize()
    size = 64
    masks = {}
    for name, _, _, gate, _, _ in afs_gates(net):
        c = gate.channels
        m = (rng.rand(c) > 0.3).astype(np.float64)
        s = m * (rng.rand(c) > 0.5)
        masks[name] = (m, s)
    got = afs_macs(net, (1, 3, size, size), masks=masks)
    base = _resnet_1111_count(size)
    assert got['baseline'] == base
    # independent: per block, conv1 (1x1 at input res), conv2 (3x3, stride), conv3 (1x1)
    static = expected = base
    s = size // 4
    cin = 64
    for li, planes in enumerate((64, 128, 256, 512)):
        st = 1 if li == 0 else 2
        so = s // st
        full = [s * s * planes * cin, so * so * planes * planes * 9, so * so * planes * 4 * planes]
        couts = [planes, planes, 4 * planes]
        cins = [cin, planes, planes]
        prev_alive = prev_eff = None
        for k in range(3):
            m, sm = masks['layer%d.0.gate%d' % (li + 1, k + 1)]
            alive, dyn = m.sum(), sm.sum()
            eff = (alive - dyn) + math.ceil(0.7 * dyn - 1e-9)
            ia = cins[k] if prev_alive is None else prev_alive
            ie = cins[k] if prev_eff is None else prev_eff
            static += -full[k] + full[k] * ia * alive / (cins[k] * couts[k]) + ia * dyn
            expected += -full[k] + full[k] * ie * eff / (cins[k] * couts[k]) + ie * dyn
            prev_alive, prev_eff = alive, eff
        s, cin = so, 4 * planes
    assert got['static'] == int(round(static))
    assert got['expected'] == int(round(expected))
    assert got['expected'] < got['static'] < got['baseline']
    # all masks 1, d = 1: static = expected = baseline + gate FCs = the counted gated graph
    net2 = AFSResNetV1b(layers=[1, 1, 1, 1], classes=10, density=1.0)
    full = afs_macs(net2, (1, 3, size, size))
    assert full['static'] == full['expected'] == count_macs(net2, (1, 3, size, size))['total']


def _resnet_1111_count(size):
    s = size // 4
    total = (size // 2) ** 2 * 64 * 3 * 49
    cin = 64
    for li, planes in enumerate((64, 128, 256, 512)):
        so = s // (1 if li == 0 else 2)
        total += s * s * planes * cin + so * so * planes * planes * 9 + so * so * 4 * planes * planes
        total += so * so * 4 * planes * cin
        s, cin = so, 4 * planes
    return total + 2048 * 10


def test_pruned_cifar_basic_block_network_against_a_hand_count():
    """CIFAR ResNet-v1 with one basic block per stage (16/16/32/64 channels) at 32 px, every
    gate's masks chosen: the pruned export keeps c1 = sum(m1) rows of conv1, the full width of
    conv2 (it feeds the residual add) and, for gates with dynamic channels left, the gate FCs
    on the kept widths. Counted by hand, layer by layer."""
    from gluon_transfer.models.afs_resnet import AFSCIFARResNetV1
    from gluon_transfer.prune import prune_afs
    rng = np.random.RandomState(5)
    net = AFSCIFARResNetV1(layers=[1, 1, 1], classes=5, density=0.75)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    masks = {}
    for name, _, k, gate, _, _ in afs_gates(net):
        c = gate.channels
        m = (rng.rand(c) > 0.4).astype(np.float32)
        m[0] = 1
        s = m * (rng.rand(c) > 0.5) if name != 'features.4.0.gate1' else np.zeros(c, np.float32)  # one all static
        masks[name] = (m, s)
        gate.mask_m.set_data(mx.nd.array(m))
        gate.mask_s.set_data(mx.nd.array(s))
    got = count_macs(prune_afs(net), (1, 3, 32, 32))['total']
    stem, fc = 32 * 32 * 16 * 3 * 9, 64 * 5
    total = static = baseline = stem + fc
    for stage, (cin, cout, hw) in enumerate(((16, 16, 32 * 32), (16, 32, 16 * 16), (32, 64, 8 * 8))):
        m1, s1 = masks['features.%d.0.gate1' % (stage + 2)]
        m2, s2 = masks['features.%d.0.gate2' % (stage + 2)]
        c1, c2 = int(m1.sum()), int(m2.sum())
        down = hw * cout * cin if cin != cout else 0          # 1x1 downsample conv at the output size
        baseline += hw * cout * cin * 9 + hw * cout * cout * 9 + down
        total += hw * c1 * cin * 9                            # conv1: kept rows, every input channel
        total += hw * cout * c1 * 9                           # conv2: full width, kept input columns
        total += down
        total += (cin * c1 if s1.sum() > 0 else 0) + (c1 * cout if s2.sum() > 0 else 0)   # runtime gate FCs
        # afs_macs's static count: conv2's dead rows removed too; FCs for the dynamic channels only
        static += hw * c1 * cin * 9 + hw * c2 * c1 * 9 + down + cin * int(s1.sum()) + c1 * int(s2.sum())
    mc = afs_macs(net, (1, 3, 32, 32))
    assert got == total
    assert mc['baseline'] == baseline and mc['static'] == static
    assert static < total < baseline          # the dense export cannot drop conv2's rows
