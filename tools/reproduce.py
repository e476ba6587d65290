#!/usr/bin/env python
"""Reproduce a paper table from its recipe: rows x seeds of training runs, resumable.

    python tools/reproduce.py --list                          # recipes and their scales
    python tools/reproduce.py afds --dry-run                  # every command, flags checked
    python tools/reproduce.py afds --scale cpu                # run; run again to resume
    python tools/reproduce.py attention_transfer --var cifar10=DIR --rows at,kd
    python tools/reproduce.py afa --report-only               # results.json/.md/.png again

Recipes are recipes/*.json; outputs go to runs/reproduce/<recipe>-<scale> (--out). See
docs/reproduce.md and gluon_transfer/reproduce.py.
"""
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.simplefilter('ignore', DeprecationWarning)

from gluon_transfer.reproduce import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
