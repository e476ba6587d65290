"""End-to-end runs of the training scripts on tiny generated RecordIO sets, and the
one-line errors for bad input. In-process through ``cli.main`` (same code path as the
scripts) except for one real subprocess per script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from gluon_transfer import cli
from tool_helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_set(prefix, n, size, classes=4, seed=0, fmt='.jpg'):
    """``prefix.rec/.idx`` with class-dependent colour blobs (learnable) as JPEG."""
    import mxnet as mx
    rng = np.random.RandomState(seed)
    rec = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')
    for i in range(n):
        c = i % classes
        img = rng.randint(0, 60, (size, size, 3)).astype(np.uint8)
        img[..., c % 3] += np.uint8(120 + 40 * (c // 3))
        ok, buf = cv2.imencode(fmt, img)
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(c), i, 0), buf.tobytes()))
    rec.close()


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('cifar')
    write_set(str(d / 'train'), 48, 32, seed=1)
    write_set(str(d / 'val'), 20, 32, seed=2)
    return str(d)


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('imagenet')
    write_set(str(d / 'train'), 16, 48, seed=3)
    write_set(str(d / 'val'), 8, 48, seed=4)
    return str(d)


def run_cli(preset, argv, capsys):
    rc = cli.main(preset, 'test', argv)
    out, err = capsys.readouterr()
    return rc, out, err


def cifar_args(data_dir, save_dir, *extra):
    return ['--data-dir', data_dir, '--model', 'cifar_resnet20_v1', '--batch-size', '8', '--num-epochs', '2',
            '--lr', '0.05', '--lr-mode', 'cosine', '--save-dir', save_dir, '--log-interval', '2', '-j', '1',
            '--seed', '3'] + list(extra)


def metrics(save_dir):
    with open(os.path.join(save_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def run_script(argv):
    """train_cifar.py in a fresh process: exact-resume comparisons must not depend on what
    earlier tests left in this interpreter (MXNet engine threads, global RNG state).

    ``MXNET_ENGINE_TYPE=NaiveEngine``: MXNet's default ThreadedEnginePerDevice is not
    bit-reproducible with oneDNN operators -- two identical uninterrupted runs of this test's
    training differed by up to 2e-5 in BN running variances (measured; with
    ``MXNET_MKLDNN_ENABLED=0``, ``ThreadedEngine`` or ``NaiveEngine`` they are identical), which
    made the resume comparison flaky under load. With the synchronous engine, resume is
    compared bit for bit."""
    env = dict(os.environ, MXNET_ENGINE_TYPE='NaiveEngine')
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'train_cifar.py')] + argv, capture_output=True,
                         text=True, timeout=300, env=env)
    return res.returncode, res.stdout, res.stderr


def test_train_cifar_end_to_end_and_resume(cifar_dir, tmp_path):
    full = str(tmp_path / 'full')
    rc, out, err = run_script(cifar_args(cifar_dir, full))
    assert rc == 0, err
    assert '[Epoch 2/2]' in out and 'val: top1=' in out and 'Speed:' in out
    m = metrics(full)
    assert [r['epoch'] for r in m] == [1, 2]
    for key in ('lr', 'train_loss', 'train_acc', 'val_top1', 'val_top5', 'val_mean_class_acc', 'images_per_sec',
                'time', 'terms'):
        assert key in m[0]
    assert 0.0 <= m[1]['val_top1'] <= 1.0 and m[1]['val_top5'] >= m[1]['val_top1']
    names = os.listdir(full)
    assert 'cifar10-cifar_resnet20_v1-0002.params' in names and 'checkpoint.json' in names
    assert 'best.params' in names and 'best.json' in names and 'train.log' in names
    with open(os.path.join(full, 'best.json')) as f:
        best = json.load(f)
    tops = [r['val_top1'] for r in m]
    assert best['epoch'] == int(np.argmax(tops)) + 1 and best['val_top1'] == pytest.approx(max(tops))
    assert 'best val top-1 %.4f at epoch %d' % (max(tops), best['epoch']) in out and 'tools/evaluate.py' in out

    part = str(tmp_path / 'part')
    # Stop after the first epoch's 6 iterations (48 images / 8), same 2-epoch schedule.
    rc, _, err = run_script(cifar_args(cifar_dir, part, '--max-iter', '6'))
    assert rc == 0, err
    assert [r['epoch'] for r in metrics(part)] == [1]
    # Resume with the full run's schedule: same final parameters as the uninterrupted run.
    rc, out, err = run_script(cifar_args(cifar_dir, part, '--resume', part))
    assert rc == 0, err
    assert 'resumed from' in out
    import mxnet as mx
    a = mx.nd.load(os.path.join(full, 'cifar10-cifar_resnet20_v1-0002.params'))
    b = mx.nd.load(os.path.join(part, 'cifar10-cifar_resnet20_v1-0002.params'))
    assert sorted(a) == sorted(b)
    for k in a:   # bit-exact (see run_script)
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)
    assert metrics(part)[-1]['lr'] == pytest.approx(m[-1]['lr'])


@pytest.mark.slow
def test_train_cifar_mixup_label_smoothing_two_devices(cifar_dir, tmp_path, capsys):
    save = str(tmp_path / 'mix')
    rc, out, err = run_cli('cifar', cifar_args(cifar_dir, save, '--mixup', '--mixup-alpha', '0.4',
                                               '--mixup-off-epoch', '1', '--label-smoothing', '--no-wd',
                                               '--ctx', 'cpu:0,cpu:1', '--mode', 'hybrid', '--warmup-epochs', '1'),
                           capsys)
    assert rc == 0, err
    assert 'cpu(0),cpu(1)' in out
    m = metrics(save)
    assert len(m) == 2 and all(np.isfinite(r['train_loss']) for r in m)


@pytest.mark.slow
def test_train_imagenet_end_to_end(imagenet_dir, tmp_path):
    """A real subprocess of train_imagenet.py on a tiny RecordIO set (hybrid mode)."""
    save = str(tmp_path / 'in')
    cmd = [sys.executable, os.path.join(ROOT, 'train_imagenet.py'), '--rec-train', os.path.join(imagenet_dir, 'train.rec'),
           '--rec-val', os.path.join(imagenet_dir, 'val.rec'), '--model', 'resnet18_v1b', '--input-size', '32',
           '--batch-size', '4', '--num-epochs', '1', '--warmup-epochs', '0.5', '--lr', '0.01', '--last-gamma',
           '--no-wd', '--label-smoothing', '--save-dir', save, '--log-interval', '2', '-j', '1']
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert '[Epoch 1/1]' in res.stdout and 'top5=' in res.stdout
    assert os.path.isfile(os.path.join(save, 'imagenet-resnet18_v1b-0001.params'))


@pytest.mark.slow
def test_train_cifar_script_subprocess_error_exit(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'train_cifar.py'), '--data-dir', str(tmp_path / 'nope'),
                          '--save-dir', str(tmp_path / 's')], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'nope' in lines[0], res.stderr


def one_line_error(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_error_unknown_model_lists_close_matches(cifar_dir, tmp_path, capsys):
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path), '--model', 'cifar_resnet20_v11'), capsys)
    one_line_error(rc, err, "unknown model 'cifar_resnet20_v11'", 'cifar_resnet20_v1')


def test_error_rec_without_idx(cifar_dir, tmp_path, capsys):
    d = tmp_path / 'noidx'
    d.mkdir()
    for name in ('train.rec', 'val.rec', 'val.idx'):
        (d / name).write_bytes(Path(cifar_dir, name).read_bytes())
    rc, _, err = run_cli('cifar', cifar_args(str(d), str(tmp_path / 's')), capsys)
    one_line_error(rc, err, 'train.idx')


def test_error_truncated_rec(cifar_dir, tmp_path, capsys):
    d = tmp_path / 'trunc'
    d.mkdir()
    for name in ('train.idx', 'val.rec', 'val.idx'):
        (d / name).write_bytes(Path(cifar_dir, name).read_bytes())
    full = Path(cifar_dir, 'train.rec').read_bytes()
    (d / 'train.rec').write_bytes(full[:len(full) // 2])
    rc, _, err = run_cli('cifar', cifar_args(str(d), str(tmp_path / 's')), capsys)
    one_line_error(rc, err, 'train.rec')


def test_error_checkpoint_that_does_not_fit(cifar_dir, tmp_path, capsys):
    import mxnet as mx
    from gluon_transfer import get_model
    net = get_model('cifar_resnet20_v1', classes=7)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    f = str(tmp_path / 'seven.params')
    net.save_parameters(f)
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path / 's'), '--params', f), capsys)
    one_line_error(rc, err, 'seven.params', "'output.weight'", '(4, 64)', '(7, 64)')


def test_error_float16_on_cpu_and_bad_ctx(cifar_dir, tmp_path, capsys):
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path / 's'), '--dtype', 'float16'), capsys)
    one_line_error(rc, err, 'float16 needs GPUs')
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path / 's'), '--ctx', 'tpu:0'), capsys)
    one_line_error(rc, err, "bad --ctx entry 'tpu:0'")
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path / 's'), '--gpus', '0'), capsys)
    one_line_error(rc, err, 'GPU')


def test_error_resume_from_empty_dir(cifar_dir, tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path / 's'), '--resume', str(empty)), capsys)
    one_line_error(rc, err, 'checkpoint.json')


@pytest.mark.slow
def test_error_diverging_loss_names_iteration(cifar_dir, tmp_path, capsys):
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path / 's'), '--lr', '1e30', '--lr-mode', 'constant',
                                             '--num-epochs', '1'), capsys)
    one_line_error(rc, err, 'loss became', 'iteration', 'no checkpoint had been written yet')


@pytest.mark.slow
def test_bfloat16_amp_runs(cifar_dir, tmp_path):
    """bfloat16 AMP patches MXNet globally (amp.init), so it runs in its own process."""
    cmd = [sys.executable, os.path.join(ROOT, 'train_cifar.py')] + cifar_args(
        cifar_dir, str(tmp_path / 'bf'), '--dtype', 'bfloat16', '--num-epochs', '1', '--mode', 'hybrid')
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'bfloat16' in res.stdout and '[Epoch 1/1]' in res.stdout


def test_demo_defaults_apply_only_where_not_given(tmp_path):
    parser = cli.build_parser('cifar', 'x')
    args = cli.parse_args(parser, ['--demo', '--num-epochs', '1', '--save-dir', str(tmp_path)])
    assert args.num_epochs == 1 and args.save_dir == str(tmp_path)
    assert args.data_dir.endswith(os.path.join('data', 'cifar10_sample')) and args.lr_mode == 'cosine'
    assert os.path.isfile(os.path.join(args.data_dir, 'train.rec'))


@pytest.mark.slow
def test_train_cifar_aff_model_with_open_aff_flags(cifar_dir, tmp_path, capsys):
    """open-aff's command line: --model resnet --askc-type ASKCFuse --blocks --channel-times --start-layer."""
    save = str(tmp_path / 'aff')
    argv = cifar_args(cifar_dir, save, '--model', 'resnet', '--askc-type', 'ASKCFuse', '--blocks', '1',
                      '--channel-times', '1', '--start-layer', '2', '--num-epochs', '1')
    rc, out, err = run_cli('cifar', argv, capsys)
    assert rc == 0, err
    assert 'model cifar_aff_resnet' in out
    assert 'float32, hybrid mode' in out  # --mode auto hybridizes the AFF networks
    import mxnet as mx
    keys = set(mx.nd.load(os.path.join(save, 'cifar10-cifar_aff_resnet-0001.params')))
    # start layer 2: stage 1 adds plainly, stages 2-3 carry AFF attention weights.
    assert not any(k.startswith('features.2.') and 'attention' in k for k in keys)
    assert 'features.3.0.attention.local_att.0.weight' in keys


