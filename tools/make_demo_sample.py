#!/usr/bin/env python
"""Make the class-balanced CIFAR-10 demo sample shipped in data/cifar10_sample/.

    .venv/bin/python tools/make_demo_sample.py [--src ~/.mxnet/datasets/cifar10] [--out data/cifar10_sample]
                                     [--train-per-class 400] [--val-per-class 100]

Takes the first N records of each class (in file order; the source is already shuffled)
from SRC/train.rec and SRC/val.rec, copies each record's encoded JPEG bytes unchanged with
its label (new keys 0..n-1, in source order) and writes OUT/{train,val}.{rec,idx,lst} and
OUT/classes.txt. The source is structure-checked first.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SRC = '~/.mxnet/datasets/cifar10'    # the cifar10 preset's default folder (full RecordIO set)


def sample_split(src_prefix, out_prefix, per_class, num_classes):
    import mxnet as mx
    from gluon_transfer.data.recordio import inspect_recordio, read_record, unpack_payload
    from gluon_transfer.data.pack import write_lst
    info = inspect_recordio(src_prefix + '.rec', src_prefix + '.idx')
    paths = {}
    if os.path.isfile(src_prefix + '.lst'):
        with open(src_prefix + '.lst') as f:
            for ln in f:
                parts = ln.rstrip('\n').split('\t')
                paths[int(parts[0])] = parts[-1]
    taken = [0] * num_classes
    rows = []
    tmp = {e: '%s.%s.part' % (out_prefix, e) for e in ('rec', 'idx', 'lst')}
    w = mx.recordio.MXIndexedRecordIO(tmp['idx'], tmp['rec'], 'w')
    with open(info.rec, 'rb') as f:
        for key, off, label in zip(info.keys, info.offsets, info.labels):
            c = int(label)
            if taken[c] >= per_class:
                continue
            flag, lab, rid, rid2, body = unpack_payload(read_record(f, int(off)))
            new = len(rows)
            w.write_idx(new, mx.recordio.pack(mx.recordio.IRHeader(0, float(c), new, 0), body))
            rows.append((new, (float(c),), paths.get(int(key), 'record_%d' % int(key))))
            taken[c] += 1
            if sum(taken) == per_class * num_classes:
                break
    w.close()
    if min(taken) < per_class:
        raise SystemExit('error: %s has fewer than %d records of some class: %s' % (info.rec, per_class, taken))
    write_lst(tmp['lst'], rows)
    for e in ('rec', 'idx', 'lst'):
        os.replace(tmp[e], '%s.%s' % (out_prefix, e))
    return len(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--src', default=DEFAULT_SRC, help='full CIFAR-10 RecordIO folder (default %(default)s)')
    p.add_argument('--out', default='data/cifar10_sample')
    p.add_argument('--train-per-class', type=int, default=400)
    p.add_argument('--val-per-class', type=int, default=100)
    args = p.parse_args(argv)
    args.src = os.path.expanduser(args.src)
    from gluon_transfer.errors import GluonTransferError
    from gluon_transfer.data.pack import read_classes
    os.makedirs(args.out, exist_ok=True)
    try:
        classes = read_classes(os.path.join(args.src, 'classes.txt'))
        for split, n in (('train', args.train_per_class), ('val', args.val_per_class)):
            got = sample_split(os.path.join(args.src, split), os.path.join(args.out, split), n, len(classes))
            print('%s: %d records' % (split, got))
    except GluonTransferError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    shutil.copyfile(os.path.join(args.src, 'classes.txt'), os.path.join(args.out, 'classes.txt'))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print('wrote %s (%.2f MB)' % (args.out, total / 1e6))
    return 0


if __name__ == '__main__':
    sys.exit(main())
