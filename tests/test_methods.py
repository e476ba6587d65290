"""The fine-tuning methods as plug-ins (gluon_transfer.methods): the registry, flags named by
what they weigh with the reference spellings as aliases, one-line errors for options that
do not apply to the chosen method, the AFDS best checkpoint (phase 2 only) and the prune
refusal, the holdout split's source check, and DELTA's channel weights kept out of the data
folder."""
import glob
import json
import os

import numpy as np
import pytest
import mxnet as mx

from gluon_transfer import cli
import gluon_transfer as gt
from gluon_transfer.errors import CheckpointError, ConfigError
from gluon_transfer.finetune import FineTune, main, resolve_args
from gluon_transfer.registry import METHODS, REGULARIZERS

from data_helpers import write_rec
from tool_helpers import load_tool



def _parse(argv, preset='transfer'):
    return cli.parse_args(cli.build_parser(preset, 'test'), argv)


# ------------------------------------------------------------------ registry
def test_every_reg_is_served_by_exactly_one_registered_method():
    import gluon_transfer.methods  # noqa: F401  (registers them)
    from gluon_transfer import losses  # noqa: F401
    assert {'plain', 'l2sp', 'delta', 'fea_map', 'afds', 'afa', 'nonbinary'} <= set(METHODS)
    served = [r for name in METHODS for r in (METHODS.get(name).regs or ())]
    assert sorted(served) == sorted(set(served))                          # no --reg served twice
    assert set(served) == set(REGULARIZERS)                               # and every regularizer has a method
    assert METHODS.get('nonbinary').regs is None                          # applies to every run


# ------------------------------------------------------------------ flags and aliases
@pytest.mark.parametrize('reg, alias, own, weight', [
    ('l2sp', 'alpha', 'l2sp_alpha', 'alpha'), ('l2sp', 'beta', 'l2sp_beta', 'beta'),
    ('delta', 'alpha', 'delta_alpha', 'alpha'), ('fea_map', 'beta', 'fea_map_beta', 'beta'),
    ('afa-ast', 'alpha', 'afa_alpha', 'alpha')])
def test_reference_spellings_are_the_methods_own_weights(reg, alias, own, weight):
    args = resolve_args(_parse(['--reg', reg, '--source-params', 'S.params', '--' + alias, '0.37',
                                '--channel-weights', 'uniform'] if reg == 'delta' else
                               ['--reg', reg, '--source-params', 'S.params', '--' + alias, '0.37']), num_train=40)
    assert getattr(args, own) == 0.37 and getattr(args, alias) == 0.37
    reg_obj = FineTune().make_regularizer(args, 8)
    assert getattr(reg_obj, weight) == 0.37
    # the scoped name gives the same number
    args2 = resolve_args(_parse(['--reg', reg, '--source-params', 'S.params', '--' + own.replace('_', '-'), '0.37']
                                + (['--channel-weights', 'uniform'] if reg == 'delta' else [])), num_train=40)
    assert getattr(FineTune().make_regularizer(args2, 8), weight) == 0.37


def test_afd_lambda_and_its_reference_spelling():
    for flag in ('--afd-lambda', '--lambda-afd'):
        args = resolve_args(_parse(['--reg', 'afd', '--source-params', 'S.params', flag, '0.05']), num_train=40)
        assert FineTune().make_regularizer(args, 8).lam == 0.05


def test_help_says_which_spelling_is_which():
    text = ' '.join(cli.build_parser('transfer', 'test').format_help().split())     # unwrapped
    for want in ('--l2sp-alpha for --reg l2sp', '--delta-alpha for --reg delta', '--afa-alpha for --reg afa-ast',
                 '--afd-lambda LAMBDA, --lambda-afd LAMBDA', 'an error with any other --reg'):
        assert want in text, want
    text = ' '.join(cli.build_parser('cifar', 'test').format_help().split())
    for want in ('--at-beta BETA, --beta BETA', '--kd-alpha ALPHA, --alpha ALPHA', '--kd-temperature T, --temperature T'):
        assert want in text, want


