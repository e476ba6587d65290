"""AFDS through train_transfer.py (--reg afd, --afs) on a tiny generated RecordIO set with a
tiny GluonCV ResNet-v1b made of one bottleneck per stage: the two phases and the mask
update in one command, the holdout (a split of the TRAINING records only), the report
files, resume across the phases, and one-line errors."""
import json
import os

import cv2
import numpy as np
import pytest
import mxnet as mx
from gluoncv.model_zoo.resnetv1b import ResNetV1b, BottleneckV1b

from gluon_transfer import cli
from gluon_transfer.afds import schedule as afds
from gluon_transfer.data.pack import pack
from gluon_transfer.data.recordio import inspect_recordio
from gluon_transfer.finetune import FineTune, main, resolve_args
from gluon_transfer.models.afs_resnet import afs_gates
from gluon_transfer.registry import MODELS

TINY = 'afds_test_bottleneck_v1b'
CLASSES = ('ant', 'bee', 'cow')
TRAIN_PER_CLASS = 10


def _tiny(**kwargs):
    """GluonCV ResNetV1b with one BottleneckV1b per stage (a plain network, like resnet50_v1b)."""
    return ResNetV1b(BottleneckV1b, [1, 1, 1, 1], **kwargs)


if TINY not in MODELS:
    MODELS.register(TINY, obj=_tiny)


@pytest.fixture(scope='module')
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('afds')
    rng = np.random.RandomState(0)
    for split, n in (('train', TRAIN_PER_CLASS), ('val', 3)):
        for ci, c in enumerate(CLASSES):
            d = root / 'img' / split / c
            d.mkdir(parents=True)
            for k in range(n):
                img = rng.randint(0, 256, (40, 48, 3)).astype(np.uint8)
                img[..., ci] = 255
                cv2.imwrite(str(d / ('%d.png' % k)), img)
        pack(str(root / 'img' / split), str(root / 'data' / split), workers=1, classes=list(CLASSES))
    mx.random.seed(0)
    src = _tiny(classes=7)
    src.initialize(mx.init.Xavier())
    # a few training-mode passes so the BN running statistics are those of real inputs
    x = mx.nd.array(rng.uniform(-2, 2, (8, 3, 32, 32)))
    with mx.autograd.train_mode():
        for _ in range(20):
            src(x)
    src.save_parameters(str(root / 'source.params'))
    return root


def _argv(d, save, *extra, model=TINY):
    return ['--model', model, '--source-params', str(d / 'source.params'), '--data-dir', str(d / 'data'),
            '--input-size', '32', '--batch-size', '4', '--save-dir', str(save), '--log-interval', '0',
            '-j', '1', '--lr', '0.001'] + list(extra)


def _run(argv):
    ft = FineTune()
    args = cli.parse_args(cli.build_parser('transfer', 'test'), argv)
    assert ft.prepare(args) is None
    return cli.run(args, 'transfer', ft.make_task, build_net=ft.build_net, build_val=ft.build_val, fit=ft.fit), ft


def _metas(save):
    out = {}
    for f in os.listdir(str(save)):
        if f.endswith('.json') and f.startswith('transfer-'):
            meta = json.loads((save / f).read_text())
            out[meta['epoch']] = meta
    return out


def test_flags_parse_and_validate(task_dir, tmp_path):
    parse = (lambda *extra: cli.parse_args(cli.build_parser('transfer', 'test'), _argv(task_dir, tmp_path, *extra)))
    args = resolve_args(parse('--reg', 'afd', '--lambda-afd', '0.05', '--afd-norm', 'sq'), num_train=30)
    reg = FineTune().make_regularizer(args, 4)
    assert (reg.lam, reg.norm, reg.mode) == (0.05, 'l2sq', 'entropy')     # --lambda-afd is --alpha
    assert args.afs_density is None and args.holdout_fraction is None     # no --afs: AFDS options stay unset
    args = resolve_args(parse('--reg', 'afd', '--afs', '--afd-norm', 'l2', '--afd-predictor', 'joint'), num_train=30)
    assert (args.afs_density, args.afs_phase1_density, args.afs_gate_lr_mult, args.mask_scope,
            args.holdout_fraction, args.afs_gate_norm, args.afs_channel_multiple,
            args.mask_stat, args.afs_static_only) == (0.9, 1.0, 0.1, 'layer', 0.1, 'l2', 16, 'gate', False)
    reg = FineTune().make_regularizer(args, 4)
    assert (reg.lam, reg.norm, reg.mode) == (0.01, 'l2', 'joint')


