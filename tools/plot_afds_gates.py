#!/usr/bin/env python
"""Plot the AFS gate statistics of ``train_transfer.py --afs`` runs, per gated layer.

    python tools/plot_afds_gates.py RUN_A RUN_B --label "before" --label "after" --out gates.png

Each RUN is a run folder (its ``afds_gate_stats.json``) or that file itself. One row per
run; in each row one pair of box plots per gated layer (network order, name under the axis):
grey = the per-channel mean gate value before phase 1, colour = at the mask update, both on
the held-out training split. ``--stat`` picks the statistic: ``h`` (default) the gate value
before winner-take-all, ``relu(W GAP(x) + b)``, what the gates learned; ``pi`` the value
after WTA, what the selection ranks (a channel WTA drops on every sample has 0). A row whose
two boxes coincide and have no height is a layer whose gates did not learn. The row title
gives the medians over layers of how far the channel means moved and of their spread
(std / mean over channels; :func:`gluon_transfer.afds.report.gate_movement`). Errors are
one line (``error: ...``, exit status 2).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STATS = {'h': ('h_mean', 'mean gate value before WTA, h = relu(W GAP(x) + b)'),
         'pi': ('mean', 'mean gate value after WTA, pi (what the selection ranks)')}


def load(path):
    from gluon_transfer.afds.report import GATE_STATS_FILE, read_gate_stats
    from gluon_transfer.errors import CheckpointError
    if os.path.isdir(path):
        path = os.path.join(path, GATE_STATS_FILE)
    if not os.path.isfile(path):
        raise CheckpointError('%s: no AFDS gate statistics (written by train_transfer.py --afs at the mask update)'
                              % path)
    record = read_gate_stats(path)
    if 'mask_update' not in record:
        raise CheckpointError('%s: the run has not reached its mask update yet' % path)
    return record


def short(name):
    """``features.3.1.gate2`` -> ``3.1.g2``; ``layer2.0.gate1`` -> ``2.0.g1``."""
    parts = name.replace('features.', '').replace('layer', '').split('.')
    return '.'.join(parts[:-1] + ['g' + parts[-1][4:]])


def plot(records, labels, out, stat='h', dpi=72):
    import numpy as np
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gluon_transfer.afds.report import gate_movement
    key, ylabel = STATS[stat]
    names = list(records[0]['mask_update'])
    fig, axes = plt.subplots(len(records), 1, figsize=(max(8, 0.45 * len(names) + 2), 1.0 + 3.0 * len(records)),
                             squeeze=False)
    for ax, record, label in zip(axes[:, 0], records, labels):
        end, start = record['mask_update'], record.get('start')
        if list(end) != names:
            raise ValueError('runs have different gated layers; plot one network at a time')
        pos = np.arange(len(names))
        if start is not None:
            b0 = ax.boxplot([np.asarray(start[n].get(key, start[n]['mean'])) for n in names], positions=pos - 0.2,
                            widths=0.35, patch_artist=True, showfliers=True, flierprops=dict(markersize=2))
            for box in b0['boxes']:
                box.set(facecolor='0.85', edgecolor='0.5')
        b1 = ax.boxplot([np.asarray(end[n].get(key, end[n]['mean'])) for n in names], positions=pos + 0.2,
                        widths=0.35, patch_artist=True, showfliers=True, flierprops=dict(markersize=2))
        for box in b1['boxes']:
            box.set(facecolor='tab:blue', alpha=0.7)
        moved = gate_movement(start, end)['median']
        info = record.get('info', {})
        ax.set_title('%s\nmedian over layers: |moved| %s, spread %.3g  (%s)' % (
            label, '%.3g' % moved.get('h_moved' if stat == 'h' else 'moved', float('nan')), moved['spread'],
            ', '.join('%s %s' % (k, info[k]) for k in ('gate_init', 'gate_lr_mult', 'gate_norm', 'phase1_density',
                                                       'lr') if k in info)), fontsize=8)
        ax.set_xticks(pos)
        ax.set_xticklabels([short(n) for n in names], rotation=90, fontsize=6)
        ax.set_ylabel(stat, fontsize=8)
        ax.tick_params(axis='y', labelsize=7)
        ax.grid(axis='y', alpha=0.3)
    fig.suptitle('AFS gates per layer on the held-out training split: %s\ngrey = before phase 1, blue = at the '
                 'mask update (per-channel means)' % ylabel, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.0 + 3.0 * len(records))))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', help='run folders (or their afds_gate_stats.json)')
    p.add_argument('--label', action='append', default=None, help='row title, once per run (default: the folder names)')
    p.add_argument('--stat', default='h', choices=sorted(STATS), help='h: before WTA (default); pi: after WTA')
    p.add_argument('--out', required=True, help='PNG to write')
    p.add_argument('--dpi', type=int, default=72)
    args = p.parse_args(argv)
    from gluon_transfer.errors import GluonTransferError
    try:
        labels = args.label or [os.path.basename(os.path.normpath(r)) for r in args.runs]
        if len(labels) != len(args.runs):
            raise ValueError('%d labels for %d runs' % (len(labels), len(args.runs)))
        records = [load(r) for r in args.runs]
        print('wrote %s' % plot(records, labels, args.out, args.stat, args.dpi))
    except (GluonTransferError, ValueError) as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
