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

TINY_CIFAR = 'afds_test_cifar_basic_v1'
CIFAR_TAPS = 'features.2.0.body.3,features.3.0.body.3,features.4.0.body.3'


def _tiny_cifar(**kwargs):
    """GluonCV's CIFAR ResNet-v1 with one basic block per stage (a plain network, like cifar_resnet20_v1)."""
    from gluoncv.model_zoo.cifarresnet import CIFARResNetV1, CIFARBasicBlockV1
    return CIFARResNetV1(CIFARBasicBlockV1, [1, 1, 1], [16, 16, 32, 64], **kwargs)


if TINY_CIFAR not in MODELS:
    MODELS.register(TINY_CIFAR, obj=_tiny_cifar)


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
    mx.random.seed(0)
    src = _tiny_cifar(classes=7)
    src.initialize(mx.init.Xavier())
    with mx.autograd.train_mode():
        for _ in range(20):
            src(x)
    src.save_parameters(str(root / 'source_cifar.params'))
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
            args.mask_stat, args.afs_static_only) == (0.9, 0.9, 10.0, 'layer', 0.1, 'l2', 16, 'gate', False)
    assert (args.afs_gate_init, args.afs_wta_round, args.thres_scale, args.afs_random_masks) == \
        ('identity', 'ceil', 'layer', False)
    reg = FineTune().make_regularizer(args, 4)
    assert (reg.lam, reg.norm, reg.mode) == (0.01, 'l2', 'joint')
    args = resolve_args(parse('--reg', 'afd', '--afs', '--density', '0.7'), num_train=30)
    assert args.afs_phase1_density == 0.7                                  # d from the first step


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
    # (twice: before phase 1, for afds_gate_stats.json, and at the mask update)
    assert len(seen) == 2 and isinstance(seen[0], afds.TrainHoldout) and seen[1] is seen[0]
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
    # --- gates: lr x10 on top of the layer group's multiplier; masks are parameters of the net
    p = engine.net.layer1[0].gate1
    assert p.fc.weight.lr_mult == pytest.approx(10 * engine.net.layer1[0].conv1.weight.lr_mult)
    assert p.gamma.lr_mult == pytest.approx(10 * engine.net.layer1[0].conv1.weight.lr_mult)
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
    assert float(stored['layer1.0.gate1.wta_density'].asnumpy()[0]) == pytest.approx(0.9)   # d from step 0
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
    # (the raw input makes each gated layer quadratic in its input's scale: on this random tiny network the
    # default gate lr x10 overflows it, which the mask update refuses with a one-line DataError; x1 trains)
    engine, _ = _run(_argv(task_dir, tmp_path, '--reg', 'afd', '--afs', '--afs-gate-norm', 'none', '--max-iter', '14',
                           '--afs-gate-lr-mult', '1'))
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
        (a('--afds-preset', 'repro', '--afs-random-masks'), '--afs-random-masks, --afds-preset: only used with --afs'),
        (a('--thres-scale', 'absolute', '--afs-wta-round', 'round'),
         '--afs-wta-round, --thres-scale: only used with --afs'),
        (a('--afs', '--afds-preset', 'repro', '--randaugment'),
         '--afds-preset repro trains with its rotation + random resized crop, which only the ImageRecordIter pipeline '
         'does: drop --randaugment'),
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