def test_model_option_errors(cifar_dir, tmp_path, capsys):
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path), '--model', 'cifar_aff_resnet', '--fusion',
                                             'aft', '--blocks', '1', '--channel-times', '1'), capsys)
    one_line_error(rc, err, "unknown fusion 'aft'", 'aff')
    rc, _, err = run_cli('cifar', cifar_args(cifar_dir, str(tmp_path), '--fusion', 'aff'), capsys)
    one_line_error(rc, err, 'cifar_resnet20_v1', 'fusion')


@pytest.mark.slow
def test_train_imagenet_iaff_resnet50_open_aff_flags(imagenet_dir, tmp_path, capsys):
    save = str(tmp_path / 'iaff')
    argv = ['--rec-train', os.path.join(imagenet_dir, 'train.rec'), '--rec-val', os.path.join(imagenet_dir, 'val.rec'),
            '--use-rec', '--model', 'resnet', '--askc-type', 'ResGlobLocaforGlobLocaCha', '--start-layer', '3',
            '--num-layer', '50', '--last-gamma', '--input-size', '32', '--batch-size', '4', '--num-epochs', '1',
            '--max-iter', '2', '--save-dir', save, '--log-interval', '1', '-j', '1', '--warmup-epochs', '0']
    rc, out, err = run_cli('imagenet', argv, capsys)
    assert rc == 0, err
    assert 'model aff_resnet' in out
    import mxnet as mx
    keys = set(mx.nd.load(os.path.join(save, 'imagenet-aff_resnet-0001.params')))
    assert 'layer3.0.attention.global_att2.1.weight' in keys and not any(
        k.startswith('layer2.') and 'attention' in k for k in keys)