@pytest.mark.slow
def test_afds_end_to_end_masks_from_the_training_holdout(task_dir, tmp_path, monkeypatch):
    seen = []
    real = afds.collect_gate_statistics

    def spy(net, holdout, **kw):
        seen.append(holdout)
        return real(net, holdout, **kw)

    monkeypatch.setattr(afds, 'collect_gate_statistics', spy)
    save = tmp_path / 'run'
    engine, ft = _run(_argv(task_dir, save, '--reg', 'afd', '--afs', '--macs-budget', '0.5', '--max-iter', '24',
                            '--save-frequency', '1', '--holdout-fraction', '0.2'))
    # 0.2 of 10 per class = 2 per class held out: 24 training records, 6 batches of 4 -> 4 epochs, phase 1 = 2
    assert engine.history[-1]['epoch'] == 4 and engine.global_step == 24
    # --- the statistics saw exactly the holdout, which is part of the training set, disjoint from what was trained on
    assert len(seen) == 1 and isinstance(seen[0], afds.TrainHoldout)
    holdout = seen[0]
    original = inspect_recordio(str(task_dir / 'data' / 'train.rec'))
    held = inspect_recordio(holdout.iterator.info.rec)
    trained = inspect_recordio(engine.train_data.info.rec)
    assert holdout.source == os.path.abspath(str(task_dir / 'data' / 'train.rec'))
    assert np.bincount(held.labels.astype(int)).tolist() == [2, 2, 2]
    assert set(held.keys.tolist()).isdisjoint(trained.keys.tolist())
    assert sorted(held.keys.tolist() + trained.keys.tolist()) == sorted(original.keys.tolist())
    val = inspect_recordio(str(task_dir / 'data' / 'val.rec'))
    assert engine.val_data.num_samples == val.num_records == 9
    rec = mx.recordio.MXIndexedRecordIO(held.idx, held.rec, 'r')
    vrec = mx.recordio.MXIndexedRecordIO(val.idx, val.rec, 'r')
    held_payloads = {rec.read_idx(int(k)) for k in held.keys}
    assert not held_payloads & {vrec.read_idx(int(k)) for k in val.keys}         # never a val image
    # --- gates: lr x0.1 on top of the layer group's multiplier; masks are parameters of the net
    p = engine.net.layer1[0].gate1
    assert p.fc.weight.lr_mult == pytest.approx(0.1 * engine.net.layer1[0].conv1.weight.lr_mult)
    assert p.gamma.lr_mult == pytest.approx(0.1 * engine.net.layer1[0].conv1.weight.lr_mult)
    # --- report files, checked against the network and each other
    rep = json.loads((save / 'afds_report.json').read_text())
    masks = json.loads((save / 'afds_masks.json').read_text())
    gates = {name: g for name, _, _, g, _, _ in afs_gates(engine.net)}
    m_all = np.concatenate([masks['masks'][n]['m'] for n in gates])
    s_all = np.concatenate([masks['masks'][n]['s'] for n in gates])
    for name, g in gates.items():
        np.testing.assert_array_equal(g.mask_m.data().asnumpy(), masks['masks'][name]['m'])
        np.testing.assert_array_equal(g.mask_s.data().asnumpy(), masks['masks'][name]['s'])
    assert rep['channels'] == len(m_all) == sum(g.channels for g in gates.values())
    assert rep['alive'] == int(m_all.sum()) and rep['dynamic'] == int((m_all * s_all).sum())
    assert rep['static_channels'] == int((m_all * (1 - s_all)).sum())
    from gluon_transfer.macs import count_macs
    plain = _tiny(classes=3)
    plain.initialize()
    assert rep['baseline'] == count_macs(plain, (1, 3, 32, 32))['total']
    assert rep['expected'] <= 0.5 * rep['baseline'] and rep['static'] < rep['baseline']
    assert masks['selection']['macs_budget'] == 0.5 and masks['selection']['holdout']['num_samples'] == 6
    assert (masks['selection']['channel_multiple'], masks['selection']['mask_stat']) == (16, 'gate')
    for name, g in gates.items():       # conv1/conv2 widths: a multiple of 16 or the full width
        if not name.endswith('gate3'):
            kept = int(np.sum(masks['masks'][name]['m']))
            assert kept % 16 == 0 or kept == g.channels, (name, kept)
    last = json.loads((save / 'metrics.jsonl').read_text().splitlines()[-1])
    assert rep['top1'] == pytest.approx(last['val_top1'])
    assert rep['mean_class_acc'] == pytest.approx(last['val_mean_class_acc'])
    assert set(last['terms']) == {'ce', 'afd'}
    log = (save / 'train.log').read_text()
    assert 'AFDS report' in log and 'static pruning (m)' in log and 'expected, WTA d + static s folded' in log
    # --- checkpoints record the phase; epochs after the update carry the masks
    metas = _metas(save)
    assert [metas[e]['afds']['phase'] for e in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert metas[4]['afds']['selection']['macs_budget'] == 0.5
    stored = mx.nd.load(str(save / metas[2]['files']['params']))
    assert stored['layer1.0.gate1.mask_m'].asnumpy().min() == 1          # phase 1: every channel on
    stored = mx.nd.load(str(save / metas[4]['files']['params']))
    np.testing.assert_array_equal(stored['layer1.0.gate1.mask_m'].asnumpy(), masks['masks']['layer1.0.gate1']['m'])
    assert float(stored['layer1.0.gate1.wta_density'].asnumpy()[0]) == pytest.approx(0.9)
    stored = mx.nd.load(str(save / metas[1]['files']['params']))
    assert float(stored['layer1.0.gate1.wta_density'].asnumpy()[0]) == pytest.approx(1.0)   # phase-1 density
    assert {g.input_norm for g in gates.values()} == {'l2'} and rep['gate_input_norm'] == 'l2'   # the default


@pytest.mark.slow
def test_resume_across_phases_is_exact(task_dir, tmp_path):
    common = ['--reg', 'afd', '--afs', '--macs-budget', '0.5', '--num-epochs', '4', '--lr-decay-epoch', '3',
              '--save-frequency', '1']
    full, _ = _run(_argv(task_dir, tmp_path / 'full', *common))
    part, _ = _run(_argv(task_dir, tmp_path / 'part', *common, '--max-iter', '21'))      # stops after epoch 3
    assert part.global_step == 21 and _metas(tmp_path / 'part')[3]['afds']['phase'] == 2
    # after the mask update: the masks come from the checkpoint
    r2, _ = _run(_argv(task_dir, tmp_path / 'r2', *common, '--resume', str(tmp_path / 'part')))
    log = (tmp_path / 'r2' / 'train.log').read_text()
    assert 'masks come from the checkpoint' in log and 'AFS masks from' not in log
    # at the end of phase 1: the update runs again from the same weights
    e2 = tmp_path / 'part' / _metas(tmp_path / 'part')[2]['files']['params']
    r1, _ = _run(_argv(task_dir, tmp_path / 'r1', *common, '--resume', str(e2)[:-len('.params')] + '.json'))
    assert 'AFS masks from' in (tmp_path / 'r1' / 'train.log').read_text()
    a = full.net._collect_params_with_prefix()
    for resumed in (r1, r2):
        assert resumed.global_step == full.global_step == 28
        b = resumed.net._collect_params_with_prefix()
        for k in a:
            np.testing.assert_allclose(a[k].data().asnumpy(), b[k].data().asnumpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=k)
    for name in ('afds_masks.json', 'afds_report.json'):
        assert json.loads((tmp_path / 'full' / name).read_text()) == json.loads((tmp_path / 'r2' / name).read_text())
    # a different phase split cannot continue these checkpoints
    assert main(_argv(task_dir, tmp_path / 'r3', *common, '--afs-phase1-epochs', '1', '--resume',
                      str(tmp_path / 'part'))) == 2


@pytest.mark.slow
def test_raw_gate_input_through_the_script(task_dir, tmp_path):
    engine, _ = _run(_argv(task_dir, tmp_path, '--reg', 'afd', '--afs', '--afs-gate-norm', 'none', '--max-iter', '14'))
    assert {g.input_norm for _, _, _, g, _, _ in afs_gates(engine.net) if g is not None} == {'none'}
    assert json.loads((tmp_path / 'afds_report.json').read_text())['gate_input_norm'] == 'none'
    assert all(m['afds']['gate_input_norm'] == 'none' for m in _metas(tmp_path).values())


@pytest.mark.slow
def test_static_only_activation_selection_through_the_script(task_dir, tmp_path):
    from gluon_transfer.prune import prune_afs
    engine, _ = _run(_argv(task_dir, tmp_path, '--reg', 'afd', '--afs', '--afs-static-only', '--mask-stat', 'activation',
                           '--macs-budget', '0.5', '--max-iter', '14'))
    masks = json.loads((tmp_path / 'afds_masks.json').read_text())
    rep = json.loads((tmp_path / 'afds_report.json').read_text())
    sel = masks['selection']
    assert (sel['static_only'], sel['mask_stat'], sel['thres_s']) == (True, 'activation', None)
    assert all(sum(v['s']) == 0 and sum(v['m']) >= 1 for v in masks['masks'].values())
    assert rep['dynamic'] == 0 and rep['static'] == rep['expected'] <= 0.5 * rep['baseline']
    pruned = prune_afs(engine.net)
    assert not any(any(b['gated']) for b in pruned._config['block_config'])      # no runtime gate left


@pytest.mark.slow
def test_reg_afd_without_afs(task_dir, tmp_path):
    engine, _ = _run(_argv(task_dir, tmp_path, '--reg', 'afd', '--afd-norm', 'l2', '--max-iter', '2'))
    assert type(engine.net).__name__ == 'ResNetV1b' and engine.task.regs[0].norm == 'l2'
    last = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])
    assert set(last['terms']) == {'ce', 'afd'} and not (tmp_path / 'afds_report.json').exists()


