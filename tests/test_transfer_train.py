"""train_transfer.py end to end on a tiny generated RecordIO set (packed with
gluon_transfer.data.pack), a small GluonCV ResNet at 32 px: every regularizer, the frozen
source, exact resume with the L2-SP anchor, ten-crop evaluation, one-line errors."""
import json
import os

import cv2
import numpy as np
import pytest
import mxnet as mx

from gluon_transfer import cli
from gluon_transfer.data.pack import pack
from gluon_transfer.finetune import FineTune, main
from gluon_transfer.zoo import get_model

CLASSES = ('ant', 'bee', 'cow')


@pytest.fixture(scope='module')
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('transfer')
    rng = np.random.RandomState(0)
    for split, n in (('train', 6), ('val', 3)):
        for ci, c in enumerate(CLASSES):
            d = root / 'img' / split / c
            d.mkdir(parents=True)
            for k in range(n):
                img = rng.randint(0, 256, (40, 48, 3)).astype(np.uint8)
                img[..., ci] = 255          # a learnable colour cue per class
                cv2.imwrite(str(d / ('%d.png' % k)), img)
        pack(str(root / 'img' / split), str(root / 'data' / split), workers=1, classes=list(CLASSES))
    mx.random.seed(0)
    src = get_model('resnet18_v1b', classes=7)
    src.initialize(mx.init.Xavier())
    src(mx.nd.zeros((1, 3, 32, 32)))
    src.save_parameters(str(root / 'source.params'))
    wrong = get_model('resnet50_v1b', classes=7)
    wrong.initialize()
    wrong(mx.nd.zeros((1, 3, 32, 32)))
    wrong.save_parameters(str(root / 'resnet50.params'))
    return root


def _argv(d, save, *extra):
    return ['--model', 'resnet18_v1b', '--source-params', str(d / 'source.params'), '--data-dir', str(d / 'data'),
            '--input-size', '32', '--batch-size', '4', '--save-dir', str(save), '--log-interval', '1',
            '-j', '1'] + list(extra)


def _run(argv):
    """cli.run with train_transfer's hooks, returning the engine."""
    ft = FineTune()
    args = cli.parse_args(cli.build_parser('transfer', 'test'), argv)
    assert ft.prepare(args) is None
    return cli.run(args, 'transfer', ft.make_task, build_net=ft.build_net, build_val=ft.build_val), ft


