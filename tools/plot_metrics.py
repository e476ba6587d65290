#!/usr/bin/env python
"""Plot training curves (loss, top-1, learning rate per epoch) of one or several runs.

    .venv/bin/python tools/plot_metrics.py runs/demo/latest                 # -> runs/demo/latest/metrics.png
    .venv/bin/python tools/plot_metrics.py runs/at_teacher runs/at_student --out at_curves.png

Reads each run folder's ``metrics.jsonl`` (one JSON object per epoch, written by the engine:
``epoch``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_top1``, ``val_top5``, ``lr``...)
and draws three panels side by side: loss (train solid, val dashed), top-1 accuracy in %
(train solid, val dashed) and the learning rate at the end of each epoch. Several runs are
overlaid, one colour per run, labelled by the run folder's name. An epoch that appears twice
(a run resumed from an earlier checkpoint) counts with its last line.

``--out`` defaults to ``metrics.png`` inside the first run folder. Errors (a missing folder,
no or an empty ``metrics.jsonl``, a line that is not a JSON object with an ``epoch``) are one
line, ``error: ...``, exit status 2.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluon_transfer.errors import DataError, GluonTransferError  # noqa: E402

PANELS = (('loss', 'train_loss', 'val_loss', 'loss'),
          ('top-1', 'train_acc', 'val_top1', 'top-1 accuracy (%)'),
          ('learning rate', 'lr', None, 'learning rate'))


def run_label(run_dir):
    """The run folder's name; for a ``latest`` link, the folder it points to."""
    path = os.path.abspath(run_dir.rstrip('/\\') or run_dir)
    name = os.path.basename(path)
    if os.path.islink(path):
        target = os.path.basename(os.path.realpath(path))
        return '%s (%s)' % (os.path.basename(os.path.dirname(path)) + '/' + name, target)
    return name


def read_metrics(run_dir):
    """``[record]`` of ``run_dir/metrics.jsonl``, sorted by epoch, the last line of each epoch
    kept. Raises :class:`DataError` with the file and line for anything unreadable."""
    if not os.path.isdir(run_dir):
        raise DataError('run folder not found: %s' % run_dir)
    path = os.path.join(run_dir, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise DataError('%s has no metrics.jsonl (not a training run folder?)' % run_dir)
    by_epoch = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                raise DataError('%s line %d is not valid JSON (%s)' % (path, n, err)) from None
            if not isinstance(rec, dict) or not isinstance(rec.get('epoch'), (int, float)):
                raise DataError('%s line %d is not an epoch record (a JSON object with "epoch")' % (path, n))
            by_epoch[int(rec['epoch'])] = rec
    if not by_epoch:
        raise DataError('%s is empty (no epoch finished yet?)' % path)
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(records, key, scale=1.0):
    xs, ys = [], []
    for rec in records:
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(rec['epoch'])
            ys.append(float(v) * scale if math.isfinite(v) else float('nan'))
    return xs, ys


def plot_runs(runs, title=None):
    """A matplotlib Figure with the three panels for ``runs``, a list of ``(label, records)``.
    Train curves are solid with circles, val curves dashed with squares, one colour per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.0 * len(PANELS), 3.8), squeeze=False)
    axes = axes[0]
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for k, (label, records) in enumerate(runs):
        colour = colours[k % len(colours)]
        for ax, (name, train_key, val_key, ylabel) in zip(axes, PANELS):
            scale = 100.0 if name == 'top-1' else 1.0
            xs, ys = _series(records, train_key, scale)
            if xs:
                ax.plot(xs, ys, '-o', color=colour, markersize=3,
                        label=('%s train' % label) if val_key else label)
            if val_key:
                xs, ys = _series(records, val_key, scale)
                if xs:
                    ax.plot(xs, ys, '--s', color=colour, markersize=3, label='%s val' % label)
    for ax, (name, _, val_key, ylabel) in zip(axes, PANELS):
        ax.set_title(name + (' (solid: train, dashed: val)' if val_key else ' (end of each epoch)'), fontsize=9)
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or 'training curves: ' + ', '.join(label for label, _ in runs), fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('runs', nargs='+', metavar='RUN_DIR', help='run folders holding metrics.jsonl')
    p.add_argument('--out', default=None, help='PNG to write (default: RUN_DIR/metrics.png of the first run)')
    p.add_argument('--title', default=None, help='figure title (default: the run names)')
    p.add_argument('--dpi', type=int, default=100)
    args = p.parse_args(argv)
    try:
        runs = [(run_label(d), read_metrics(d)) for d in args.runs]
        out = args.out or os.path.join(args.runs[0], 'metrics.png')
        if not out.lower().endswith('.png'):
            raise DataError('--out must name a .png file, got %s' % out)
        fig = plot_runs(runs, args.title)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + '.part'
        fig.savefig(tmp, dpi=args.dpi, format='png')
        os.replace(tmp, out)
        import matplotlib.pyplot as plt
        plt.close(fig)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    except OSError as err:
        print('error: cannot write %s: %s' % (args.out or 'metrics.png', err.strerror or err), file=sys.stderr)
        return 2
    print('wrote %s (%s)' % (out, ', '.join('%s: %d epochs' % (label, len(r)) for label, r in runs)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