def test_errors_are_one_line(task_dir, tmp_path, capsys):
    a = (lambda *extra, **kw: _argv(task_dir, tmp_path, '--reg', 'afd', *extra, **kw))
    cases = [
        (a('--afs', model='resnet18_v1'),
         '--afs needs a GluonCV ResNet-v1b (resnet18/34/50/101_v1b, ...) or CIFAR ResNet-v1 (cifar_resnet20_v1, ...); '
         'resnet18_v1 does not fit: AFS gates need a GluonCV ResNet-v1b'),
        (a('--afs', model='cifar_resnet20_v2'), 'cifar_resnet20_v2 does not fit'),
        (a('--afs', '--macs-budget', '0'), '--macs-budget must be in (0, 1] (a fraction of the baseline MACs), got 0.0'),
        (a('--afs', '--macs-budget', '1.5'), '--macs-budget must be in (0, 1]'),
        (a('--afs', '--macs-budget', '0.5', '--thres-m', '0.1'), 'either --macs-budget or --thres-m/--thres-s'),
        (a('--macs-budget', '0.5'), '--macs-budget: only used with --afs'),
        (a('--density', '0.5', '--holdout-fraction', '0.2'), '--density, --holdout-fraction: only used with --afs'),
        (a('--afs-gate-norm', 'none'), '--afs-gate-norm: only used with --afs'),
        (a('--mask-stat', 'activation'), '--mask-stat: only used with --afs'),
        (a('--afs-static-only'), '--afs-static-only: only used with --afs'),
        (a('--afs', '--afs-static-only', '--thres-m', '0.5', '--thres-s', '0.1'),
         '--afs-static-only makes every kept channel static; --thres-s does not apply'),
        (a('--afs', '--afs-channel-multiple', '0'), '--afs-channel-multiple must be >= 1 (1 = no rounding), got 0'),
        (a('--afs', '--density', '0'), '--density must be in (0, 1], got 0.0'),
        (a('--afs', '--holdout-fraction', '1'), '--holdout-fraction must be in (0, 1), got 1.0'),
        (a('--afs', '--resume-epoch', '2'), '--afs resumes with --resume SAVE_DIR'),
        (_argv(task_dir, tmp_path, '--reg', 'l2sp', '--afs'), '--afs with --reg l2sp: the AFS gates have no source'),
        (_argv(task_dir, tmp_path, '--reg', 'l2', '--afd-norm', 'sq'), '--afd-norm: option of --reg afd, not --reg l2'),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, msg
        err = capsys.readouterr().err
        assert err.startswith('error: ') and msg in err and err.count('\n') == 1, (msg, err)
    assert not (tmp_path / 'holdout').exists()         # refused before any file was written