def test_reproduction_preset_sets_every_value_and_explicit_flags_win(task_dir, tmp_path):
    from gluon_transfer.methods.afds import REPRO_TRAIN_AUG, preset_schedule
    parse = (lambda *extra: cli.parse_args(cli.build_parser('transfer', 'test'),
                                           _argv(task_dir, tmp_path, '--reg', 'afd', '--afs', *extra)))
    argv = [a for a in _argv(task_dir, tmp_path) if a not in ('--batch-size', '4', '--lr', '0.001')]
    args = cli.parse_args(cli.build_parser('transfer', 'test'), argv + ['--reg', 'afd', '--afs', '--afds-preset', 'repro'])
    args = resolve_args(args, num_train=30)
    assert (args.batch_size, args.optimizer, args.lr, args.momentum, args.lr_mode, args.lr_decay) == \
        (48, 'sgd', 0.01, 0.9, 'step', 0.1)
    assert (args.afs_density, args.afs_phase1_density, args.afs_wta_round, args.afs_gate_lr_mult) == \
        (0.9, 0.9, 'round', 1.0)
    assert args.train_aug == REPRO_TRAIN_AUG and args.train_aug['max_rotate_angle'] == 45
    assert 'AFDS preset' in args.preset_note
    # the schedule: the reproduction's num_epochs = int(max_iter * bs / N) per phase, StepLR over both
    args = parse('--afds-preset', 'repro', '--batch-size', '48')
    args.max_iter = None
    e, steps = preset_schedule(args, num_train=4050)            # 4500 * 48 / 4050 = 53.3 -> 53 per phase
    assert (e, args.num_epochs, args.afs_phase1_epochs, args.max_iter) == (53, 106, 53, 0)
    assert steps == (36, 72) == tuple(args.lr_decay_epoch)     # int(0.67 * 53) + 1 = 36; 108 > 106
    args = parse('--afds-preset', 'repro', '--max-iter', '600')
    e, steps = preset_schedule(args, num_train=450)              # 600 * 4 / 450 = 5.3 -> 5 (batch 4 given)
    assert (e, args.num_epochs, steps) == (5, 10, (4, 8))
    # explicit options keep their values
    args = resolve_args(parse('--afds-preset', 'repro', '--density', '0.8', '--afs-wta-round', 'ceil',
                              '--afs-gate-lr-mult', '0.5', '--lr', '0.02'), num_train=30)
    assert (args.batch_size, args.lr, args.afs_density, args.afs_phase1_density, args.afs_wta_round,
            args.afs_gate_lr_mult) == (4, 0.02, 0.8, 0.8, 'ceil', 0.5)
    assert 'kept as given: --batch-size, --lr, --density, --afs-wta-round, --afs-gate-lr-mult' in args.preset_note
    args = parse('--afds-preset', 'repro', '--num-epochs', '8', '--lr-decay-epoch', '5', '--afs-phase1-epochs', '3')
    assert preset_schedule(args, num_train=450) == (3, ()) and (args.num_epochs, args.lr_decay_epoch) == (8, (5,))
    # the rotation needs ImageRecordIter
    with pytest.raises(Exception, match='drop --pad-mode'):
        resolve_args(parse('--afds-preset', 'repro', '--pad-mode', 'reflect'), num_train=30)


def _cifar_argv(d, save, *extra):
    argv = _argv(d, save, '--reg', 'afd', '--taps', CIFAR_TAPS, '--afs', *extra, model=TINY_CIFAR)
    argv[argv.index('--source-params') + 1] = str(d / 'source_cifar.params')
    return argv


@pytest.mark.slow
def test_default_afs_on_a_basic_block_network_learns_prunes_and_exports(task_dir, tmp_path, capsys):
    """Plain --afs (no budget, default thresholds) on a CIFAR basic-block ResNet: the gate
    statistics on the holdout move away from their start during phase 1, the default rule
    prunes at least one channel, and tools/export.py --prune writes a network equal to the
    masked one."""
    import sys
    from gluon_transfer.afds.report import gate_movement
    engine, _ = _run(_cifar_argv(task_dir, tmp_path, '--max-iter', '24'))
    record = json.loads((tmp_path / 'afds_gate_stats.json').read_text())
    assert set(record) >= {'start', 'mask_update', 'info'} and len(record['mask_update']) == 6
    moved = gate_movement(record['start'], record['mask_update'])
    for name in record['mask_update']:       # every gated layer's gate values moved
        assert moved[name]['h_moved'] > 1e-3, (name, moved[name])
    masks = json.loads((tmp_path / 'afds_masks.json').read_text())
    m_all = np.concatenate([v['m'] for v in masks['masks'].values()])
    assert 0 < m_all.sum() < len(m_all)                                  # the default rule pruned
    rep = json.loads((tmp_path / 'afds_report.json').read_text())
    assert rep['static'] < rep['baseline'] and masks['selection']['thres_scale'] == 'layer'
    # the best checkpoint (phase 2) exports pruned, equal to the masked network
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
    try:
        import export as export_tool
    finally:
        sys.path.pop(0)
    out = str(tmp_path / 'exp' / 'afs')
    rc = export_tool.main(['--model', 'afs_cifar_resnet_v1', '--kw', 'layers=[1,1,1]', '--classes', '3',
                           '--params', str(tmp_path / 'best.params'), '--input-shape', '2,3,32,32', '--out', out,
                           '--prune', '--no-optimize'])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert 'pruned network equals the gated one' in text and 'as recorded in' in text