@pytest.mark.parametrize('argv, msg', [
    (['--reg', 'afd', '--l2sp-rates', '1,2,3'], '--l2sp-rates: option of --reg l2sp, not --reg afd'),
    (['--reg', 'l2', '--beta', '7'], '--beta: not an option of --reg l2'),
    (['--reg', 'l2sp', '--lambda-afd', '5'], '--lambda-afd: option of --reg afd, not --reg l2sp'),
    (['--reg', 'afd', '--alpha', '0.1'], '--alpha: not an option of --reg afd'),
    (['--reg', 'l2sp', '--alpha', '0.1', '--l2sp-alpha', '0.2'], 'give --l2sp-alpha or its alias --alpha, not both'),
    (['--reg', 'l2', '--taps', 'layer1.0.conv1'], '--taps: option of --reg afa-ast, afa-act, afd, delta, fea_map, '
                                                  'not --reg l2'),
    (['--reg', 'l2sp', '--channel-weights', 'uniform'], '--channel-weights: option of --reg delta, not --reg l2sp'),
    (['--reg', 'fea_map', '--delta-alpha', '0.1'], '--delta-alpha: option of --reg delta, not --reg fea_map'),
    (['--reg', 'l2', '--init-from', 'S1.params'], '--init-from is for AFA stage 2 (--reg afa-act)'),
    (['--reg', 'afa-ast', '--afa-holdout', '0.2'], '--afa-holdout: only used with --afa-two-stage'),
    (['--reg', 'l2', '--afa-two-stage'], '--afa-two-stage: option of --reg afa-ast, afa-act, not --reg l2'),
    (['--num-low-lr-layers', '2'], '--num-low-lr-layers: only used with --lrs'),
    (['--reg', 'l2', '--afd-predictor', 'joint'], '--afd-predictor: option of --reg afd, not --reg l2'),
])
def test_options_that_do_not_apply_are_one_line_errors(argv, msg, capsys, tmp_path):
    assert main(argv + ['--source-params', 'S.params', '--save-dir', str(tmp_path / 'run')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and msg in err and err.count('\n') == 1, (msg, err)
    assert not (tmp_path / 'run').exists()          # refused before anything was written


def test_afs_with_another_reg_names_the_afd_method(capsys):
    """--afs is AFDS's selection half: with another --reg the error says so and no longer
    suggests the other regularizers (it used to say "use --reg afd, fea_map, delta or l2")."""
    for reg in ('delta', 'l2', 'fea_map', 'l2sp'):
        assert main(['--reg', reg, '--afs', '--source-params', 'S.params']) == 2
        why = 'the AFS gates have no source weights for its anchor, and ' if reg == 'l2sp' else ''
        assert capsys.readouterr().err == ('error: --afs with --reg %s: %s--afs is the selection half of AFDS: use '
                                           '--reg afd --afs\n' % (reg, why))


def test_two_spellings_of_one_option_are_refused(capsys):
    for preset, argv in (('cifar', ['--at-beta', '1', '--beta', '2']), ('transfer', ['--lambda-afd', '1', '--afd-lambda', '2'])):
        with pytest.raises(SystemExit) as e:
            _parse(argv, preset)
        assert e.value.code == 2
        assert 'given twice, as %s and %s' % tuple(argv[::2]) in capsys.readouterr().err


def test_distillation_options_name_what_they_weigh():
    args = _parse(['--teacher-model', 'wrn16_2', '--at-beta', '1e3', '--kd-alpha', '0.9', '--kd-temperature', '3'],
                  'cifar')
    assert (args.at_beta, args.kd_alpha, args.kd_temperature) == (1e3, 0.9, 3.0)
    assert cli.distill_task_factory(args) is cli.make_distill_task
    cases = [(['--kd-temperature', '3'], '--kd-temperature given without --teacher-model'),
             (['--teacher-random'], '--teacher-random given without --teacher-model'),
             (['--teacher', 'wrn16_2', '--at-beta', '1e3', '--temperature', '2'],
              '--temperature: only used with --kd-alpha > 0'),
             (['--teacher', 'wrn16_2', '--kd-alpha', '0.9', '--at-mode', 'paper', '--at-p', '1'],
              '--at-mode, --at-p: only used with --at-beta > 0'),
             (['--teacher', 'wrn16_2', '--at-beta', '1e3', '--grad-at-step', '0.01'],
              '--grad-at-step: only used with --grad-at-beta > 0')]
    for argv, msg in cases:
        with pytest.raises(ConfigError) as e:
            cli.distill_task_factory(_parse(argv, 'cifar'))
        assert msg in str(e.value), (msg, str(e.value))


# ------------------------------------------------------------------ AFDS: the best checkpoint has masks
def _afs_net(seed=0):
    from gluon_transfer.models.afs_resnet import AFSResNetV1b
    mx.random.seed(seed)
    net = AFSResNetV1b(layers=[1, 1, 1, 1], classes=4, density=0.8, gate_init='random')
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    return net


def test_afds_best_checkpoint_is_chosen_in_phase_2_only(tmp_path, rng):
    from gluon_transfer.afds import TrainHoldout, afds_schedule, current_masks
    from gluon_transfer.data.base import ArrayIter
    from gluon_transfer.engine.checkpoint import CheckpointManager
    from gluon_transfer.engine.tasks import Classify
    from gluon_transfer.engine.trainer import Engine, FitConfig
    net = _afs_net()
    images = rng.randint(0, 256, size=(24, 3, 32, 32)).astype(np.uint8)
    labels = np.arange(24) % 4
    norm = dict(mean=(127.5,) * 3, std=(64.0,) * 3)
    hold, tr_images, tr_labels = TrainHoldout.from_arrays(images, labels, fraction=0.25, batch_size=6, **norm)
    train = ArrayIter(tr_images, tr_labels, 6, shuffle=True, last_batch='rollover', **norm)
    val = ArrayIter(images[:8], labels[:8], 8, **norm)
    save = str(tmp_path / 'run')
    eng = Engine(net, Classify(), [mx.cpu()], FitConfig(num_epochs=4, lr=0.01, wd=0.0, log_interval=100), train,
                 val, num_classes=4, checkpoint=CheckpointManager(save, 'afds'))
    afds_schedule(eng, hold, phase1_epochs=2, macs_budget=0.5, input_shape=(1, 3, 32, 32))
    # every epoch evaluated; phase 1 never recorded a best, phase 2 did
    assert [h['epoch'] for h in eng.history] == [1, 2, 3, 4]
    assert [h['best_top1'] for h in eng.history[:2]] == [-1.0, -1.0]
    assert eng.best_top1 == max(h['val_top1'] for h in eng.history[2:])
    best = [f for f in glob.glob(os.path.join(save, '*best*.params'))]
    assert len(best) == 1
    stored = mx.nd.load(best[0])
    masks = current_masks(net)
    assert any(m.min() == 0 for m, _ in masks.values())                  # a budget of 0.5 pruned something
    for name, (m, s) in masks.items():
        np.testing.assert_array_equal(stored[name + '.mask_m'].asnumpy(), m)
        np.testing.assert_array_equal(stored[name + '.mask_s'].asnumpy(), s)



def test_export_prune_refuses_a_network_without_masks(tmp_path, capsys):
    export_tool = load_tool('export')
    net = _afs_net()                                 # every mask 1: the network before the mask update
    params = str(tmp_path / 'phase1.params')
    net.save_parameters(params)
    argv = ['--model', 'afs_resnet_v1b', '--kw', 'layers=[1,1,1,1]', '--kw', 'gate_init="random"', '--classes', '4',
            '--params', params, '--input-shape', '1,3,32,32', '--out', str(tmp_path / 'exp'), '--prune',
            '--no-optimize']
    assert export_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'carries no AFS masks' in err and err.count('\n') == 1, err
    assert not glob.glob(str(tmp_path / 'exp*'))
    # a checkpoint recorded as phase 1 is refused by its record, whatever its masks
    from gluon_transfer.models.afs_resnet import afs_gates
    for _, _, _, gate, _, _ in afs_gates(net):
        gate.mask_m.set_data(mx.nd.array((np.arange(gate.channels) % 2 == 0).astype(np.float32)))
    net.save_parameters(str(tmp_path / 'run-0001.params'))
    with open(str(tmp_path / 'run-0001.json'), 'w') as f:
        json.dump({'afds': {'phase': 1, 'gate_input_norm': 'none'}}, f)
    argv[argv.index(params)] = str(tmp_path / 'run-0001.params')
    assert export_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert 'is an AFDS phase-1 checkpoint' in err and err.count('\n') == 1, err
    with open(str(tmp_path / 'run-0001.json'), 'w') as f:
        json.dump({'afds': {'phase': 2, 'gate_input_norm': 'none'}}, f)
    assert export_tool.main(argv) == 0
    assert os.path.isfile(str(tmp_path / 'exp-pruned.params'))


# ------------------------------------------------------------------ the holdout split checks its source
def _labels(i):
    return i % 4


def test_holdout_split_is_rebuilt_when_the_training_file_changed(tmp_path):
    """Same record count, other images: the split must follow the new file (the old AFA
    split was reused because only the count was compared)."""
    from gluon_transfer.data.holdout import NEW_SPLIT, split_records
    from gluon_transfer.data.recordio import inspect_recordio
    from gluon_transfer.methods.afa import holdout_split
    import cv2
    src = str(tmp_path / 'data' / 'train')
    os.makedirs(os.path.dirname(src))
    write_rec(src, 40, label_of=_labels, size=8)
    out = str(tmp_path / 'run' / 'holdout')
    first = split_records(src + '.rec', 0.25, out, seed=1)
    assert first.rebuilt == NEW_SPLIT and first.num_holdout == 12 and first.num_train == 28
    again = split_records(src + '.rec', 0.25, out, seed=1)
    assert again.rebuilt is None                                     # unchanged source: reused

    def red(rec):
        info = inspect_recordio(rec)
        r = mx.recordio.MXIndexedRecordIO(info.idx, info.rec, 'r')
        out = {}
        for k in info.keys:
            header, img = mx.recordio.unpack(r.read_idx(int(k)))
            out[int(k)] = int(cv2.imdecode(np.frombuffer(img, np.uint8), 1)[0, 0, 2])
        return out
    assert set(red(first.holdout_rec).values()) <= set(range(40))
    # re-pack: same 40 records and labels, every image's red channel + 100
    write_rec(src, 40, label_of=_labels, size=8,
              payload_of=lambda i: cv2.imencode('.png', np.dstack([np.full((8, 8), 200, np.uint8),
                                                                   np.full((8, 8), 1, np.uint8),
                                                                   np.full((8, 8), i + 100, np.uint8)]))[1].tobytes())
    st = os.stat(src + '.rec')
    os.utime(src + '.rec', ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))    # a later modification time
    tr, ho = holdout_split(src + '.rec', 0.25, out, seed=1)
    assert (tr, ho) == (first.train_rec, first.holdout_rec)
    held = red(ho)
    assert len(held) == 12 and all(v == k + 100 for k, v in held.items())   # the new images, not the stale ones
    assert all(v == k + 100 for k, v in red(tr).items())
    with open(first.manifest) as f:
        assert json.load(f)['mtime_ns'] == os.stat(src + '.rec').st_mtime_ns
    assert sorted(os.listdir(str(tmp_path / 'data'))) == ['train.idx', 'train.rec']   # nothing beside the source
    with pytest.raises(ConfigError, match='leaves no training records'):
        split_records(src + '.rec', 0.99, out)


# ------------------------------------------------------------------ DELTA's channel weights
def test_delta_channel_weights_live_in_a_cache_keyed_by_source_and_data(tmp_path, monkeypatch):
    from gluon_transfer.methods.delta import channel_weights_path
    monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path / 'cache'))
    data = tmp_path / 'data'
    data.mkdir()
    write_rec(str(data / 'train'), 8, size=8)
    (tmp_path / 'S.params').write_bytes(b'source v1')
    argv = ['--reg', 'delta', '--model', 'resnet18_v1b', '--source-params', str(tmp_path / 'S.params'),
            '--data-dir', str(data)]
    args = _parse(argv)
    args.dataset_name = args.dataset
    path = channel_weights_path(args, {})
    assert path.startswith(str(tmp_path / 'cache' / 'delta' / 'resnet18_v1b-')) and path.endswith('.json')
    assert channel_weights_path(_parse(argv), {}) == path                           # deterministic
    assert channel_weights_path(_parse(argv + ['--taps', 'layer1.1.conv2']), {}) != path
    assert channel_weights_path(_parse(argv + ['--input-size', '64']), {}) != path
    (tmp_path / 'S.params').write_bytes(b'source v2, another size')              # other source weights
    assert channel_weights_path(_parse(argv), {}) != path
    (tmp_path / 'S.params').write_bytes(b'source v1')
    os.utime(str(tmp_path / 'S.params'), ns=(0, 0))
    assert channel_weights_path(_parse(argv), {}) != path                        # another mtime: another file
    # the run looks there, and only there: a missing entry is the one-line "not found" error
    assert main(argv + ['--input-size', '32', '--save-dir', str(tmp_path / 'run')]) == 2
    assert sorted(os.listdir(str(data))) == ['train.idx', 'train.rec']


