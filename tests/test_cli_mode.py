"""--mode auto: every script defaults to it, and it resolves per model to the mode that
trained faster on CPU (docs/benchmarks.md, "Training mode"); explicit modes are kept."""
import mxnet as mx
import pytest

from gluon_transfer import cli
from gluon_transfer.errors import ConfigError


@pytest.mark.parametrize('preset', ['cifar', 'imagenet', 'transfer'])
def test_default_is_auto_and_explicit_modes_parse(preset):
    p = cli.build_parser(preset, 'x')
    assert cli.parse_args(p, []).mode == 'auto'
    for mode in ('hybrid', 'imperative'):
        assert cli.parse_args(cli.build_parser(preset, 'x'), ['--mode', mode]).mode == mode


@pytest.mark.parametrize('model, want', [
    ('cifar_resnet20_v1', 'imperative'), ('cifar_resnet56_v1', 'imperative'),
    ('cifar_resnet110_v2', 'imperative'), ('wrn16_1', 'hybrid'), ('wrn40_2', 'hybrid'),
    ('cifar_aff_resnet', 'hybrid'), ('cifar_aff_resnet32', 'hybrid'),
    ('cifar_iaff_resnet32', 'hybrid'), ('cifar_aff_resnext47_32x4d', 'hybrid'), ('aff_resnet50', 'hybrid'),
    ('iaff_resnext50_32x4d', 'hybrid'), ('resnet50_v1b', 'hybrid'),
    ('resnet101_v1b', 'hybrid'), ('mobilenet1.0', 'hybrid'),
])
def test_auto_resolves_by_model_on_cpu(model, want):
    assert cli.resolve_mode('auto', model, [mx.cpu()]) == want
    assert cli.resolve_mode('auto', model) == want


def test_auto_hybridizes_on_gpu_and_explicit_modes_win():
    assert cli.resolve_mode('auto', 'cifar_resnet20_v1', [mx.gpu(0)]) == 'hybrid'
    assert cli.resolve_mode('hybrid', 'cifar_resnet20_v1', [mx.cpu()]) == 'hybrid'
    assert cli.resolve_mode('imperative', 'aff_resnet50', [mx.cpu()]) == 'imperative'


def test_bad_mode_is_one_line_error():
    with pytest.raises(ConfigError, match="--mode must be auto, hybrid or imperative; got 'static'"):
        cli.resolve_mode('static', 'cifar_resnet20_v1')
    with pytest.raises(SystemExit):  # argparse refuses it before any work
        cli.parse_args(cli.build_parser('cifar', 'x'), ['--mode', 'static'])


def test_mode_help_names_auto_rule():
    text = cli.build_parser('cifar', 'x').format_help()
    assert '{auto,hybrid,imperative}' in text and 'Training mode' in text
