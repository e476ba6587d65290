#!/usr/bin/env python
"""Convert PyTorch weights (torchvision, timm, functional-zoo .pth / .safetensors files) to Gluon .params.

    python tools/convert_torch.py resnet50.pth resnet50_v1b-tv.params                  # torchvision ResNet-50
    python tools/convert_torch.py mobilenet_v2.pth mnv2.params --classes 1000           # new head, see --classes
    python tools/convert_torch.py inception_v3.pth inceptionv3-tv.params                # needs 299 px input
    python tools/convert_torch.py inception_v4.safetensors v4.params --imagenet-input   # timm weights
    python tools/convert_torch.py afa_resnet101.pth afa-r101.params                     # {'model': ...}, module.

The architecture is detected from the keys: torchvision ResNet-18/34/50/101/152 ->
resnet*_v1b, torchvision MobileNetV2 -> mobilenetv2_1.0, torchvision Inception-v3 ->
inceptionv3, timm Inception-v4 -> inception_v4 (registered here), functional-zoo ResNets ->
resnet18_v2 / resnet18_v1b / resnet34_v1b. Checkpoint wrappers ({'state_dict': ...},
{'model': ...}) and a DataParallel 'module.' prefix are handled. The report names the
layout and every key renamed, dropped or created; a key that fits nowhere is an error.

The .pth file is read without PyTorch by a restricted unpickler (tensor data only; a file
that references any other Python object is refused). The result is checked against the
Gluon network (keys, shapes, BatchNorm eps) and written atomically; load it with
``get_model(ARCH, params=OUT)`` or ``train_transfer.py --model ARCH --source-params OUT``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected a positive integer, got %r' % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError('expected a positive integer, got %r' % text)
    return value


def main(argv=None):
    from gluon_transfer.convert_torch import ARCHS, convert_file
    from gluon_transfer.errors import GluonTransferError
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                epilog='Details and the end-to-end recipe: docs/weights.md')
    p.add_argument('src', help='PyTorch .pth file (torch.save, zip or legacy layout) or .safetensors file')
    p.add_argument('dst', help='output Gluon .params file')
    p.add_argument('--arch', default=None, choices=ARCHS,
                   help='target network (default: detected from the keys; must agree with the file)')
    head = p.add_mutually_exclusive_group()
    head.add_argument('--classes', type=_positive, default=None, metavar='N',
                      help="replace the source's classifier by a new N-class one (N(0, 0.01^2) weights, seed 0); "
                           "needed for a MobileNetV2 whose classifier has a bias (GluonCV's has none)")
    head.add_argument('--drop-head', action='store_true',
                      help='write the network without a classifier (backbone only)')
    p.add_argument('--no-transform-input', dest='transform_input', action='store_false',
                   help="torchvision Inception-v3 built with transform_input=False (default: fold torchvision's "
                        "input transform, as its ImageNet weights use it)")
    p.add_argument('--imagenet-input', action='store_true',
                   help="timm Inception-v4: fold its (x - 0.5) / 0.5 input normalisation into the first conv so the "
                        "network takes ImageNet mean/std input, as this project's data pipeline feeds")
    p.add_argument('--force', action='store_true', help='replace DST if it exists')
    p.add_argument('-q', '--quiet', action='store_true', help='print only the summary line')
    args = p.parse_args(argv)
    try:
        conv = convert_file(args.src, args.dst, args.arch, classes=args.classes, drop_head=args.drop_head,
                            transform_input=args.transform_input, imagenet_input=args.imagenet_input,
                            overwrite=args.force)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    lines = conv.report()
    print('%s -> %s' % (args.src, args.dst))
    print('\n'.join(lines[:1] if args.quiet else lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