# ---------------------------------------------------------------- run folders, argument checks, summary
def quick_args(data_dir, *extra):
    """One epoch of 6 iterations (48 images, batch 8), no --save-dir."""
    return ['--data-dir', data_dir, '--model', 'cifar_resnet20_v1', '--batch-size', '8', '--num-epochs', '1',
            '--lr', '0.05', '--log-interval', '0', '-j', '1', '--seed', '3'] + list(extra)


def run_folder(out):
    """The folder a run reported ('run folder: DIR (...)')."""
    line = next(ln for ln in out.splitlines() if ' run folder: ' in ln)
    return line.split(' run folder: ', 1)[1].split(' (')[0]


def snapshot(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(root, f), 'rb') as fh:
                out[os.path.relpath(os.path.join(root, f), d)] = fh.read()
    return out


def test_each_run_gets_a_new_folder_and_latest_follows(cifar_dir, tmp_path, monkeypatch, capsys):
    """Without --save-dir: runs/demo/<model>-<date>[-n] per run (`make demo; make demo`), the
    first run's files untouched by the second, runs/demo/latest -> the newest."""
    monkeypatch.chdir(tmp_path)
    rc, out1, err = run_cli('cifar', ['--demo'] + quick_args(cifar_dir, '--max-iter', '2'), capsys)
    assert rc == 0, err
    first = run_folder(out1)
    assert os.path.dirname(first) == os.path.join('runs', 'demo')
    assert os.path.basename(first).startswith('cifar_resnet20_v1-20')
    before = snapshot(first)
    assert {'best.params', 'best.json', 'checkpoint.json', 'metrics.jsonl', 'train.log'} <= set(before)
    assert os.path.realpath('runs/demo/latest') == os.path.realpath(first)
    rc, out2, err = run_cli('cifar', ['--demo'] + quick_args(cifar_dir, '--max-iter', '2'), capsys)
    assert rc == 0, err
    second = run_folder(out2)
    assert second != first and os.path.dirname(second) == os.path.join('runs', 'demo')
    assert snapshot(first) == before                            # nothing deleted, appended or overwritten
    assert sorted(os.listdir('runs/demo')) == sorted([os.path.basename(first), os.path.basename(second), 'latest'])
    assert os.path.realpath('runs/demo/latest') == os.path.realpath(second)
    assert 'run folder: %s' % second in out2 and os.path.isfile(os.path.join('runs/demo/latest', 'best.params'))


