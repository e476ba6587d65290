#!/usr/bin/env python
"""A small, download-free transfer task cut from a CIFAR-10 RecordIO set.

    .venv/bin/python tools/cifar_transfer_task.py --out runs/cifar_transfer            # pack both splits
    .venv/bin/python tools/cifar_transfer_task.py --out runs/cifar_transfer --train-source --source-epochs 4
    .venv/bin/python tools/cifar_transfer_task.py --src data/cifar10_sample --out runs/ct --source-train-per-class 0 \\
        --target-val-per-class 0 --train-source          # from the bundled sample (2,000 / 1,000 images)

``--src``: a CIFAR-10 RecordIO folder (train/val .rec/.idx, classes.txt); default the cifar10
preset's folder ``~/.mxnet/datasets/cifar10`` (the full 45k/5k split).

Source task: classes 0-4 (airplane, automobile, bird, cat, deer), --source-train-per-class
training records (2000: 10,000 images, so that training the source takes ~5 minutes on 2
cores) and every val record of those classes. Target task: classes 5-9 (dog, frog, horse,
ship, truck) with --target-train-per-class training records (200: 1,000 images) and
--target-val-per-class val records (200: 1,000 images). Labels are renumbered 0-4 in each task;
the JPEG bytes are copied unchanged; record order is the source file's (already shuffled).
Writes OUT/{source,target}/{train,val}.{rec,idx,lst} and classes.txt.

--train-source trains the source network with the engine (the cifar preset: pad-4 crop,
mirror; train_cifar.py's options) and copies its final parameters to OUT/source.params, the
--source-params of train_transfer.py. The default source model is GluonCV's resnet18_v1b
(valid at 32 px; its stage-end taps layerK.1.conv2 exist, unlike the CIFAR ResNets').
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SRC = '~/.mxnet/datasets/cifar10'    # the cifar10 preset's default folder


def subset_split(src_prefix, out_prefix, classes, per_class=None):
    """Copy the records of ``classes`` (labels renumbered by their position) from
    ``src_prefix.rec`` to ``out_prefix.*``, at most ``per_class`` each. Returns the count."""
    import mxnet as mx
    from gluon_transfer.data.recordio import inspect_recordio, read_record, unpack_payload
    from gluon_transfer.data.pack import write_lst
    info = inspect_recordio(src_prefix + '.rec', src_prefix + '.idx')
    remap = {c: i for i, c in enumerate(classes)}
    taken = [0] * len(classes)
    rows = []
    tmp = {e: '%s.%s.part' % (out_prefix, e) for e in ('rec', 'idx', 'lst')}
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    w = mx.recordio.MXIndexedRecordIO(tmp['idx'], tmp['rec'], 'w')
    with open(info.rec, 'rb') as f:
        for key, off, label in zip(info.keys, info.offsets, info.labels):
            c = remap.get(int(label))
            if c is None or (per_class is not None and taken[c] >= per_class):
                continue
            body = unpack_payload(read_record(f, int(off)))[4]
            new = len(rows)
            w.write_idx(new, mx.recordio.pack(mx.recordio.IRHeader(0, float(c), new, 0), body))
            rows.append((new, (float(c),), 'cifar10_%s_%d' % (os.path.basename(src_prefix), int(key))))
            taken[c] += 1
    w.close()
    if per_class is not None and min(taken) < per_class:
        for e in ('rec', 'idx'):
            if os.path.exists(tmp[e]):
                os.remove(tmp[e])
        raise SystemExit('error: %s has fewer than %d records of some class: %s' % (info.rec, per_class, taken))
    write_lst(tmp['lst'], rows)
    for e in ('rec', 'idx', 'lst'):
        os.replace(tmp[e], '%s.%s' % (out_prefix, e))
    return len(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--src', default=DEFAULT_SRC,
                   help='CIFAR-10 RecordIO folder (train/val .rec/.idx, classes.txt; default %(default)s)')
    p.add_argument('--out', default='runs/cifar_transfer')
    p.add_argument('--source-classes', default='0,1,2,3,4')
    p.add_argument('--target-classes', default='5,6,7,8,9')
    p.add_argument('--target-train-per-class', type=int, default=200, help='0: every record of the class')
    p.add_argument('--target-val-per-class', type=int, default=200, help='0: every record of the class')
    p.add_argument('--source-train-per-class', type=int, default=2000, help='0: every record of the class')
    p.add_argument('--train-source', action='store_true', help='also train the source network')
    p.add_argument('--source-model', default='resnet18_v1b')
    p.add_argument('--source-epochs', type=int, default=3)
    p.add_argument('--source-lr', type=float, default=0.05)
    p.add_argument('--source-max-iter', type=int, default=0,
                   help='stop the source training after this many iterations (0: all --source-epochs)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    args.src = os.path.expanduser(args.src)
    from gluon_transfer.errors import GluonTransferError
    from gluon_transfer.data.pack import read_classes
    try:
        names = read_classes(os.path.join(args.src, 'classes.txt'))
        tasks = {'source': [int(c) for c in args.source_classes.split(',')],
                 'target': [int(c) for c in args.target_classes.split(',')]}
        for task, classes in tasks.items():
            d = os.path.join(args.out, task)
            done = all(os.path.isfile(os.path.join(d, s + '.rec')) for s in ('train', 'val'))
            if not done:
                per = args.target_train_per_class if task == 'target' else args.source_train_per_class
                n_train = subset_split(os.path.join(args.src, 'train'), os.path.join(d, 'train'), classes,
                                       per or None)
                n_val = subset_split(os.path.join(args.src, 'val'), os.path.join(d, 'val'), classes,
                                     (args.target_val_per_class or None) if task == 'target' else None)
                with open(os.path.join(d, 'classes.txt'), 'w') as f:
                    f.write(''.join(names[c] + '\n' for c in classes))
                print('%s: %s; %d train, %d val records' % (task, ', '.join(names[c] for c in classes), n_train, n_val))
            else:
                print('%s: already packed in %s' % (task, d))
        if args.train_source:
            from gluon_transfer import cli
            save = os.path.join(args.out, 'source_run')
            argv = ['--model', args.source_model, '--dataset', 'cifar10', '--data-dir', os.path.join(args.out, 'source'),
                    '--num-epochs', str(args.source_epochs), '--lr', str(args.source_lr), '--lr-mode', 'cosine',
                    '--batch-size', '128', '--wd', '5e-4', '--seed', str(args.seed), '--save-dir', save,
                    '--log-interval', '50', '--mode', 'hybrid', '--max-iter', str(args.source_max_iter)]
            status = cli.main('cifar', 'source network', argv)
            if status:
                return status
            from gluon_transfer.engine.checkpoint import resolve_resume
            meta, _ = resolve_resume(save)                  # the last checkpoint of the source run
            final = meta['files']['params']
            shutil.copyfile(os.path.join(save, final), os.path.join(args.out, 'source.params'))
            print('source params: %s (from %s)' % (os.path.join(args.out, 'source.params'), final))
    except GluonTransferError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
