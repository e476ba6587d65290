#!/usr/bin/env python
"""Training-loader throughput with RandAugment (Python pipeline) vs ImageRecordIter (not a test).

    python bench/bench_transfer_data.py [--seconds 8] [--workers 2] [--images 200]

Packs generated ~300 px JPEGs (bench_loader.make_jpegs, stored as is) and measures
training iterators at 224 px, batch 32, built with ``build_data('stanford_dogs', ...)``:
ImageRecordIter (random resized crop + mirror + colour jitter: the preset's default),
the Python pipeline (``pipeline='python'``: random resized crop + flip), the same with
RandAugment ``rand-m9-mstd0.5``, and with random erasing (p 0.5) on top; plus one
``RandAugment`` call on a 224 x 224 image. Prints a Markdown table.

Two numbers per case: images/s with ``--workers`` ImageRecordIter threads or DataLoader
processes (wall clock, so it depends on what else runs on the machine), and CPU time per
image measured in one process (ImageRecordIter with 1 thread, the Python pipeline with
``num_workers=0``), which is what a busy machine pays per image.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

from bench_loader import iter_rate, make_jpegs  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=float, default=8.0, help='time per measurement')
    p.add_argument('--workers', type=int, default=2, help='threads (ImageRecordIter) / processes (Python)')
    p.add_argument('--images', type=int, default=200)
    args = p.parse_args()
    from gluon_transfer.data import build_data, pack, RandAugment

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_jpegs(os.path.join(tmp, 'jpg'), n=args.images)
        for split in ('train', 'val'):
            pack(os.path.join(tmp, 'jpg'), os.path.join(tmp, 'data', split), workers=2)
        data_dir = os.path.join(tmp, 'data')
        cases = [('ImageRecordIter: rand. resized crop, mirror, jitter 0.4', {}),
                 ('Python: rand. resized crop, flip', dict(pipeline='python')),
                 ('Python: + RandAugment rand-m9-mstd0.5', dict(randaugment='rand-m9-mstd0.5')),
                 ('Python: + RandAugment + random erasing 0.5',
                  dict(randaugment='rand-m9-mstd0.5', random_erasing=0.5))]
        for label, kw in cases:
            d = build_data('stanford_dogs', data_dir=data_dir, batch_size=32, num_workers=args.workers,
                           seed=0, **kw)
            rate = iter_rate(d.train, args.seconds)
            _close(d.train)
            python = 'pipeline' in kw or 'randaugment' in kw
            d = build_data('stanford_dogs', data_dir=data_dir, batch_size=32, seed=0,
                           num_workers=0 if python else 1, **kw)
            cpu = cpu_per_image(d.train, args.seconds / 2)
            _close(d.train)
            rows.append((label, args.workers, '%.0f img/s' % rate, '%.1f ms' % cpu))
        import cv2
        cv2.setNumThreads(1)  # as in the pipeline's worker processes
        ra = RandAugment('rand-m9-mstd0.5', fill=(124, 117, 104))
        img = np.random.RandomState(0).randint(0, 256, (224, 224, 3)).astype(np.uint8)
        n, t0, c0 = 0, time.time(), time.process_time()
        while time.process_time() - c0 < 2.0:
            ra(img, np.random.RandomState(n))
            n += 1
        rows.append(('RandAugment rand-m9-mstd0.5 alone, one 224 x 224 image', 1,
                     '%.0f img/s' % (n / (time.time() - t0)),
                     '%.2f ms' % (1000.0 * (time.process_time() - c0) / n)))
    print('| training loader (224 px, batch 32, %d JPEGs of 240-340 px) | threads/procs | images/s '
          '| CPU per image (1 process) |' % args.images)
    print('|---|---|---|---|')
    for r in rows:
        print('| %s | %s | %s | %s |' % r)
    print('load average at the end: %.1f %.1f %.1f' % os.getloadavg())


def _close(it):
    inner = getattr(it, 'inner', it)
    if hasattr(inner, 'close'):
        inner.close()


def cpu_per_image(it, seconds):
    """Process CPU milliseconds per image over whole epochs until ``seconds`` of CPU."""
    n, c0, epoch = 0, time.process_time(), 0
    while True:
        it.set_epoch(epoch)
        for b in it:
            n += b.data.shape[0] - b.pad
            if time.process_time() - c0 > seconds:
                return 1000.0 * (time.process_time() - c0) / n
        epoch += 1


if __name__ == '__main__':
    main()
