#!/usr/bin/env python
"""Ship a trained network in params/: copy a run's best parameters and add its manifest entry.

    python tools/publish_params.py RUN_DIR NAME --classes 0,1,2,3,4 \\
        --command "python train_cifar.py ..." [--params FILE] [--val-set DESCRIPTION]

Copies ``RUN_DIR/best.params`` (or ``--params``; a run of an older version has a
GluonCV-named ``<score>-<prefix>-<epoch>-best.params``, taken when it is the only one) to
``params/NAME.params`` and appends to ``params/manifest.json`` (list ``networks``): name,
file, model and kwargs (from the run's checkpoint record), dataset, classes (the CIFAR-10
class indices of the head, in order), SHA-1, size, val top-1 (from the run's
``metrics.jsonl``: the best evaluated epoch), the command that trained it, the CPU and the
date. ``get_model(NAME, pretrained=True)`` then loads it offline after checking the SHA-1.
Refuses an existing ``NAME`` (file or entry): published files are never replaced.
"""
import argparse
import datetime
import glob
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def best_file(run_dir, explicit=None):
    from gluon_transfer.errors import CheckpointError
    if explicit:
        if not os.path.isfile(explicit):
            raise CheckpointError('--params %s not found' % explicit)
        return explicit
    stable = os.path.join(run_dir, 'best.params')
    if os.path.isfile(stable):
        return stable
    found = glob.glob(os.path.join(glob.escape(run_dir), '*-best.params'))
    if len(found) != 1:
        raise CheckpointError('%s has %s best file; pass --params FILE' % (run_dir, 'no' if not found else 'more than one'))
    return found[0]


def run_record(run_dir):
    """(model, model_kwargs, dataset, best val top-1, its epoch) of a run folder."""
    from gluon_transfer.errors import CheckpointError
    from gluon_transfer.engine.checkpoint import resolve_resume
    meta, _ = resolve_resume(run_dir)
    best, epoch = None, None
    path = os.path.join(run_dir, 'metrics.jsonl')
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'val_top1' in rec and (best is None or rec['val_top1'] > best):
                    best, epoch = rec['val_top1'], rec['epoch']
    if best is None:
        raise CheckpointError('%s has no evaluated epoch in metrics.jsonl' % run_dir)
    return meta['model'], meta.get('model_kwargs') or {}, meta.get('dataset'), best, epoch


def publish(run_dir, name, classes, command, params=None, val_set='', manifest=None, out_dir=None):
    from gluon_transfer.engine.checkpoint import atomic_write, atomic_write_json
    from gluon_transfer.errors import ConfigError
    from bench.common import cpu_name
    from gluon_transfer.weights import MANIFEST_PATH, file_sha1
    manifest = manifest or MANIFEST_PATH
    out_dir = out_dir or os.path.dirname(os.path.abspath(manifest))
    with open(manifest) as f:
        doc = json.load(f)
    networks = doc.setdefault('networks', [])
    dst = os.path.join(out_dir, name + '.params')
    if any(e['name'] == name for e in networks) or os.path.exists(dst):
        raise ConfigError('%s is already published (%s); published files are never replaced' % (name, dst))
    src = best_file(run_dir, params)
    model, kwargs, dataset, val_top1, epoch = run_record(run_dir)
    kwargs = dict(kwargs, classes=len(classes))
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    entry = {'name': name, 'file': os.path.relpath(dst, os.path.dirname(os.path.abspath(manifest))).replace(os.sep, '/'),
             'model': model, 'kwargs': kwargs, 'dataset': dataset, 'classes': list(classes),
             'sha1': file_sha1(dst), 'size_bytes': os.path.getsize(dst), 'val_top1': round(float(val_top1), 4),
             'val_epoch': epoch, 'val_set': val_set, 'command': command, 'cpu': cpu_name(),
             'date': datetime.date.today().isoformat()}
    networks.append(entry)
    atomic_write_json(manifest, doc)
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run_dir')
    p.add_argument('name', help='the get_model(NAME, pretrained=True) name, e.g. cifar5_resnet20_v1')
    p.add_argument('--classes', required=True, help='CIFAR-10 class indices of the head, in order, e.g. 0,1,2,3,4')
    p.add_argument('--command', required=True, help='the command that trained the network')
    p.add_argument('--params', default=None, help='the file to publish (default: RUN_DIR/best.params)')
    p.add_argument('--val-set', default='', help='what val_top1 was measured on')
    p.add_argument('--manifest', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from gluon_transfer.errors import GluonTransferError
    try:
        classes = [int(c) for c in a.classes.split(',') if c.strip()]
    except ValueError:
        print('error: --classes must be comma-separated integers, got %r' % a.classes, file=sys.stderr)
        return 2
    try:
        e = publish(a.run_dir, a.name, classes, a.command, a.params, a.val_set, a.manifest)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('published %s: params/%s (%d bytes, sha1 %s), %s %s, val top-1 %.4f (epoch %s)'
          % (e['name'], e['file'], e['size_bytes'], e['sha1'], e['model'], e['kwargs'], e['val_top1'], e['val_epoch']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