def test_save_dir_holding_a_run_is_refused(cifar_dir, tmp_path, capsys):
    for name in ('checkpoint.json', 'metrics.jsonl', 'old-0003.params'):
        d = tmp_path / name.replace('.', '_')
        d.mkdir()
        (d / name).write_text('precious')
        rc, _, err = run_cli('cifar', quick_args(cifar_dir, '--save-dir', str(d)), capsys)
        one_line_error(rc, err, '--save-dir %s already holds a run (%s)' % (d, name), '--resume %s' % d,
                       'another --save-dir')
        assert os.listdir(d) == [name] and (d / name).read_text() == 'precious'


def test_resume_continues_in_the_resumed_folder(cifar_dir, tmp_path, monkeypatch, capsys):
    """--resume runs/cifar/latest without --save-dir: the same (real) folder, no new one, one
    metrics line per epoch; another --num-epochs is refused naming both values."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli('cifar', quick_args(cifar_dir, '--num-epochs', '2', '--max-iter', '6'), capsys)
    assert rc == 0, err
    first = run_folder(out)
    rc, _, err = run_cli('cifar', quick_args(cifar_dir, '--num-epochs', '3', '--resume', 'runs/cifar/latest'), capsys)
    one_line_error(rc, err, '--num-epochs 2 (checkpoint) vs 3 (now)', '--allow-schedule-change')
    rc, out, err = run_cli('cifar', quick_args(cifar_dir, '--num-epochs', '2', '--resume', 'runs/cifar/latest'), capsys)
    assert rc == 0, err
    assert run_folder(out) == first and 'resumed from' in out
    assert sorted(os.listdir('runs/cifar')) == sorted([os.path.basename(first), 'latest'])
    assert [r['epoch'] for r in metrics(first)] == [1, 2]
    resumed = cli.parse_args(cli.build_parser('cifar', 't'), ['--resume', 'runs/cifar/latest'])
    cli.plan_run_dir(resumed, 'cifar')
    assert resumed.save_dir == first          # the link resolved: a later run re-pointing it cannot redirect this one


@pytest.mark.parametrize('extra, msg', [
    (['--batch-size', '0'], '--batch-size must be >= 1'),
    (['--batch-size', '-4'], '--batch-size must be >= 1'),
    (['--num-epochs', '0'], '--num-epochs must be >= 1, got 0'),
    (['--num-epochs', '-1', '--warmup-epochs', '1'], '--num-epochs must be >= 1, got -1'),
    (['--max-iter', '-3'], '--max-iter must be >= 0'),
    (['--lr', '-1'], '--lr must be a number > 0'),
    (['--lr', '0'], '--lr must be a number > 0'),
    (['-j', '-1'], '-j/--num-data-workers must be >= 0'),
    (['--data-dir', 'nowhere'], 'data dir not found'),
    (['--ctx', 'tpu:0'], "bad --ctx entry 'tpu:0'"),
    (['--resume', 'nowhere'], 'nowhere'),
])
def test_bad_arguments_are_refused_and_create_nothing(cifar_dir, tmp_path, monkeypatch, capsys, extra, msg):
    monkeypatch.chdir(tmp_path)
    for save in ([], ['--save-dir', 's']):
        rc, _, err = run_cli('cifar', quick_args(cifar_dir, *extra) + save, capsys)
        one_line_error(rc, err, msg)
        assert 'warmup' not in err and os.listdir(tmp_path) == []      # no runs/, no s/, no train.log


def test_unknown_option_suggests_the_closest(capsys):
    for preset, argv, hint in (('cifar', ['--epochs', '3'], '--epochs (did you mean --num-epochs?)'),
                               ('cifar', ['--lr-decay-epochs=3'], '--lr-decay-epochs (did you mean --lr-decay-epoch?)'),
                               ('transfer', ['--lamda-afd', '1'], '--lamda-afd (did you mean --lambda-afd?)')):
        with pytest.raises(SystemExit) as e:
            cli.main(preset, 't', argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and err.startswith('error: unknown option ' + hint), err
    with pytest.raises(SystemExit):
        cli.main('cifar', 't', ['--zzzzzz'])
    err = capsys.readouterr().err
    assert err == 'error: unknown option --zzzzzz; see --help\n'


def test_list_models(capsys):
    assert cli.main('cifar', 't', ['--list-models', 'cifar_aff*']) == 0
    names = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.startswith('  ')]
    assert {'cifar_aff_resnet32', 'cifar_aff_resnext38_32x4d'} <= set(names)
    assert all(n.startswith('cifar_aff') for n in names)
    assert cli.main('transfer', 't', ['--list-models', 'RESNET20']) == 0          # substring, any case
    out = capsys.readouterr().out
    assert 'GluonCV models' in out and '  cifar_resnet20_v1\n' in out and 'resnet50_v1b' not in out
    assert cli.main('imagenet', 't', ['--list-models']) == 0
    out = capsys.readouterr().out
    assert 'aff_resnet50' in out and 'resnet50_v1b' in out
    rc, _, err = run_cli('cifar', ['--list-models', 'no_such_net'], capsys)
    one_line_error(rc, err, "no model name matches 'no_such_net'")


def test_data_without_val_split_warns_and_reports_no_best(cifar_dir, tmp_path, capsys):
    d = tmp_path / 'noval'
    d.mkdir()
    for name in ('train.rec', 'train.idx'):
        (d / name).write_bytes(Path(cifar_dir, name).read_bytes())
    rc, out, err = run_cli('cifar', quick_args(str(d), '--save-dir', str(tmp_path / 's'), '--max-iter', '2'), capsys)
    assert rc == 0, err
    assert 'WARNING: no validation split' in out.split('run folder:')[0]       # said at the start
    assert 'no validation split: no epoch was ranked, no best.params' in out
    assert '-1.0000' not in out and 'best val top-1' not in out and 'best -1' not in out
    assert 'best.params' not in os.listdir(tmp_path / 's')


def test_max_iter_stop_is_reported_truthfully(cifar_dir, tmp_path, capsys):
    rc, out, err = run_cli('cifar', quick_args(cifar_dir, '--num-epochs', '2', '--max-iter', '3', '--save-dir',
                                               str(tmp_path / 's')), capsys)
    assert rc == 0, err
    assert '[Epoch 1/2] (partial: 3 of 6 iterations, --max-iter reached)' in out
    assert 'reached --max-iter 3: 3 iterations done (0 of 2 epochs complete, 3 of 6 iterations of epoch 1)' in out
    assert 'done: 1 epochs' not in out


def test_summary_commands_run_as_printed(cifar_dir, tmp_path, monkeypatch, capsys):
    """The end-of-run summary names best.params and its epoch, and its evaluate/export
    commands run as printed: evaluate reproduces best.json's val top-1."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli('cifar', quick_args(cifar_dir, '--num-epochs', '2'), capsys)
    assert rc == 0, err
    folder = run_folder(out)
    with open(os.path.join(folder, 'best.json')) as f:
        best = json.load(f)
    summary = out.split('summary\n', 1)[1]
    assert 'best val top-1 %.4f at epoch %d' % (best['val_top1'], best['epoch']) in summary
    assert 'best:   %s' % os.path.join(folder, 'best.params') in summary
    assert 'latest: %s' % os.path.join(folder, 'cifar10-cifar_resnet20_v1-0002.params') in summary
    commands = {ln.split(':', 1)[0].strip(): ln.split(':', 1)[1] for ln in summary.splitlines()
                if ln.strip().startswith(('evaluate:', 'export:'))}
    import shlex
    ev = shlex.split(commands['evaluate'])
    assert ev[0] == sys.executable and ev[1] == os.path.join(ROOT, 'tools', 'evaluate.py')
    assert load_tool('evaluate').main(ev[2:]) == 0
    assert 'top-1 %.4f ' % best['val_top1'] in capsys.readouterr().out
    ex = shlex.split(commands['export'])
    assert ex[1] == os.path.join(ROOT, 'tools', 'export.py')
    assert load_tool('export').main(ex[2:]) == 0
    capsys.readouterr()
    assert os.path.isfile(os.path.join(folder, 'export', 'cifar_resnet20_v1-symbol.json'))


def test_distributed_runs_need_one_explicit_folder(cifar_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli('cifar', quick_args(cifar_dir, '--kvstore', 'dist_sync'), capsys)
    one_line_error(rc, err, '--kvstore dist_sync needs --save-dir DIR')
    assert os.listdir(tmp_path) == []
    planned = []
    for _ in range(2):        # every worker process plans the same folder from the same command
        args = cli.parse_args(cli.build_parser('cifar', 't'), quick_args(cifar_dir, '--kvstore', 'dist_sync',
                                                                         '--save-dir', 'shared'))
        planned.append(cli.plan_run_dir(args, 'cifar'))
    assert planned == ['shared', 'shared'] and os.listdir(tmp_path) == []


def test_evaluate_tool_checks_its_arguments(tmp_path, capsys):
    evaluate = load_tool('evaluate')
    for argv, msg in ((['--batch-size', '0'], '--batch-size must be >= 1'),
                      (['--batch-size', '-2'], '--batch-size must be >= 1'),
                      (['-j', '-1'], '-j/--num-data-workers must be >= 0')):
        rc = evaluate.main(['--model', 'cifar_resnet20_v1', '--params', str(tmp_path / 'x.params')] + argv)
        one_line_error(rc, capsys.readouterr().err, msg)
