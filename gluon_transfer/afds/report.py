"""AFDS's per-run report: baseline, static and expected MACs and their reductions,
channel counts, accuracy (:func:`afds_report`, :func:`format_afds_report`), the files a
run writes (``afds_report.json``, ``afds_masks.json``: :func:`write_afds_files`) and what
tools read back from a run's records (:func:`recorded_gate_options`,
:func:`recorded_phase`)."""
import json
import os

import numpy as np

from ..engine.checkpoint import atomic_write_json, jsonable
from ..errors import CheckpointError
from .statistics import current_masks

__all__ = ['afds_report', 'format_afds_report', 'write_afds_files', 'recorded_gate_options', 'recorded_phase',
           'GATE_STATS_FILE', 'gate_stats_record', 'write_gate_stats', 'read_gate_stats', 'gate_movement']

GATE_STATS_FILE = 'afds_gate_stats.json'


def afds_report(net, input_shape=(1, 3, 224, 224), evaluation=None, pruned=None):
    """Per-run numbers: ``baseline``, ``static`` (m), ``expected`` (d and s) MACs and their
    reductions, channel counts, and (from ``evaluation``, the engine's ``evaluate`` dict)
    ``top1`` and ``mean_class_acc``; with ``pruned`` (the :func:`gluon_transfer.prune.prune_afs`
    network), ``exported``: its counted MACs."""
    from ..macs import afs_macs, count_macs
    mc = afs_macs(net, input_shape)
    layers = mc['layers']
    rep = dict(baseline=mc['baseline'], static=mc['static'], expected=mc['expected'],
               static_reduction=mc['baseline'] / float(mc['static']),
               expected_reduction=mc['baseline'] / float(mc['expected']),
               channels=int(sum(l['channels'] for l in layers)), alive=int(sum(l['alive'] for l in layers)),
               dynamic=int(sum(l['dynamic'] for l in layers)),
               static_channels=int(sum(l['static_channels'] for l in layers)),
               input_shape=tuple(input_shape), top1=None, mean_class_acc=None, exported=None)
    if evaluation is not None:
        rep['top1'] = float(evaluation['top1'])
        rep['mean_class_acc'] = float(evaluation.get('mean_class_acc', float('nan')))
    if pruned is not None:
        rep['exported'] = count_macs(pruned, input_shape)['total']
    return rep


def format_afds_report(rep):
    """A small text table of :func:`afds_report`."""
    def g(v):
        return '%.4f G' % (v / 1e9)
    rows = [('baseline MACs', g(rep['baseline']), '1.00x'),
            ('static pruning (m)', g(rep['static']), '%.2fx' % rep['static_reduction']),
            ('expected, WTA d + static s folded', g(rep['expected']), '%.2fx' % rep['expected_reduction'])]
    if rep.get('exported') is not None:
        rows.append(('exported pruned network', g(rep['exported']), '%.2fx' % (rep['baseline'] / rep['exported'])))
    rows.append(('gated channels alive / dynamic / static', '%d / %d / %d' % (rep['alive'], rep['dynamic'],
                                                                             rep['static_channels']),
                 'of %d' % rep['channels']))
    if rep.get('top1') is not None:
        rows.append(('top-1 / mean per-class accuracy', '%.4f / %.4f' % (rep['top1'], rep['mean_class_acc']), ''))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = ['%-*s  %*s  %s' % (w0, 'AFDS (input %s)' % 'x'.join(map(str, rep['input_shape'][1:])), w1, '', '')]
    lines += ['%-*s  %*s  %s' % (w0, a, w1, b, c) for a, b, c in rows]
    return '\n'.join(lines)


def write_afds_files(save_dir, rep, net):
    """``SAVE_DIR/afds_report.json`` (``rep``) and ``SAVE_DIR/afds_masks.json`` (the
    selection and every gate's ``m`` and ``s``), each written atomically."""
    atomic_write_json(os.path.join(save_dir, 'afds_report.json'), jsonable(rep))
    masks = {name: {'m': m.astype(int).tolist(), 's': s.astype(int).tolist()}
             for name, (m, s) in current_masks(net).items()}
    atomic_write_json(os.path.join(save_dir, 'afds_masks.json'), {'selection': rep.get('selection'), 'masks': masks})


def _records(params_path):
    """``[(path, record)]``: the checkpoint record beside ``params_path`` (``<stem>.json``,
    its ``afds`` key), then the run's ``afds_report.json`` in the same folder (e.g. for a
    best file); only those that exist. A file that is not JSON is a CheckpointError."""
    folder = os.path.dirname(os.path.abspath(params_path))
    stem = params_path[:-len('.params')] if params_path.endswith('.params') else params_path
    out = []
    for path, pick in ((stem + '.json', lambda d: d.get('afds')),
                       (os.path.join(folder, 'afds_report.json'), lambda d: d)):
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                record = pick(json.load(f)) or {}
        except (OSError, ValueError, AttributeError) as err:
            raise CheckpointError('%s: not a readable JSON record (%s)' % (path, err)) from None
        out.append((path, record))
    return out


