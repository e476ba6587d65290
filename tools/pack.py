#!/usr/bin/env python
"""Pack a class-per-folder image tree or a .lst file into PREFIX.rec/.idx/.lst.

    python tools/pack.py ROOT_OR_LST PREFIX [--resize N] [--quality Q] [-j 2]

Corrupt images are skipped and listed. Existing PREFIX.rec/.idx/.lst files or a
classes.txt that another source wrote are never overwritten without --force (re-packing
the same source into its own prefix needs none). See gluon_transfer/data/pack.py for the
layout, the atomic writes and when a re-run reuses complete outputs.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('source', help='image folder (one sub-folder per class) or .lst file')
    p.add_argument('prefix', help='output prefix, e.g. data/mine/train -> train.rec/.idx/.lst')
    p.add_argument('--resize', type=int, default=0,
                   help='scale the shorter side to N and re-encode as JPEG (default: keep bytes)')
    p.add_argument('--quality', type=int, default=95, help='JPEG quality with --resize (default 95)')
    p.add_argument('-j', '--workers', type=int, default=2, help='decode/encode processes (default 2)')
    p.add_argument('--root', default=None, help='image root for a .lst (default: its folder)')
    p.add_argument('--classes', default=None,
                   help='classes.txt fixing the label order (e.g. the train set\'s, for val)')
    p.add_argument('--no-shuffle', action='store_true', help='keep folder order (default: shuffle, seed 0)')
    p.add_argument('--seed', type=int, default=0, help='shuffle seed (default 0)')
    p.add_argument('--force', action='store_true',
                   help='re-pack even if outputs are up to date, and overwrite outputs or a classes.txt '
                        'that another source wrote')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress output')
    args = p.parse_args(argv)

    from gluon_transfer.errors import GluonTransferError
    from gluon_transfer.data.pack import pack, print_progress
    try:
        report = pack(args.source, args.prefix, resize=args.resize, quality=args.quality,
                      workers=args.workers, root=args.root, classes=args.classes,
                      shuffle=not args.no_shuffle, seed=args.seed, force=args.force,
                      progress=None if args.quiet else print_progress())
    except GluonTransferError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    for rel, why in report.skipped:
        print('skipped %s: %s' % (rel, why), file=sys.stderr)
    print(report.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
