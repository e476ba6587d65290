#!/usr/bin/env python
"""Data-layer throughput on this machine (not a test).

    python bench/bench_loader.py [--cifar DIR] [--seconds 8] [--skip-index] [--cifar-only]

Measures, and prints as a Markdown table:
* CIFAR preset training iterator (pad-4 crop + mirror + normalise, batch 128) on the full
  CIFAR-10 RecordIO set (``--cifar``; default ``~/.mxnet/datasets/cifar10`` when present,
  else data/cifar10_sample);
* ImageNet preset training (random resized crop, colour jitter, PCA noise) and evaluation
  (resize 256 + centre crop 224) iterators, batch 32, on 200 generated ~300 px JPEGs packed
  with ``pack(..., resize=256)`` (packing time with 1 and 2 processes is reported too);
each with ImageRecordIter ``preprocess_threads`` 1 and 2; the CIFAR training iterator also
from the Python decode pipeline (``pipeline='python'``, 1 and 2 worker processes) with
constant and reflect padding (``pad_mode``: ImageRecordIter cannot reflect, so
``--pad-mode reflect`` trains from that pipeline); plus the cost of the Python-side
checks: ``inspect_recordio`` per million records (synthetic 1M-record file, warm page cache)
and the full decode check of the CIFAR set.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def iter_rate(it, seconds):
    """Images/s over whole epochs (at least one) until ``seconds`` have passed; the first
    epoch's start-up (ImageRecordIter construction) is included, as in training."""
    n, t0, epoch = 0, time.time(), 0
    while True:
        it.set_epoch(epoch)
        for b in it:
            n += b.data.shape[0] - b.pad
            if time.time() - t0 > seconds:
                return n / (time.time() - t0)
        epoch += 1


