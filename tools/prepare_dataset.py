#!/usr/bin/env python
"""Pack a fine-grained transfer set from its official layout into RecordIO.

    python tools/prepare_dataset.py NAME SRC_DIR OUT_DIR [--resize 320] [--quality 95] [-j 2]
        [--val-fraction 0.1 | --val-per-class K] [--fraction 0.15 0.3 0.5] [--seed 0]
        [--skip-corrupt] [--no-count-check] [--force]
        [--test-per-class T] [--with-clutter]      (caltech256_30/60)
        [--split K]                                (dtd)

NAME: stanford_dogs, mit_indoor67, caltech256_30, caltech256_60, cub200, food101,
stanford_cars, fgvc_aircraft, dtd. Writes OUT_DIR/train.rec (the official training list
minus the validation split), val.rec (a seeded per-class split of the official training
list, 10 % and at least one image per class by default; DTD: its official val split) and
test.rec (the official test split), each with .idx/.lst, plus classes.txt, train_<pct>.rec
subsets and dataset.json. Train with `--dataset NAME --data-dir OUT_DIR` (best checkpoints
are chosen on val.rec), then evaluate once on the test split with
`tools/evaluate.py --dataset NAME --data-dir OUT_DIR --rec-val OUT_DIR/test.rec ...`.

Checked before packing: the split files list the published numbers of classes and images
(--no-count-check skips this), every listed image exists, and OUT_DIR holds no other set
(--force overwrites). Images that do not decode are all listed and the tool exits with 2,
unless --skip-corrupt (they are then left out and recorded in dataset.json). Stanford Dogs
and Stanford Cars read MATLAB files with scipy (in requirements.txt). Expected trees and
download URLs: the reader docstrings in gluon_transfer/data/transfer_sets.py (nothing is
downloaded).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from gluon_transfer.data.transfer_sets import PREPARERS, DEFAULT_RESIZE, DEFAULT_VAL_FRACTION
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
                   help='train record order, the validation split, --fraction and the Caltech-256 draw')
    v = p.add_mutually_exclusive_group()
    v.add_argument('--val-fraction', '--holdout', dest='val_fraction', type=float, default=None, metavar='F',
                   help='sets without an official val split: val = this fraction of each class of the official '
                        'training list (at least 1 image), train = the rest; %g when neither this nor '
                        '--val-per-class is given' % DEFAULT_VAL_FRACTION)
    v.add_argument('--val-per-class', type=int, default=None, metavar='K',
                   help='instead of --val-fraction: K validation images per class')
    p.add_argument('--fraction', type=float, nargs='+', default=(),
                   help='also write train_<pct> subsets (class-balanced, seeded), e.g. 0.15 0.3 0.5')
    p.add_argument('--test-per-class', type=int, default=None,
                   help='caltech256_*: test = the last T of each class permutation (default: all the rest)')
    p.add_argument('--with-clutter', action='store_true', help='caltech256_*: keep 257.clutter as a class')
    p.add_argument('--split', type=int, default=None, help='dtd: official split 1..10 (default 1)')
    p.add_argument('--skip-corrupt', action='store_true',
                   help='leave out images that do not decode (listed) instead of stopping')
    p.add_argument('--no-count-check', action='store_true',
                   help='pack even when the split files do not list the published numbers of classes/images')
    p.add_argument('--force', action='store_true',
                   help='re-pack even when outputs are up to date, and overwrite another set\'s files in OUT_DIR')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress output')
    args = p.parse_args(argv)

    from gluon_transfer.errors import GluonTransferError
    from gluon_transfer.data.pack import print_progress, CorruptImagesError
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
                              val_fraction=args.val_fraction, val_per_class=args.val_per_class,
                              fractions=args.fraction, force=args.force, check_counts=not args.no_count_check,
                              skip_corrupt=args.skip_corrupt,
                              progress=None if args.quiet else print_progress(), **opts)
    except GluonTransferError as e:
        if isinstance(e, CorruptImagesError):
            for rel, why, split in e.images:
                print('corrupt %s (%s): %s' % (rel, split, why), file=sys.stderr)
        print('error: %s' % e, file=sys.stderr)
        return 2
    for split, rep in list(man['splits'].items()) + list(man['fractions'].items()):
        for rel, why in rep.get('skipped', []):
            print('skipped %s (%s): %s' % (rel, split, why), file=sys.stderr)
        print('%s: %d records (%s)' % (split, rep['records'], rep.get('source', 'fraction %g' % rep.get('fraction', 1))))
    print('%d classes; %s' % (man['num_classes'], os.path.join(args.out_dir, 'dataset.json')))
    print('model selection uses val.rec; evaluate the final model once on the test split: python tools/evaluate.py '
          '--dataset %s --data-dir %s --rec-val %s --model ... --params ...'
          % (args.name, args.out_dir, os.path.join(args.out_dir, 'test.rec')))
    if not args.quiet:
        print(json.dumps({'protocol': man['protocol'], 'seconds': man['seconds']}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
