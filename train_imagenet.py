#!/usr/bin/env python
"""Train an ImageNet classifier from RecordIO (GluonCV / open-aff flags).

    python train_imagenet.py --rec-train train.rec --rec-val val.rec --model resnet50_v1b \\
        --num-gpus 4 --batch-size 128 --lr 0.2 --lr-mode cosine --warmup-epochs 5 --no-wd
    python train_imagenet.py --rec-train train.rec --rec-val val.rec --model resnet18_v1b \
        --teacher resnet34_v1b --teacher-params resnet34_v1b-at.params --beta 1e3
"""
import sys

from gluon_transfer.cli import main

if __name__ == '__main__':
    sys.exit(main('imagenet', __doc__.strip().splitlines()[0]))