@pytest.mark.slow
def test_random_masks_through_the_script_keep_the_counts_of_the_chosen_ones(task_dir, tmp_path):
    common = ('--macs-budget', '0.5', '--max-iter', '14', '--afs-channel-multiple', '1')
    _run(_cifar_argv(task_dir, tmp_path / 'afs', *common))
    _run(_cifar_argv(task_dir, tmp_path / 'rnd', *common, '--afs-random-masks'))
    a = json.loads((tmp_path / 'afs' / 'afds_masks.json').read_text())
    b = json.loads((tmp_path / 'rnd' / 'afds_masks.json').read_text())
    assert b['selection']['random_masks'] is True and not a['selection']['random_masks']
    differ = 0
    for name, va in a['masks'].items():
        vb = b['masks'][name]
        assert sum(va['m']) == sum(vb['m']) and sum(np.multiply(va['m'], va['s'])) == sum(np.multiply(vb['m'], vb['s']))
        differ += int(va['m'] != vb['m'])
    assert differ > 0
    ra = json.loads((tmp_path / 'afs' / 'afds_report.json').read_text())
    rb = json.loads((tmp_path / 'rnd' / 'afds_report.json').read_text())
    assert (ra['static'], ra['expected']) == (rb['static'], rb['expected']) and ra['expected'] <= 0.5 * ra['baseline']
    assert 'replaced by random masks' in (tmp_path / 'rnd' / 'train.log').read_text()


@pytest.mark.slow
def test_reproduction_preset_network_keeps_round_d_c_channels(task_dir, tmp_path):
    """Under --afds-preset repro every gate counts WTA winners as round(d C): 14 of 16 at d = 0.9
    (ceil would keep 15), in phase 1 already (d from step 0)."""
    from gluon_transfer.methods.afds import REPRO_TRAIN_AUG
    engine, ft = _run(_cifar_argv(task_dir, tmp_path, '--afds-preset', 'repro', '--max-iter', '4',
                                  '--afs-channel-multiple', '1', '--save-frequency', '1'))
    gates = [g for _, _, _, g, _, _ in afs_gates(engine.net) if g is not None]
    assert {g.wta_round for g in gates} == {'round'}
    metas = _metas(tmp_path)
    assert float(mx.nd.load(str(tmp_path / metas[1]['files']['params']))['features.2.0.gate1.wta_density']
                 .asnumpy()[0]) == pytest.approx(0.9)                      # phase 1 at d = 0.9
    g = engine.net.features[2][0].gate1           # 16 channels; all masks 1 for the count
    g.mask_m.set_data(mx.nd.ones(16))
    g.mask_s.set_data(mx.nd.ones(16))
    x = mx.nd.array(np.random.RandomState(0).uniform(0, 1, (6, 16, 4, 4)))
    h = g.gate_values(mx.nd, x).asnumpy()
    out = g(x, mx.nd.ones((6, 16, 4, 4))).asnumpy()[:, :, 0, 0]
    kept = (out > 0).sum(axis=1)
    assert (kept == np.minimum(14, (h > 0).sum(axis=1))).all() and round(0.9 * 16) == 14
    # 27 training records of batch 4 (after the holdout): each phase int(4 * 4 / 27) -> 1 epoch (at least 1)
    assert engine.history[-1]['epoch'] == 2 and metas[2]['afds']['phase'] == 2
    log = (tmp_path / 'train.log').read_text()
    assert 'AFDS preset' in log and 'preset schedule: 1 epochs per phase' in log
    assert REPRO_TRAIN_AUG['max_rotate_angle'] == 45
