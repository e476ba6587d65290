import pytest

import gluon_transfer
from gluon_transfer.errors import ConfigError
from gluon_transfer.registry import Registry


def test_register_and_build():
    reg = Registry('thing')

    @reg.register()
    def alpha(x=1):
        return ('alpha', x)

    reg.register('beta', obj=lambda: 'b')
    assert reg.build('alpha', x=3) == ('alpha', 3)
    assert reg.get('beta')() == 'b'
    assert reg.names() == ['alpha', 'beta']
    with pytest.raises(ValueError):
        reg.register('alpha', obj=lambda: None)


def test_unknown_name_lists_close_matches():
    reg = Registry('fusion')
    for n in ['aff', 'iaff', 'add']:
        reg.register(n, obj=object())
    with pytest.raises(ConfigError) as e:
        reg.get('iaf')
    msg = str(e.value)
    assert "unknown fusion 'iaf'" in msg and 'iaff' in msg and '\n' not in msg


def test_get_model_unknown_name_suggests_gluoncv_names():
    with pytest.raises(ConfigError) as e:
        gluon_transfer.get_model('cifar_resnet20_v9')
    assert 'cifar_resnet20_v1' in str(e.value)


def test_get_model_falls_through_to_gluoncv():
    net = gluon_transfer.get_model('cifar_resnet20_v1', classes=10)
    assert type(net).__name__ == 'CIFARResNetV1'
    assert 'cifar_resnet20_v1' in gluon_transfer.list_models()


def test_pretrained_gluoncv_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv('MXNET_HOME', str(tmp_path))
    with pytest.raises(ConfigError) as e:
        gluon_transfer.get_model('cifar_resnet20_v1', pretrained=True)
    assert 'nothing is downloaded' in str(e.value)
    assert not list(tmp_path.rglob('*.lock'))
