"""Non-binary layer groups: structure-derived groups, lr/wd multipliers, re-initialisation,
and the --print-param-groups dry run."""
import numpy as np
import pytest
import mxnet as mx

from gluon_transfer.errors import ConfigError
from gluon_transfer.finetune import main
from gluon_transfer.methods.base import build_target
from gluon_transfer.param_groups import layer_groups, plan, apply_multipliers, reinit_new_groups
from gluon_transfer.zoo import get_model


def test_resnet50_v1b_groups_follow_its_blocks():
    groups = layer_groups(get_model('resnet50_v1b', classes=4))
    names = [g for g, _ in groups]
    assert names == (['conv1'] + ['layer1.%d' % i for i in range(3)] + ['layer2.%d' % i for i in range(4)]
                     + ['layer3.%d' % i for i in range(6)] + ['layer4.%d' % i for i in range(3)] + ['fc'])
    stem = dict(groups)['conv1']
    assert stem == ['conv1.weight', 'bn1.gamma', 'bn1.beta', 'bn1.running_mean', 'bn1.running_var']
    assert 'layer2.0.downsample.0.weight' in dict(groups)['layer2.0']
    assert dict(groups)['fc'] == ['fc.weight', 'fc.bias']
    assert len(layer_groups(get_model('resnet101_v1b'))) == 35


def _net():
    net = get_model('resnet18_v1b', classes=3)
    net.initialize()
    net(mx.nd.zeros((1, 3, 16, 16)))
    return net


def test_lr_assignment_lower_upper_head():
    net = _net()
    rows = plan(net, lrs=(0.1, 0.01, 0.001), num_low=3, new_layers=2, no_wd=True)
    by = {r.key: r for r in rows}
    # groups 0..2 (conv1, layer1.0, layer1.1) are "lower" and get the third rate
    for key in ('conv1.weight', 'layer1.0.conv1.weight', 'layer1.1.bn2.gamma'):
        assert by[key].section == 'lower' and by[key].lr_mult == pytest.approx(0.01), key
    for key in ('layer2.0.conv1.weight', 'layer4.1.conv2.weight'):
        assert by[key].section == 'upper' and by[key].lr_mult == pytest.approx(0.1), key
    assert by['fc.weight'].lr_mult == 1.0 and by['fc.weight'].section == 'head'
    assert by['layer4.1.conv2.weight'].new and not by['layer4.0.conv2.weight'].new     # --new-layers 2
    assert by['layer1.0.bn1.gamma'].wd_mult == 0 and by['fc.bias'].wd_mult == 0 and by['fc.weight'].wd_mult == 1
    assert by['layer1.0.bn1.running_mean'].lr_mult is None
    apply_multipliers(net, rows)
    assert net.layer1[0].conv1.weight.lr_mult == pytest.approx(0.01)
    assert net.layer2[0].conv1.weight.lr_mult == pytest.approx(0.1)
    assert net.fc.weight.lr_mult == 1.0
    with pytest.raises(ConfigError, match='--num-low-lr-layers'):
        plan(net, lrs=(0.1, 0.01, 0.001))
    with pytest.raises(ConfigError, match='exceeds the 9 layer groups'):
        plan(net, new_layers=11)


def test_reinit_touches_only_the_new_groups():
    src = _net()
    net = build_target('resnet18_v1b', 3, [mx.cpu()], src, mx.init.Xavier())
    rows = plan(net, new_layers=2)
    assert reinit_new_groups(net, rows, mx.init.Xavier(), [mx.cpu()]) == ['layer4.1']
    s, t = src._collect_params_with_prefix(), net._collect_params_with_prefix()
    np.testing.assert_array_equal(t['layer4.0.conv1.weight'].data().asnumpy(), s['layer4.0.conv1.weight'].data().asnumpy())
    assert np.abs(t['layer4.1.conv1.weight'].data().asnumpy() - s['layer4.1.conv1.weight'].data().asnumpy()).max() > 0
    np.testing.assert_array_equal(t['layer4.1.bn1.gamma'].data().asnumpy(), np.ones(512))   # BN's own init


def test_print_param_groups_dry_run(capsys, tmp_path):
    status = main(['--model', 'resnet18_v1b', '--print-param-groups', '--input-size', '32', '--reg', 'l2sp',
                   '--l2sp-variant', 'groups', '--l2sp-rates', '0.5,0.2,0.1', '--lrs', '0.1,0.01,0.001',
                   '--num-low-lr-layers', '2', '--new-layers', '2', '--no-wd', '--save-dir', str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 11 and '.' in parts[0]:
            table[parts[0]] = parts
    # parameter group index section new kind lr_mult wd_mult l2sp_rate anchor shape
    assert table['conv1.weight'][1:] == ['conv1', '0', 'lower', 'no', 'weight', '0.01', '1', '0.1', 'w0', '64x3x7x7']
    assert table['layer1.1.conv1.weight'][1:9] == ['layer1.1', '2', 'upper', 'no', 'weight', '0.1', '1', '0.2']
    assert table['layer1.1.bn1.beta'][5:9] == ['norm', '0.1', '0', '-']
    assert table['layer4.1.conv1.weight'][3:10] == ['upper', 'yes', 'weight', '0.1', '1', '0.5', '0']
    assert table['fc.weight'][1:] == ['fc', '9', 'head', 'yes', 'weight', '1', '1', '0.5', '0', '1000x512']
    assert '[ 9] fc' in out and 'lr 0.001' in out
    assert not list(tmp_path.glob('*.params'))           # nothing trained


def test_dry_run_errors_are_one_line(capsys):
    assert main(['--model', 'resnet18_v1b', '--print-param-groups', '--lrs', '0.1,0.01,0.001']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --lrs needs --num-low-lr-layers') and err.count('\n') == 1
