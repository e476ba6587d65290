"""Layer groups of non-binary transfer on Inception / MobileNet / ResNet: the top-level
modules of the body, never the branches inside a block. Counts derived by hand from the
architectures (backbone groups + 1 classifier)."""
import os
import runpy

import pytest

from gluon_transfer.param_groups import layer_groups, plan, format_rows
from gluon_transfer.zoo import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# inceptionv3 (GluonCV): features = 3 stem basic convs (0-2), max-pool (3, no parameters),
#   2 basic convs (4, 5), max-pool (6), 3 Inception-A (7-9), 1 B (10), 4 C (11-14), 1 D (15),
#   2 E (16, 17), avg-pool, dropout -> 5 + 11 = 16 groups, + output = 17.
V3 = ['features.%d' % i for i in (0, 1, 2, 4, 5) + tuple(range(7, 18))] + ['output']
# inception_v4: features = 3 stem convs, Mixed3a/4a/5a, 4 A, Reduction-A, 7 B, Reduction-B,
#   3 C = 22 (the reference's index 0-21), + output = 23.
V4 = ['features.%d' % i for i in range(22)] + ['output']
# resnet50_v1b: conv1 (+ bn1), 3 + 4 + 6 + 3 = 16 bottlenecks, fc -> 18.
R50 = (['conv1'] + ['layer%d.%d' % (s, i) for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for i in range(n)]
       + ['fc'])
# mobilenetv2_1.0 (GluonCV): features.0 conv (+ BN features.1; features.2 is ReLU6), 17
#   inverted residuals features.3-19 (t, n = 1x1, 6x2, 6x3, 6x4, 6x3, 6x3, 6x1), the 1x1 conv
#   to 1280 features.20 (+ BN features.21), output -> 1 + 17 + 1 + 1 = 20.
MNV2 = ['features.0'] + ['features.%d' % i for i in range(3, 20)] + ['features.20', 'output']


@pytest.mark.parametrize('model,names', [('inceptionv3', V3), ('inception_v4', V4), ('resnet50_v1b', R50),
                                         ('mobilenetv2_1.0', MNV2)])
def test_group_names_and_counts(model, names):
    net = get_model(model, classes=10)
    groups = layer_groups(net)
    assert [g for g, _ in groups] == names
    assert len(groups) == {'inceptionv3': 17, 'inception_v4': 23, 'resnet50_v1b': 18, 'mobilenetv2_1.0': 20}[model]
    keys = [k for _, ks in groups for k in ks]
    assert sorted(keys) == sorted(net._collect_params_with_prefix())        # every parameter exactly once


def test_blocks_keep_their_branches():
    v3 = dict(layer_groups(get_model('inceptionv3')))
    # Mixed_7b's double-3x3 branch (1x3 / 3x1 split, four levels deep) belongs to its block
    assert 'features.16.2.1.1.0.0.weight' in v3['features.16']
    assert v3['features.0'] == ['features.0.0.weight', 'features.0.1.gamma', 'features.0.1.beta',
                                'features.0.1.running_mean', 'features.0.1.running_var']
    v4 = dict(layer_groups(get_model('inception_v4')))
    assert len(v4['features.21']) == 10 * 5          # Inception-C: 10 basic convs of weight + 4 BN arrays
    mnv2 = dict(layer_groups(get_model('mobilenetv2_1.0')))
    assert mnv2['features.20'][1:] == ['features.21.gamma', 'features.21.beta', 'features.21.running_mean',
                                       'features.21.running_var']


def test_listing_shows_inception_v4_groups():
    net = get_model('inception_v4', classes=10)
    text = format_rows(plan(net, lrs=(0.03, 0.03, 0.003), num_low=8, new_layers=2))
    assert '23 layer groups (classifier last):' in text
    assert '[ 7] features.7     lower ' in text and '[ 8] features.8     upper ' in text
    assert '[21] features.21    upper  new' in text          # --new-layers 2 re-initialises the last block


def test_print_param_groups_script(capsys):
    script = runpy.run_path(os.path.join(ROOT, 'train_transfer.py'), run_name='convert_test')
    assert script['main'](['--model', 'mobilenetv2_1.0', '--print-param-groups', '--input-size', '64']) == 0
    out = capsys.readouterr().out
    assert '20 layer groups (classifier last):' in out and '[18] features.20' in out and '[19] output' in out
