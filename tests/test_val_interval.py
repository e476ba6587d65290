"""--val-interval through the scripts: the flag reaches the engine, bad values are one-line
errors, and AFDS (two phases in one engine) still evaluates and checkpoints the end of
phase 1, where its masks are chosen, whatever the interval. The engine-level behaviour
(which epochs, best among them, exact resume) is in test_engine.py."""
import json

import numpy as np
import pytest

from gluon_transfer import cli
from gluon_transfer.finetune import main

from test_afds_train import _argv, _metas, _run, task_dir  # noqa: F401  (the tiny AFDS task and its fixture)


def test_flag_reaches_the_fit_config_and_is_checked(task_dir, tmp_path, capsys):  # noqa: F811
    for preset in ('cifar', 'imagenet', 'transfer'):
        args = cli.parse_args(cli.build_parser(preset, 'test'), ['--val-interval', '4'])
        assert cli.fit_config(args).val_interval == 4
        assert cli.fit_config(cli.parse_args(cli.build_parser(preset, 'test'), [])).val_interval == 1
    assert main(_argv(task_dir, tmp_path, '--reg', 'l2', '--val-interval', '0')) == 2
    err = capsys.readouterr().err
    assert err == 'error: --val-interval must be >= 1 (epochs between evaluations), got 0\n'


@pytest.mark.slow
def test_afds_evaluates_the_end_of_phase_1(task_dir, tmp_path):  # noqa: F811
    """5 epochs, phase 1 = epochs 1-2, --val-interval 4: evaluated and checkpointed at 2 (end
    of phase 1, before the mask update), 4 and 5; the best comes from phase 2; resuming from
    the epoch-2 checkpoint redoes the mask update and ends at the same network."""
    common = ['--reg', 'afd', '--afs', '--macs-budget', '0.5', '--num-epochs', '5', '--lr-decay-epoch', '4',
              '--save-frequency', '1', '--val-interval', '4']
    full, _ = _run(_argv(task_dir, tmp_path / 'full', *common))
    lines = [json.loads(l) for l in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in lines] == [1, 2, 3, 4, 5]
    assert [l['epoch'] for l in lines if 'val_top1' in l] == [2, 4, 5]
    metas = _metas(tmp_path / 'full')
    assert sorted(metas) == [2, 4, 5]
    assert metas[2]['afds']['phase'] == 1 and metas[4]['afds']['phase'] == 2
    assert json.loads((tmp_path / 'full' / 'best.json').read_text())['epoch'] in (4, 5)
    e2 = tmp_path / 'full' / metas[2]['files']['params']
    resumed, _ = _run(_argv(task_dir, tmp_path / 'r', *common, '--resume', str(e2)[:-len('.params')] + '.json'))
    assert 'AFS masks from' in (tmp_path / 'r' / 'train.log').read_text()
    a, b = full.net._collect_params_with_prefix(), resumed.net._collect_params_with_prefix()
    for k in a:
        np.testing.assert_allclose(a[k].data().asnumpy(), b[k].data().asnumpy(), rtol=1e-5, atol=1e-6, err_msg=k)
