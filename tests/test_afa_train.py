"""AFA through train_transfer.py on the tiny generated transfer set of
tests/test_transfer_train.py: stage 1 (--reg afa-ast) then stage 2 (--reg afa-act
--init-from), the presets, the stage-2 source, attention modules checkpointed but never in
the student's params, --afa-two-stage, and one-line errors for wrong combinations."""
import json
import os

import numpy as np
import pytest
import mxnet as mx

from gluon_transfer import cli
from gluon_transfer.finetune import main, resolve_args
from gluon_transfer.methods.afa import AFAMethod
from gluon_transfer.losses.afa import AFASpatial, AFAChannel
from gluon_transfer.zoo import get_model

from test_transfer_train import task_dir, _run  # noqa: F401  (the shared module fixture)


def _argv(d, save, *extra, source=True):
    return (['--model', 'resnet18_v1b', '--data-dir', str(d / 'data'), '--input-size', '32', '--batch-size', '4',
             '--save-dir', str(save), '--log-interval', '0', '-j', '1', '--max-iter', '2']
            + (['--source-params', str(d / 'source.params')] if source else []) + list(extra))


def _parse(argv):
    return cli.parse_args(cli.build_parser('transfer', 'test'), argv)


def _ckpt(save, ext):
    found = sorted(f for f in os.listdir(save) if f.endswith(ext) and f != 'best.params'
                   and (ext == '.extra.params' or not f.endswith('.extra.params')))
    return os.path.join(str(save), found[-1])


def test_presets_apply_only_where_not_given(task_dir, tmp_path):
    stage1 = str(task_dir / 'source.params')     # any existing file: resolve_args only checks it exists
    args = resolve_args(_parse(_argv(task_dir, tmp_path, '--reg', 'afa-ast', '--max-iter', '100')), num_train=100)
    assert (args.lr, args.alpha) == (0.01, 0.1)
    assert args.preset_note == 'AFA AST preset (ResNet-101 reference values) for resnet18_v1b: lr 0.01, alpha 0.1'
    # one x0.1 step at round(0.67 * 100) = 67 of 100 iterations (25 per epoch of 100 / batch 4)
    assert args.lr_decay_epoch == (67 / 25.0,) and args.wd == 0.0
    args = resolve_args(_parse(_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', stage1, '--lr', '0.05',
                                     source=False)), num_train=100)
    assert (args.lr, args.alpha) == (0.05, 0.15) and args.preset_note.endswith('alpha 0.15')
    args = resolve_args(_parse(_argv(task_dir, tmp_path, '--reg', 'afa-ast', '--model', 'mobilenetv2_1.0')),
                        num_train=100)
    assert (args.lr, args.alpha) == (0.01, 0.09)
    args = resolve_args(_parse(_argv(task_dir, tmp_path, '--reg', 'afa-act', '--model', 'mobilenetv2_1.0',
                                     '--init-from', stage1, '--alpha', '0.5', '--lr', '0.1', source=False)),
                        num_train=100)
    assert (args.lr, args.alpha) == (0.1, 0.5) and 'not applied' in args.preset_note
    # Other regularizers keep 0.01 and the 2/3 step: round(2/3 * 100) = 67 as well, 2/3 * 30 = 20 vs 0.67 * 30 = 20.1
    args = resolve_args(_parse(_argv(task_dir, tmp_path, '--reg', 'l2', '--max-iter', '30')), num_train=100)
    assert args.lr == 0.01 and args.preset_note is None and args.lr_decay_epoch == (20 / 25.0,)


def _attention_init(cls, shapes):
    reg = cls(seed=0)
    reg.set_feature_shapes(shapes)
    net = get_model('resnet18_v1b', classes=3)
    net.initialize()
    reg.setup(net, [mx.cpu()])
    return {name + '.' + k: v.data().asnumpy() for name, b in reg.blocks().items()
            for k, v in b._collect_params_with_prefix().items()}


def _check_checkpoint(save, engine, prefix, cls):
    """Attention modules: trained, in the .extra.params checkpoint, absent from the
    student's params files and from its export."""
    student = mx.nd.load(_ckpt(save, '.params'))
    assert set(student) == set(engine.net._collect_params_with_prefix())
    assert not any('afa' in k for k in student)
    assert not any('afa' in k for k in mx.nd.load(os.path.join(str(save), 'best.params')))
    extra = mx.nd.load(_ckpt(save, '.extra.params'))
    assert extra and all(k.startswith(prefix + '.') for k in extra)
    init = _attention_init(cls, engine.task.regs[0].shapes)
    assert set(init) == set(extra)
    assert any(np.abs(extra[k].asnumpy() - init[k]).max() > 0 for k in init)       # they trained
    from gluon_transfer.export import export_symbol
    files = export_symbol(engine.net, os.path.join(str(save), 'export'), (1, 3, 32, 32))
    assert not any('afa' in k for k in mx.nd.load(files['params']))