@pytest.mark.slow
def test_delta_tool_writes_the_cache_and_train_transfer_reads_it(tmp_path, monkeypatch, capsys):
    """tools/delta_channel_weights.py (one head epoch, one batch, one tap) then
    train_transfer.py --reg delta without --channel-weights: the same cache entry, nothing
    written into the data folder."""
    import cv2
    from gluon_transfer.data.pack import pack
    from gluon_transfer.zoo import get_model
    monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path / 'cache'))
    rng = np.random.RandomState(0)
    for split, n in (('train', 4), ('val', 2)):
        for ci, c in enumerate(('ant', 'bee')):
            d = tmp_path / 'img' / split / c
            d.mkdir(parents=True)
            for k in range(n):
                img = rng.randint(0, 256, (36, 36, 3)).astype(np.uint8)
                img[..., ci] = 255
                cv2.imwrite(str(d / ('%d.png' % k)), img)
        pack(str(tmp_path / 'img' / split), str(tmp_path / 'data' / split), workers=1, classes=['ant', 'bee'])
    mx.random.seed(0)
    src = get_model('resnet18_v1b', classes=5)
    src.initialize(mx.init.Xavier())
    src(mx.nd.zeros((1, 3, 32, 32)))
    src.save_parameters(str(tmp_path / 'source.params'))
    before = sorted(os.listdir(str(tmp_path / 'data')))
    common = ['--model', 'resnet18_v1b', '--source-params', str(tmp_path / 'source.params'), '--data-dir',
              str(tmp_path / 'data'), '--input-size', '32', '--batch-size', '4', '-j', '1', '--taps',
              'layer1.1.conv2', '--log-interval', '0']
    tool = load_tool('delta_channel_weights')
    assert tool.main(common + ['--head-epochs', '1', '--num-batches', '1', '--save-dir', str(tmp_path / 'cw')]) == 0
    written = glob.glob(str(tmp_path / 'cache' / 'delta' / 'resnet18_v1b-*.json'))
    assert len(written) == 1
    with open(written[0]) as f:
        rec = json.load(f)
    assert rec['taps'] == ['layer1.1.conv2'] and len(rec['raw_importance'][0]) == 64
    assert rec['identity']['source']['path'] == str(tmp_path / 'source.params')
    assert sorted(os.listdir(str(tmp_path / 'data'))) == before                    # the data folder is untouched
    capsys.readouterr()
    assert main(common + ['--reg', 'delta', '--max-iter', '1', '--save-dir', str(tmp_path / 'run')]) == 0
    assert ('DELTA channel weights: %s' % written[0]) in (tmp_path / 'run' / 'train.log').read_text()