@pytest.mark.slow
@pytest.mark.parametrize('reg', ['l2', 'l2sp', 'delta', 'fea_map'])
def test_two_iterations_each_regularizer(task_dir, tmp_path, reg):
    extra = ['--reg', reg, '--max-iter', '2'] + (['--channel-weights', 'uniform'] if reg == 'delta' else [])
    assert main(_argv(task_dir, tmp_path, *extra)) == 0
    lines = [json.loads(ln) for ln in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert len(lines) == 1 and lines[0]['global_step'] == 2
    for k in ('val_top1', 'val_top5', 'val_mean_class_acc'):
        assert 0.0 <= lines[0][k] <= 1.0
    terms = set(lines[0]['terms'])
    assert {'l2': {'ce'}, 'l2sp': {'ce', 'l2sp_w0', 'l2sp_new'}, 'delta': {'ce', 'delta', 'delta_new'},
            'fea_map': {'ce', 'fea_map', 'fea_map_new'}}[reg] == terms
    assert lines[0]['lr'] == pytest.approx(0.001)       # one x0.1 step at 2/3 of 2 iterations (iteration 1)
    meta = json.loads((tmp_path / 'transfer-resnet18_v1b-0001.json').read_text())
    assert meta['config']['wd'] == (1e-4 if reg == 'l2' else 0.0)


@pytest.mark.slow
def test_source_is_frozen_and_never_updated(task_dir, tmp_path):
    engine, ft = _run(_argv(task_dir, tmp_path, '--reg', 'delta', '--channel-weights', 'uniform', '--max-iter', '3',
                            '--lr', '0.5'))
    source = engine.task.source
    assert source is not None and engine.task._source is not None
    file_arrays = mx.nd.load(str(task_dir / 'source.params'))
    trained = {id(p) for p in engine.trainer._params}
    for key, p in source._collect_params_with_prefix().items():
        assert id(p) not in trained and p.grad_req == 'null'
        np.testing.assert_array_equal(p.data().asnumpy(), file_arrays[key].asnumpy(), err_msg=key)
    moved = engine.net._collect_params_with_prefix()['layer1.0.conv1.weight'].data().asnumpy()
    assert np.abs(moved - file_arrays['layer1.0.conv1.weight'].asnumpy()).max() > 0


@pytest.mark.slow
def test_resume_is_exact_and_w0_stays_the_source(task_dir, tmp_path):
    common = ['--reg', 'l2sp', '--l2sp-variant', 'all', '--num-epochs', '2', '--lr-decay-epoch', '1.5',
              '--lr', '0.05', '--mode', 'hybrid', '--batch-size', '6']
    full, _ = _run(_argv(task_dir, tmp_path / 'full', *common))
    part, _ = _run(_argv(task_dir, tmp_path / 'part', *common, '--max-iter', '3'))
    assert part.global_step == 3
    resumed, _ = _run(_argv(task_dir, tmp_path / 'resumed', *common, '--resume', str(tmp_path / 'part')))
    assert resumed.start_epoch == 1 and resumed.global_step == 6
    a, b = full.net._collect_params_with_prefix(), resumed.net._collect_params_with_prefix()
    for k in a:
        np.testing.assert_allclose(a[k].data().asnumpy(), b[k].data().asnumpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    file_arrays = mx.nd.load(str(task_dir / 'source.params'))
    snap = resumed.task.regs[0].snapshot()
    assert 'layer1.0.bn1.gamma' in snap
    for key, w0 in snap.items():
        np.testing.assert_array_equal(w0.asnumpy(), file_arrays[key].asnumpy(), err_msg=key)
    assert full.lr_trace == part.lr_trace + resumed.lr_trace


@pytest.mark.slow
def test_ten_crop_evaluation(task_dir, tmp_path):
    engine, _ = _run(_argv(task_dir, tmp_path, '--reg', 'l2', '--max-iter', '1', '--eval-ten-crop'))
    assert engine.val_data.iter_kwargs['data_shape'] == (3, 37, 37)       # ceil(32 / 0.875), then 10 crops of 32
    assert engine.val_data.batch_size == 1
    assert 0.0 <= engine.history[0]['val_top1'] <= 1.0


def test_errors_are_one_line(task_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'mxnet_home'))
    cases = [
        (['--model', 'resnet18_v1b', '--source-pretrained', '--data-dir', str(task_dir / 'data'), '--save-dir',
          str(tmp_path), '--batch-size', '4', '--input-size', '32'], 'nothing is downloaded'),
        (_argv(task_dir, tmp_path, '--data-dir', str(tmp_path / 'nowhere')), 'data dir not found'),
        (_argv(task_dir, tmp_path, '--source-params', str(task_dir / 'resnet50.params')),
         "is not a resnet18_v1b: resnet50.params does not fit ResNetV1b: unexpected key 'layer1.0.conv3.weight'"),
        (_argv(task_dir, tmp_path, '--source-params', str(tmp_path / 'none.params')), 'params file not found'),
        (['--model', 'resnet18_v1b', '--data-dir', str(task_dir / 'data')], 'needs source weights'),
        (_argv(task_dir, tmp_path, '--reg', 'delta'), 'DELTA channel weights not found'),
        (_argv(task_dir, tmp_path, '--reg', 'l2spp'), "unknown regularizer 'l2spp'; did you mean: l2sp"),
        (_argv(task_dir, tmp_path, '--reg', 'fea_map', '--taps', 'layer1.1.conv9', '--max-iter', '1'),
         "unknown feature tap 'layer1.1.conv9'"),
    ]
    os.makedirs(tmp_path / 'empty', exist_ok=True)
    (tmp_path / 'empty' / 'val.rec').write_bytes(b'')
    cases.append((_argv(task_dir, tmp_path, '--data-dir', str(tmp_path / 'empty')), 'train.rec'))
    for argv, msg in cases:
        assert main(argv) == 2, msg
        err = capsys.readouterr().err
        assert err.startswith('error: ') and msg in err and err.count('\n') == 1, (msg, err)


@pytest.fixture(scope='module')
def cifar_source(task_dir):
    """A cifar_resnet20_v1 source (5 classes, the CIFAR transfer testbed's network)."""
    path = task_dir / 'cifar_resnet20_v1.params'
    if not path.exists():
        mx.random.seed(1)
        src = get_model('cifar_resnet20_v1', classes=5)
        src.initialize(mx.init.Xavier())
        src(mx.nd.zeros((1, 3, 32, 32)))
        src.save_parameters(str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize('reg', ['l2sp', 'delta', 'fea_map', 'afa-ast', 'afd'])
def test_two_iterations_on_a_cifar_resnet_source(task_dir, cifar_source, tmp_path, reg):
    """The feature regularizers (and AFD without AFS) tap GluonCV's CIFAR ResNet by default
    (the last 3x3 conv of each of its 3 stages) and train 2 iterations from a
    cifar_resnet20_v1 source."""
    argv = _argv(task_dir, tmp_path, '--reg', reg, '--max-iter', '2')
    argv[argv.index('--model') + 1] = 'cifar_resnet20_v1'
    argv[argv.index('--source-params') + 1] = str(cifar_source)
    if reg == 'delta':
        argv += ['--channel-weights', 'uniform']
    engine, _ = _run(argv)
    assert engine.global_step == 2
    line = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])
    assert {'l2sp': {'ce', 'l2sp_w0', 'l2sp_new'}, 'delta': {'ce', 'delta', 'delta_new'},
            'fea_map': {'ce', 'fea_map', 'fea_map_new'}, 'afa-ast': {'ce', 'afa-ast', 'afa-ast_new'},
            'afd': {'ce', 'afd'}}[reg] == \
        set(line['terms'])
    assert all(np.isfinite(v) for v in line['terms'].values()) and 0.0 <= line['val_top1'] <= 1.0
    if reg != 'l2sp':
        assert engine.task.taps == ['features.%d.2.body.3' % k for k in (2, 3, 4)]
        assert line['terms'][reg] > 0
