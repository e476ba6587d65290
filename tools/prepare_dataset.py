#!/usr/bin/env python
"""Pack a fine-grained transfer set from its official layout into RecordIO.

    python tools/prepare_dataset.py NAME SRC_DIR OUT_DIR [--resize 320] [--quality 95] [-j 2]
        [--holdout F] [--fraction 0.15 0.3 0.5] [--seed 0]
        [--test-per-class T] [--with-clutter]      (caltech256_30/60)
        [--split K]                                (dtd)

NAME: stanford_dogs, mit_indoor67, caltech256_30, caltech256_60, cub200, food101,
stanford_cars, fgvc_aircraft, dtd. Writes OUT_DIR/{train,val[,test]}.rec/.idx/.lst,
classes.txt, train_<pct>.rec/.idx and dataset.json; train with
`--dataset NAME --data-dir OUT_DIR`. Expected trees and download URLs: the reader
docstrings in gluon_transfer/data/transfer_sets.py (nothing is downloaded).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from gluon_transfer.data.transfer_sets import PREPARERS, DEFAULT_RESIZE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('name', help='dataset: ' + ', '.join(PREPARERS.names()))
    p.add_argument('src_dir', help='folder holding the extracted official archives')
    p.add_argument('out_dir', help='output data dir (train.rec/.idx, val.rec/.idx, ...)')
    p.add_argument('--resize', type=int, default=DEFAULT_RESIZE,
                   help='shorter side in pixels, re-encoded as JPEG (0: keep the original bytes)')
    p.add_argument('--quality', type=int, default=95, help='JPEG quality when resizing')
    p.add_argument('-j', '--workers', type=int, default=2, help='decode/encode processes')
    p.add_argument('--seed', type=int, default=0,
                   help='train record order, --holdout, --fraction and the Caltech-256 draw')
    p.add_argument('--holdout', type=float, default=None,
                   help='train/test sets: val = this class-balanced fraction of train, test = official test '
                        '(default: val = the official test split)')
    p.add_argument('--fraction', type=float, nargs='+', default=(),
                   help='also write train_<pct> subsets (class-balanced, seeded), e.g. 0.15 0.3 0.5')
    p.add_argument('--test-per-class', type=int, default=None,
                   help='caltech256_*: test = the last T of each class permutation (default: all the rest)')
    p.add_argument('--with-clutter', action='store_true', help='caltech256_*: keep 257.clutter as a class')
    p.add_argument('--split', type=int, default=None, help='dtd: official split 1..10 (default 1)')
    p.add_argument('--force', action='store_true', help='re-pack even when outputs are up to date')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress output')
    args = p.parse_args(argv)

    from gluon_transfer.errors import GluonTransferError
    from gluon_transfer.data.pack import print_progress
    from gluon_transfer.data.transfer_sets import prepare_dataset
    opts = {}
    if args.test_per_class is not None:
        opts['test_per_class'] = args.test_per_class
    if args.with_clutter:
        opts['with_clutter'] = True
    if args.split is not None:
        opts['split'] = args.split
    try:
        man = prepare_dataset(args.name, args.src_dir, args.out_dir, resize=args.resize,
                              quality=args.quality, workers=args.workers, seed=args.seed,
                              holdout=args.holdout, fractions=args.fraction, force=args.force,
                              progress=None if args.quiet else print_progress(), **opts)
    except GluonTransferError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    for split, rep in list(man['splits'].items()) + list(man['fractions'].items()):
        for rel, why in rep.get('skipped', []):
            print('skipped %s (%s): %s' % (rel, split, why), file=sys.stderr)
        print('%s: %d records (%s)' % (split, rep['records'], rep.get('source', 'fraction %g' % rep.get('fraction', 1))))
    print('%d classes; %s' % (man['num_classes'], os.path.join(args.out_dir, 'dataset.json')))
    if not args.quiet:
        print(json.dumps({'protocol': man['protocol'], 'seconds': man['seconds']}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
