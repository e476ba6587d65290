"""Networks shipped in params/ (manifest list ``networks``): tools/publish_params.py writes the
file and its entry, get_model(NAME, pretrained=True) loads it after a SHA-1 check, a changed
file is refused, a name is never published twice; every shipped file matches its SHA-1 and,
where the CIFAR-10 data is present, reproduces its recorded val top-1."""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import mxnet as mx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import publish_params  # noqa: E402
from gluon_transfer import get_model, weights  # noqa: E402
from gluon_transfer.errors import CheckpointError, ConfigError  # noqa: E402

CIFAR = os.path.join(ROOT, '..', 'shared', 'data', 'cifar10')


def fake_run(tmp_path):
    """A run folder as the trainers leave it: checkpoint pointer, record, params, metrics, best."""
    run = tmp_path / 'run'
    run.mkdir()
    mx.random.seed(3)
    net = get_model('cifar_resnet20_v1', classes=5)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    ref = net(x).asnumpy()
    net.save_parameters(str(run / 'best.params'))
    net.save_parameters(str(run / 'c-0002.params'))
    (run / 'c-0002.json').write_text(json.dumps({'epoch': 2, 'model': 'cifar_resnet20_v1', 'model_kwargs': {},
                                                 'dataset': 'cifar10', 'files': {'params': 'c-0002.params'}}))
    (run / 'checkpoint.json').write_text(json.dumps({'latest': 'c-0002.json'}))
    (run / 'metrics.jsonl').write_text('{"epoch": 1, "val_top1": 0.61}\n{"epoch": 2, "val_top1": 0.58}\n'
                                       '{"epoch": 3, "train_loss": 1.0}\n')
    return run, x, ref


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    pdir = tmp_path / 'params'
    pdir.mkdir()
    path = pdir / 'manifest.json'
    path.write_text(json.dumps({'files': [], 'networks': []}))
    monkeypatch.setattr(weights, 'MANIFEST_PATH', str(path))
    return path


def test_publish_then_load_checked(tmp_path, manifest):
    run, x, ref = fake_run(tmp_path)
    entry = publish_params.publish(str(run), 'tiny5_r20', [5, 6, 7, 8, 9], 'python train_cifar.py ...',
                                   val_set='classes 5-9 of val.rec')
    dst = manifest.parent / 'tiny5_r20.params'
    assert entry['sha1'] == hashlib.sha1(dst.read_bytes()).hexdigest()
    assert entry['val_top1'] == 0.61 and entry['val_epoch'] == 1          # the best evaluated epoch
    assert entry['kwargs'] == {'classes': 5} and entry['classes'] == [5, 6, 7, 8, 9]
    assert json.loads(manifest.read_text())['networks'][0]['name'] == 'tiny5_r20'
    net = get_model('tiny5_r20', pretrained=True)
    np.testing.assert_allclose(net(x).asnumpy(), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match='classes'):
        get_model('tiny5_r20', pretrained=True, classes=10)
    with pytest.raises(ConfigError, match='already published'):
        publish_params.publish(str(run), 'tiny5_r20', [0], 'x')


def test_changed_file_is_refused(tmp_path, manifest):
    run, _, _ = fake_run(tmp_path)
    publish_params.publish(str(run), 'tiny5_r20', [0, 1, 2, 3, 4], 'x')
    dst = manifest.parent / 'tiny5_r20.params'
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='SHA-1'):
        get_model('tiny5_r20', pretrained=True)
    dst.unlink()
    with pytest.raises(CheckpointError, match='missing'):
        get_model('tiny5_r20', pretrained=True)


def test_script_errors_are_one_line(tmp_path, manifest, capsys):
    assert publish_params.main([str(tmp_path / 'nope'), 'n', '--classes', '0', '--command', 'x',
                                '--manifest', str(manifest)]) == 2
    assert capsys.readouterr().err.startswith('error: ')
    assert publish_params.main([str(tmp_path), 'n', '--classes', 'a,b', '--command', 'x']) == 2


SHIPPED = weights.project_networks()


@pytest.mark.parametrize('entry', SHIPPED, ids=[e['name'] for e in SHIPPED])
def test_shipped_network_matches_its_record(entry, tmp_path):
    e, path = weights.resolve_project_network(entry['name'])      # SHA-1 checked
    assert os.path.getsize(path) == e['size_bytes']
    if not os.path.isfile(os.path.join(CIFAR, 'val.rec')) or e['dataset'] != 'cifar10':
        pytest.skip('the CIFAR-10 RecordIO data is not here: val top-1 not re-measured')
    import cifar_transfer_task
    import evaluate
    cifar_transfer_task.subset_split(os.path.join(CIFAR, 'val'), str(tmp_path / 'val'), e['classes'])
    shutil.copyfile(os.path.join(CIFAR, 'classes.txt'), str(tmp_path / 'classes.txt'))
    out = tmp_path / 'eval.json'
    # the shipped name builds the architecture (model options such as AFF's --blocks from the manifest)
    assert evaluate.main(['--model', e['name'], '--params', path, '--rec-val', str(tmp_path / 'val.rec'),
                          '--json', str(out), '-j', '1']) == 0
    assert abs(json.loads(out.read_text())['top1'] - e['val_top1']) < 1e-4


def test_shipped_name_builds_the_architecture(tmp_path, manifest):
    """Without pretrained, a shipped network's name builds its model with the manifest's options
    (what tools/evaluate.py --model NAME relies on); a conflicting option is refused."""
    run, x, ref = fake_run(tmp_path)
    publish_params.main([str(run), 'tiny5', '--classes', '0,1,2,3,4', '--command', 'python train_cifar.py ...'])
    net = get_model('tiny5')                        # cifar_resnet20_v1 with classes=5, no weights
    net.initialize()
    assert net(x).shape == (2, 5)
    net = get_model('tiny5', params=str(run / 'best.params'))
    np.testing.assert_allclose(net(x).asnumpy(), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="'tiny5' has classes=5; got classes=10"):
        get_model('tiny5', classes=10)