def make_jpegs(root, n=200, classes=4, seed=0):
    import cv2
    rng = np.random.RandomState(seed)
    for i in range(n):
        h, w = rng.randint(240, 341, size=2)
        # smooth colour fields + noise: JPEG sizes like photos, not like pure noise
        base = cv2.resize(rng.randint(0, 256, size=(6, 6, 3)).astype(np.uint8), (int(w), int(h)),
                          interpolation=cv2.INTER_CUBIC)
        img = np.clip(base.astype(np.int16) + rng.randint(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
        d = os.path.join(root, 'c%d' % (i % classes))
        os.makedirs(d, exist_ok=True)
        cv2.imwrite(os.path.join(d, '%04d.jpg' % i), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def synthetic_rec(prefix, n):
    """A structurally valid .rec/.idx with ``n`` records of 4-byte payloads, written with numpy."""
    magic = 0xced7230a
    rec = np.zeros((n, 9), dtype='<u4')  # magic, lrec, IRHeader(flag, label, id lo, hi, id2 lo, hi), body
    rec[:, 0] = magic
    rec[:, 1] = 28
    rec[:, 3] = np.arange(n, dtype=np.float32).view('<u4') % 7
    rec.tofile(prefix + '.rec')
    offs = np.arange(n, dtype=np.int64) * 36
    with open(prefix + '.idx', 'w') as f:
        f.write(''.join('%d\t%d\n' % (i, o) for i, o in enumerate(offs.tolist())))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cifar', default=None, help='CIFAR-10 RecordIO dir')
    p.add_argument('--seconds', type=float, default=8.0, help='time per measurement')
    p.add_argument('--skip-index', action='store_true')
    p.add_argument('--cifar-only', action='store_true', help='only the CIFAR rows')
    p.add_argument('--no-train', action='store_true', help='skip the training images/s of each preset')
    p.add_argument('--imagenet-train-batch', type=int, default=16,
                   help='batch of the resnet50_v1b training step compared with the imagenet loader')
    from bench.common import add_json_arg
    add_json_arg(p)
    args = p.parse_args()
    best = {}    # preset -> best loader img/s over threads/procs (for the suite rows)
    from gluon_transfer.data import build_data, pack
    from gluon_transfer.data.recordio import inspect_recordio, verify_decode

    rows = []
    cifar = args.cifar
    if cifar is None:
        from bench.common import cifar10_dir
        cifar = cifar10_dir('train.rec')
    cifar = os.path.normpath(cifar)
    t = time.time()
    data = build_data('cifar10', data_dir=cifar, batch_size=128, verify=False)
    t_inspect = time.time() - t
    t = time.time()
    verify_decode(data.train.info)
    t_decode = time.time() - t
    for threads in (1, 2):
        data = build_data('cifar10', data_dir=cifar, batch_size=128, num_workers=threads, verify=False)
        rate = iter_rate(data.train, args.seconds)
        best['cifar'] = max(best.get('cifar', 0), rate)
        rows.append(('cifar10 train (pad-4 crop, mirror), batch 128, %d records' % data.num_train,
                     threads, '%.0f img/s' % rate))
    for procs in (1, 2):
        for mode in ('constant', 'reflect'):
            data = build_data('cifar10', data_dir=cifar, batch_size=128, num_workers=procs, verify=False,
                              pipeline='python', pad_mode=mode)
            rows.append(('cifar10 train, Python decode pipeline, %s pad-4 crop, mirror, batch 128' % mode,
                         procs, '%.0f img/s' % iter_rate(data.train, args.seconds)))
            data.train.close()
    rows.append(('cifar10 train: inspect_recordio + labels (%d records)' % data.num_train, '-',
                 '%.3f s' % t_inspect))
    rows.append(('cifar10 train: full decode check (verify=True)', '-', '%.2f s' % t_decode))
    if args.cifar_only:
        return _finish(rows, best, args)

    with tempfile.TemporaryDirectory() as tmp:
        make_jpegs(os.path.join(tmp, 'imgs'))
        for j in (1, 2):
            rep = pack(os.path.join(tmp, 'imgs'), os.path.join(tmp, 'rec', 'train'), resize=256,
                       quality=90, workers=j, force=True)
            rows.append(('pack 200 JPEGs ~300 px, resize 256, q90', j,
                         '%.0f img/s (%.2f s)' % (rep.written / rep.seconds, rep.seconds)))
        os.symlink(os.path.join(tmp, 'rec', 'train.rec'), os.path.join(tmp, 'rec', 'val.rec'))
        os.symlink(os.path.join(tmp, 'rec', 'train.idx'), os.path.join(tmp, 'rec', 'val.idx'))
        for threads in (1, 2):
            data = build_data('imagenet', data_dir=os.path.join(tmp, 'rec'), batch_size=32,
                              num_workers=threads)
            rate = iter_rate(data.train, args.seconds)
            best['imagenet'] = max(best.get('imagenet', 0), rate)
            rows.append(('imagenet train (rand. resized crop 224, jitter, PCA), batch 32', threads,
                         '%.0f img/s' % rate))
            rows.append(('imagenet val (resize 256, centre crop 224), batch 32', threads,
                         '%.0f img/s' % iter_rate(data.val, args.seconds)))

        if not args.skip_index:
            n = 1000000
            synthetic_rec(os.path.join(tmp, 'big'), n)
            inspect_recordio(os.path.join(tmp, 'big.rec'))  # warm the page cache
            t = time.time()
            info = inspect_recordio(os.path.join(tmp, 'big.rec'))
            dt = time.time() - t
            assert info.num_records == n
            rows.append(('inspect_recordio, 1M records (idx parse + header checks + labels)', '-',
                         '%.2f s per million records' % dt))

    _finish(rows, best, args)


# preset -> (model trained by default, batch, input size, classes)
TRAIN_MODELS = {'cifar': ('cifar_resnet20_v1', 128, 32, 10), 'imagenet': ('resnet50_v1b', 16, 224, 1000)}


def _finish(rows, best, args):
    """Training images/s of each preset's default model (hybridized, fp32, random data)
    beside the best loader rate: loader / training > 1 means the loader keeps up."""
    from bench.common import median_rate, row, train_step_fn, write_rows
    out = []
    for preset, rate in best.items():
        out.append(row('loader', '%s loader' % preset, rate, 'img/s', 'best of 1-2 threads, training augmentation'))
        if args.no_train:
            continue
        import mxnet as mx
        from gluon_transfer import get_model
        model, batch, size, classes = TRAIN_MODELS[preset]
        if preset == 'imagenet':
            batch = args.imagenet_train_batch
        net = get_model(model, classes=classes)
        net.initialize(mx.init.Xavier())
        net.hybridize(static_alloc=True, static_shape=True)
        train = median_rate(train_step_fn(net, batch, size, classes), batch, 3, warmup=1)
        rows.append(('%s training step of %s, batch %d (hybrid, fp32)' % (preset, model, batch), '-', '%.1f img/s' % train))
        out += [row('loader', '%s training (%s)' % (preset, model), train, 'img/s', 'batch %d, hybrid fp32' % batch),
                row('loader', '%s loader / training' % preset, rate / train, 'x', '> 1: the loader keeps up')]
    _print(rows)
    write_rows(args.json, out)


def _print(rows):
    print('| measurement | threads/procs | result |')
    print('|---|---|---|')
    for r in rows:
        print('| %s | %s | %s |' % r)


if __name__ == '__main__':
    main()
