#!/usr/bin/env python
"""Convert functional-zoo PyTorch weights (attention-transfer's published ResNets) to GluonCV.

    python tools/convert_torch.py resnet-18-at-export.pth resnet18_v2-at.params     # -> resnet18_v2
    python tools/convert_torch.py resnet-34-export.pth resnet34_v1b-fb.params        # -> resnet34_v1b
    python tools/convert_torch.py resnet-18-export.pth r18.params --arch resnet18_v1b

The .pth file is read without PyTorch by a restricted unpickler (tensor data only; a file
that references any other Python object is refused). The result is loaded into the
GluonCV network with strict key/shape checks before it is written, then loadable with
``get_model(ARCH, params=OUT)`` or ``--teacher ARCH --teacher-params OUT``.
Inputs: RGB in [0, 1] normalised with the ImageNet mean/std (as GluonCV).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('src', help='functional-zoo .pth file')
    p.add_argument('dst', help='output GluonCV .params file')
    p.add_argument('--arch', default=None, choices=['resnet18_v2', 'resnet18_v1b', 'resnet34_v1b'],
                   help='target network (default: detected from the keys)')
    args = p.parse_args(argv)
    from gluon_transfer.convert_torch import convert_file
    from gluon_transfer.errors import GluonTransferError
    try:
        arch, n = convert_file(args.src, args.dst, args.arch)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('%s -> %s: %s, %d arrays' % (args.src, args.dst, arch, n))
    return 0


if __name__ == '__main__':
    sys.exit(main())