def test_a_source_file_without_a_classifier_loads_as_a_backbone(tmp_path):
    """tools/convert_torch.py --drop-head writes no classifier: such a file is a valid
    --source-params (every backbone array loaded exactly); a file that misses a backbone
    key is still refused, naming the key."""
    from gluon_transfer.methods.base import load_source
    mx.random.seed(3)
    full = gt.get_model('cifar_resnet20_v1', classes=5)
    full.initialize(mx.init.Xavier())
    full(mx.nd.zeros((1, 3, 32, 32)))
    arrays = {k: p.data() for k, p in full._collect_params_with_prefix().items()}
    backbone = {k: v for k, v in arrays.items() if not k.startswith('output.')}
    assert len(backbone) == len(arrays) - 2
    path = str(tmp_path / 'backbone.params')
    mx.nd.save(path, backbone)
    net = load_source('cifar_resnet20_v1', mx.cpu(), path)
    got = net._collect_params_with_prefix()
    for k, v in backbone.items():
        np.testing.assert_array_equal(got[k].data().asnumpy(), v.asnumpy())
    broken = dict(backbone)
    del broken['features.1.gamma']
    mx.nd.save(path, broken)
    with pytest.raises(CheckpointError, match="missing key 'features.1.gamma'"):
        load_source('cifar_resnet20_v1', mx.cpu(), path)
