#!/usr/bin/env python
"""Train a CIFAR-10/100 classifier (any registered or GluonCV CIFAR model).

    python train_cifar.py --demo                       # the bundled sample, ~3 minutes on 2 cores
    python train_cifar.py --data-dir ~/data/cifar10 --model cifar_resnet20_v1 --num-epochs 200
    python train_cifar.py --data-dir ~/data/cifar10 --model wrn16_1 --teacher-model wrn16_2 \
        --teacher-params wrn16_2.params --at-beta 1e3   # attention transfer (add --kd-alpha 0.9 for KD)
"""
import sys

from gluon_transfer.cli import main

if __name__ == '__main__':
    sys.exit(main('cifar', __doc__.strip().splitlines()[0]))
