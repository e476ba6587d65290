#!/usr/bin/env python
"""Train a CIFAR-10/100 classifier (any registered or GluonCV CIFAR model).

    python train_cifar.py --demo                       # the bundled sample, ~3 minutes on 2 cores
    python train_cifar.py --data-dir ~/data/cifar10 --model cifar_resnet20_v1 --num-epochs 200
"""
import sys

from gluon_transfer.cli import main

if __name__ == '__main__':
    sys.exit(main('cifar', __doc__.strip().splitlines()[0]))