@pytest.mark.slow
def test_stage1_then_stage2_through_train_transfer(task_dir, tmp_path):
    s1 = tmp_path / 's1'
    eng1, _ = _run(_argv(task_dir, s1, '--reg', 'afa-ast'))
    line = json.loads((s1 / 'metrics.jsonl').read_text().splitlines()[-1])
    assert set(line['terms']) == {'ce', 'afa-ast', 'afa-ast_new'}
    assert line['lr'] == pytest.approx(0.001)        # preset lr 0.01, x0.1 at round(0.67 * 2) = 1
    assert eng1.task.regs[0].alpha == 0.1 and eng1.task.taps == ['layer1.1.conv2', 'layer2.1.conv2',
                                                                  'layer3.1.conv2', 'layer4.1.conv2']
    assert 'AFA AST preset (ResNet-101 reference values) for resnet18_v1b: lr 0.01, alpha 0.1' in \
        (s1 / 'train.log').read_text()
    _check_checkpoint(s1, eng1, 'afa_ast', AFASpatial)
    stage1 = _ckpt(s1, '.params')
    file1 = mx.nd.load(stage1)

    s2 = tmp_path / 's2'
    eng2, _ = _run(_argv(task_dir, s2, '--reg', 'afa-act', '--init-from', stage1, source=False))
    line = json.loads((s2 / 'metrics.jsonl').read_text().splitlines()[-1])
    assert set(line['terms']) == {'ce', 'afa-act', 'afa-act_new'}
    assert line['lr'] == pytest.approx(0.0001)       # preset lr 0.001
    assert eng2.task.regs[0].alpha == 0.15
    assert 'alpha 0.15' in (s2 / 'train.log').read_text()
    # The frozen stage-2 source is the stage-1 network without its classifier, never trained.
    src = eng2.task.source._collect_params_with_prefix()
    assert set(src) == set(file1)
    trained = {id(p) for p in eng2.trainer._params}
    for k, p in src.items():
        assert id(p) not in trained and p.grad_req == 'null'
        if k.startswith('fc.'):
            assert not p.data().asnumpy().any(), k
        else:
            np.testing.assert_array_equal(p.data().asnumpy(), file1[k].asnumpy(), err_msg=k)
    _check_checkpoint(s2, eng2, 'afa_act', AFAChannel)


def test_init_from_loads_the_whole_stage1_network(task_dir, tmp_path):
    """Target = every stage-1 parameter (classifier included); source = the same minus the
    classifier (zero, unused)."""
    mx.random.seed(5)
    stage1 = get_model('resnet18_v1b', classes=3)
    stage1.initialize(mx.init.Xavier())
    stage1(mx.nd.zeros((1, 3, 32, 32)))
    path = str(tmp_path / 'stage1.params')
    stage1.save_parameters(path)
    args = resolve_args(_parse(_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', path, source=False)),
                        num_train=18)
    import logging
    net, source = AFAMethod.load_stage1(args, 3, [mx.cpu()], mx.init.Xavier(), {}, logging.getLogger('test'))
    want = mx.nd.load(path)
    got, src = net._collect_params_with_prefix(), source._collect_params_with_prefix()
    for k, v in want.items():
        np.testing.assert_array_equal(got[k].data().asnumpy(), v.asnumpy(), err_msg=k)
        if k.startswith('fc.'):
            assert not src[k].data().asnumpy().any()
        else:
            np.testing.assert_array_equal(src[k].data().asnumpy(), v.asnumpy(), err_msg=k)


def test_wrong_combinations_are_one_line_errors(task_dir, tmp_path, capsys):
    seven = str(task_dir / 'source.params')        # a 7-class resnet18_v1b
    r50 = str(task_dir / 'resnet50.params')
    cases = [
        (_argv(task_dir, tmp_path, '--reg', 'afa-act'), '--reg afa-act is AFA stage 2: pass --init-from STAGE1.params'),
        (_argv(task_dir, tmp_path, '--reg', 'afa-ast', '--init-from', seven), '--init-from is for AFA stage 2'),
        (_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', seven), 'drop --source-params'),
        (_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', str(tmp_path / 'no.params'), source=False),
         '--init-from file not found'),
        (_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', r50, source=False),
         "--init-from %s is not a 3-class resnet18_v1b: resnet50.params does not fit" % r50),
        (_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', seven, source=False),
         "--init-from %s is not a 3-class resnet18_v1b: " % seven),
        (_argv(task_dir, tmp_path, '--reg', 'afa-act', '--init-from', seven, '--new-layers', '2', source=False),
         '--new-layers 2 would re-initialise'),
        (_argv(task_dir, tmp_path, '--afa-two-stage', '--init-from', seven), '--afa-two-stage trains stage 1 itself'),
        (_argv(task_dir, tmp_path, '--reg', 'afa-ast', '--taps', 'layer1.1.conv9'), "unknown feature tap 'layer1.1.conv9'"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, msg
        err = capsys.readouterr().err
        assert err.startswith('error: ') and msg in err and err.count('\n') == 1, (msg, err)


@pytest.mark.slow
def test_two_stage_flag_selects_on_a_training_holdout(task_dir, tmp_path):
    assert main(_argv(task_dir, tmp_path, '--afa-two-stage', '--afa-holdout', '0.34', '--reg', 'afa-ast')) == 0
    from gluon_transfer.data.recordio import inspect_recordio
    held = [f for f in os.listdir(tmp_path / 'holdout') if f.endswith('_holdout.rec')]
    info = inspect_recordio(str(tmp_path / 'holdout' / held[0]))
    # 0.34 of 6 images per class -> 2 per class held out; the model selection never sees val
    assert np.bincount(info.labels.astype(int)).tolist() == [2, 2, 2]
    for stage, reg in (('stage1_ast', 'afa-ast'), ('stage2_act', 'afa-act')):
        lines = [json.loads(x) for x in (tmp_path / stage / 'metrics.jsonl').read_text().splitlines()]
        assert set(lines[-1]['terms']) == {'ce', reg, reg + '_new'}
    log2 = (tmp_path / 'stage2_act' / 'train.log').read_text()
    best1 = os.path.join(str(tmp_path / 'stage1_ast'), 'best.params')
    assert ('stage 2: target initialised from %s' % best1) in log2
    assert ', 6 validation images' in log2       # the holdout, not val (9 images)
    assert 'AFA two stages: best stage 1' in log2 and 'val top-1' in log2
    summary = json.loads((tmp_path / 'afa_two_stage.json').read_text())
    assert summary['stage1_best'] == best1 and summary['val']['n'] == 9
