#!/usr/bin/env python
"""Fine-tune a GluonCV or registered network from source weights (DELTA, L2-SP, AFA, AFDS, feature maps, L2).

    python train_transfer.py --model resnet101_v1b --source-params resnet101_v1b-imagenet.params \\
        --dataset stanford_dogs --data-dir ~/data/dogs --reg delta      # 4500 iterations of batch 64
    python train_transfer.py --model resnet50_v1b --source-pretrained --data-dir DIR --reg l2sp
    python train_transfer.py --model resnet101_v1b --source-params S.params --data-dir DIR --reg afa-ast \\
        --save-dir runs/afa1                                            # AFA stage 1, then stage 2:
    python train_transfer.py --model resnet101_v1b --data-dir DIR --reg afa-act --init-from runs/afa1/best.params
    python train_transfer.py --model resnet50_v1b --source-params S.params --data-dir DIR --reg afd --afs \\
        --macs-budget 0.5                                               # AFDS: phase 1, masks, phase 2
    python train_transfer.py --model resnet50_v1b --data-dir DIR --print-param-groups \\
        --lrs 0.01,0.01,0.001 --num-low-lr-layers 4 --new-layers 2
"""
import sys

from gluon_transfer.finetune import main

if __name__ == '__main__':
    sys.exit(main())