def recorded_phase(params_path):
    """``(phase, path)``: the AFDS phase (1 or 2) the checkpoint record beside
    ``params_path`` (``<stem>.json``) gives for that file, or ``(None, None)`` when there is
    no such record (a best file, a file from elsewhere)."""
    stem = params_path[:-len('.params')] if params_path.endswith('.params') else params_path
    for path, record in _records(params_path):
        if path == stem + '.json' and record.get('phase') is not None:
            return int(record['phase']), path
    return None, None


def recorded_gate_options(params_path):
    """The AFS model options a ``train_transfer.py --afs`` run recorded for the weights file
    ``params_path`` (``gate_input_norm``, ``wta_round``: they change the function, not the
    weights), so that a tool rebuilding the network from that file alone
    (``tools/export.py --model afs_...``) builds the same function.

    Looks, in order, at the checkpoint record beside the file (``<stem>.json``, key ``afds``),
    the run's ``afds_report.json`` in the same folder (e.g. for ``best.params``). Returns
    ``({}, None)`` when neither exists, else ``(options, path_read)``."""
    for path, record in _records(params_path):
        found = {k: record[k] for k in RECORDED_GATE_OPTIONS if record.get(k) is not None}
        if found:
            return found, path
    return {}, None


RECORDED_GATE_OPTIONS = ('gate_input_norm', 'wta_round')


# ------------------------------------------------------------------ gate statistics
def gate_stats_record(stats):
    """The JSON form of :func:`~gluon_transfer.afds.collect_gate_statistics` output:
    ``{gate name: {'mean': [...], 'var': [...], 'act': [...], 'count': n}}``."""
    return {name: {k: (np.asarray(v, np.float64).tolist() if k != 'count' else int(v)) for k, v in st.items()}
            for name, st in stats.items()}


def write_gate_stats(path, when, stats, info=None):
    """Add the gate statistics taken at ``when`` (``'start'``: before phase 1, ``'mask_update'``:
    after it) to the JSON file ``path`` (created when missing, written atomically; ``info``: a
    dict of run settings stored beside them). What ``tools/plot_afds_gates.py`` draws."""
    record = read_gate_stats(path) if os.path.isfile(path) else {}
    record[when] = gate_stats_record(stats)
    if info:
        record.setdefault('info', {}).update(jsonable(info))
    atomic_write_json(path, record)
    return record


def read_gate_stats(path):
    """The record :func:`write_gate_stats` wrote (CheckpointError when it is not readable)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError('%s: not a readable AFDS gate statistics file (%s)' % (path, err)) from None
    if not isinstance(record, dict):
        raise CheckpointError('%s: not an AFDS gate statistics file' % path)
    return record


def gate_movement(start, end):
    """How far the gates moved between two statistics (``{name: {'mean': (C,), ...}}``, numpy or
    JSON lists), per layer: ``moved`` = mean over channels of ``|mean_end - mean_start|``,
    ``spread`` = the standard deviation over channels of ``h_mean_end`` (``mean_end`` when
    absent) divided by its average (0 when every channel has the same mean gate value: a
    ranking of ties), ``var`` = the mean
    over channels of ``var_end`` (how much the gate varies across inputs); with ``h_mean`` in
    both, ``h_moved`` = the mean over channels of ``|h_mean_end - h_mean_start|`` (the gate
    value before WTA: free of the WTA's tie-breaking, which can flip a channel's ``mean``
    between 0 and 1 while the gates hardly moved). Returns
    ``{name: {...}}`` and, under ``'median'``, the medians over layers."""
    out = {}
    for name, st in end.items():
        m1 = np.asarray(st['mean'], np.float64)
        h1 = np.asarray(st.get('h_mean', m1), np.float64)
        row = {'spread': float(h1.std() / h1.mean()) if h1.mean() > 0 else 0.0,
               'var': float(np.mean(st['var']))}
        if start is not None and name in start:
            row['moved'] = float(np.abs(m1 - np.asarray(start[name]['mean'], np.float64)).mean())
            if 'h_mean' in st and 'h_mean' in start[name]:
                row['h_moved'] = float(np.abs(np.asarray(st['h_mean'], np.float64)
                                              - np.asarray(start[name]['h_mean'], np.float64)).mean())
        out[name] = row
    keys = set.intersection(*(set(r) for r in out.values())) if out else set()
    out['median'] = {k: float(np.median([r[k] for r in out.values()])) for k in sorted(keys)}
    return out
