"""tools/plot_metrics.py: a PNG of loss, top-1 and lr per epoch for one or several runs, read
from each run folder's metrics.jsonl; one-line errors for missing or broken input."""
import json
import os
import struct

import numpy as np
import pytest
from tool_helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tool():
    return load_tool('plot_metrics')


def write_run(folder, rows):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + '\n')
    return folder


def epoch_row(e, train_loss, val_loss, train_acc, val_top1, lr):
    # the keys the engine writes per epoch (and a few more the plot ignores)
    return {'epoch': e, 'train_loss': train_loss, 'val_loss': val_loss, 'train_acc': train_acc,
            'val_top1': val_top1, 'val_top5': 0.9, 'lr': lr, 'terms': {'ce': train_loss}, 'time': 1.0}


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', head[16:24])


def test_two_runs_overlaid_labelled_and_written_into_the_first_run(tmp_path, tool, capsys):
    a = write_run(str(tmp_path / 'runA'), [epoch_row(1, 2.0, 1.8, 0.30, 0.35, 0.1),
                                           epoch_row(2, 1.5, 1.4, 0.45, 0.50, 0.05)])
    b = write_run(str(tmp_path / 'runB'), [epoch_row(1, 2.2, 2.0, 0.25, 0.28, 0.2),
                                           epoch_row(2, 1.9, 1.9, 0.33, 0.31, 0.2),
                                           epoch_row(3, 1.7, float('nan'), 0.40, 0.36, 0.02)])
    runs = [(tool.run_label(a), tool.read_metrics(a)), (tool.run_label(b), tool.read_metrics(b))]
    fig = tool.plot_runs(runs)
    loss, top1, lr = fig.axes
    assert [ax.get_xlabel() for ax in fig.axes] == ['epoch'] * 3
    assert loss.get_ylabel() == 'loss' and top1.get_ylabel() == 'top-1 accuracy (%)'
    assert lr.get_ylabel() == 'learning rate'
    assert all(ax.get_title() for ax in fig.axes) and 'runA' in fig._suptitle.get_text()
    lines = {line.get_label(): line for line in top1.lines}
    assert sorted(lines) == ['runA train', 'runA val', 'runB train', 'runB val']
    np.testing.assert_allclose(lines['runA val'].get_ydata(), [35.0, 50.0])       # fractions drawn in %
    np.testing.assert_allclose(lines['runB train'].get_xdata(), [1, 2, 3])
    assert lines['runA train'].get_color() == lines['runA val'].get_color() != lines['runB val'].get_color()
    assert lines['runA train'].get_linestyle() == '-' and lines['runA val'].get_linestyle() == '--'
    val_b = {line.get_label(): line for line in loss.lines}['runB val'].get_ydata()
    assert val_b[:2].tolist() == [2.0, 1.9] and np.isnan(val_b[2])                # NaN val loss: a gap
    np.testing.assert_allclose({line.get_label(): line for line in lr.lines}['runB'].get_ydata(), [0.2, 0.2, 0.02])
    assert [t.get_text() for t in top1.get_legend().get_texts()] == ['runA train', 'runA val', 'runB train', 'runB val']
    import matplotlib.pyplot as plt
    plt.close(fig)

    assert tool.main([a, b]) == 0
    out = os.path.join(a, 'metrics.png')
    assert 'wrote %s (runA: 2 epochs, runB: 3 epochs)' % out in capsys.readouterr().out
    w, h = png_size(out)
    assert w > 2 * h and 10000 < os.path.getsize(out) < 1000000
    assert not os.path.exists(os.path.join(b, 'metrics.png'))


def test_resumed_epoch_counts_with_its_last_line_and_blank_lines_are_skipped(tmp_path, tool):
    a = write_run(str(tmp_path / 'r'), [epoch_row(1, 2.0, 1.8, 0.3, 0.35, 0.1), epoch_row(2, 1.0, 1.0, 0.5, 0.5, 0.1),
                                        '', epoch_row(2, 1.2, 1.1, 0.4, 0.45, 0.1)])
    recs = tool.read_metrics(a)
    assert [r['epoch'] for r in recs] == [1, 2] and recs[1]['train_loss'] == 1.2


def test_latest_link_is_labelled_with_its_target(tmp_path, tool):
    run = write_run(str(tmp_path / 'demo' / 'cifar_resnet20_v1-20260101-120000'), [epoch_row(1, 2, 2, .1, .1, .1)])
    link = str(tmp_path / 'demo' / 'latest')
    os.symlink(os.path.basename(run), link)
    assert tool.run_label(link) == 'demo/latest (cifar_resnet20_v1-20260101-120000)'
    assert tool.run_label(run + '/') == 'cifar_resnet20_v1-20260101-120000'


@pytest.mark.parametrize('case, message', [
    ('missing', 'run folder not found'),
    ('no_metrics', 'has no metrics.jsonl'),
    ('empty', 'is empty'),
    ('bad_json', 'line 2 is not valid JSON'),
    ('not_epoch', 'line 1 is not an epoch record'),
])
def test_errors_are_one_line(tmp_path, tool, capsys, case, message):
    d = str(tmp_path / 'run')
    if case == 'no_metrics':
        os.makedirs(d)
    elif case == 'empty':
        write_run(d, [])
    elif case == 'bad_json':
        write_run(d, [epoch_row(1, 2, 2, .1, .1, .1), '{"epoch": 2, "train_loss": '])
    elif case == 'not_epoch':
        write_run(d, ['[1, 2]'])
    assert tool.main([d]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(d, 'metrics.png'))


def test_out_must_be_png(tmp_path, tool, capsys):
    a = write_run(str(tmp_path / 'r'), [epoch_row(1, 2, 2, .1, .1, .1)])
    assert tool.main([a, '--out', str(tmp_path / 'x.jpg')]) == 2
    assert '--out must name a .png file' in capsys.readouterr().err
    assert tool.main([a, '--out', str(tmp_path / 'sub' / 'curves.png')]) == 0
    png_size(str(tmp_path / 'sub' / 'curves.png'))
