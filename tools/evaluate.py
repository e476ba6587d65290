#!/usr/bin/env python
"""Evaluate a model from a params file: top-1, top-5 and mean per-class accuracy.

    .venv/bin/python tools/evaluate.py --model cifar_resnet20_v1 --params runs/demo/latest/best.params \\
        --dataset cifar10 --data-dir data/cifar10_sample
    .venv/bin/python tools/evaluate.py --model aff_resnet50 --params AFF-ResNet-50.params --dataset imagenet \\
        --rec-val ~/imagenet/val.rec --batch-size 50

Any registered or GluonCV model works; model options (``--fusion``, ``--blocks``...) are
the training scripts'. The name of a network shipped in ``params/`` (``params/manifest.json``,
e.g. ``cifar10_aff_resnet20``) builds that network's architecture and head, so
``--model cifar10_aff_resnet20 --params params/cifar10_aff_resnet20.params --data-dir DIR``
needs no model options. The params file is checked key by key (float16 files are cast).
Prints progress and a final summary; ``--json`` also writes the numbers to a file.
"""
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.simplefilter('ignore', DeprecationWarning)

from gluon_transfer import cli  # noqa: E402
from gluon_transfer.errors import GluonTransferError  # noqa: E402


def build_parser():
    p = cli.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', required=True)
    p.add_argument('--params', required=True, help='.params file (save_parameters layout)')
    p.add_argument('--dataset', default='cifar10', help='data preset (cifar10, cifar100, imagenet, ...)')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--rec-val', default=None, help='validation .rec (its .idx beside it)')
    p.add_argument('--input-size', type=int, default=None)
    p.add_argument('--crop-ratio', type=float, default=None)
    p.add_argument('--coarse-labels', action='store_true')
    p.add_argument('--classes', type=int, default=None, help='number of classes of the model (default: the data\'s)')
    p.add_argument('--batch-size', type=int, default=100)
    p.add_argument('-j', '--num-data-workers', dest='num_workers', type=int, default=2)
    p.add_argument('--ctx', default='', help='e.g. cpu:0 or gpu:0,gpu:1')
    p.add_argument('--gpus', default='')
    p.add_argument('--num-gpus', type=int, default=0)
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--log-interval', type=int, default=20, help='batches between progress lines')
    p.add_argument('--json', default=None, help='also write the results to this JSON file')
    cli.add_model_options(p.add_argument_group('model options'))
    return p


def evaluate(args):
    import mxnet as mx
    from gluon_transfer.data import build_data
    from gluon_transfer.engine.precision import setup_precision
    from gluon_transfer.engine.tasks import Classify
    from gluon_transfer.engine.trainer import Engine, FitConfig
    from gluon_transfer.weights import load_params, describe_load, project_network
    from gluon_transfer.zoo import get_model

    ctx = cli.resolve_ctx(args)
    setup_precision(args.dtype, ctx)
    data = build_data(args.dataset, data_dir=args.data_dir, rec_val=args.rec_val, batch_size=args.batch_size,
                      num_workers=args.num_workers, input_size=args.input_size, crop_ratio=args.crop_ratio,
                      coarse_labels=args.coarse_labels, with_train=False)
    kwargs = cli.model_kwargs(args)
    shipped = project_network(args.model)
    classes = args.classes or (shipped['kwargs'].get('classes') if shipped else None) or data.num_classes
    if args.classes or not shipped:
        # a shipped network's head is fixed by its manifest entry (a different --classes is refused)
        kwargs['classes'] = classes
    net = get_model(args.model, **kwargs)
    net.initialize(mx.init.Zero(), ctx=ctx)
    print('%s: %s' % (os.path.basename(args.params), describe_load(load_params(net, args.params, ctx=ctx))))
    if args.dtype == 'float16':
        net.cast('float16')
    net.hybridize(static_alloc=True, static_shape=True)
    log = cli.setup_logging(os.path.dirname(os.path.abspath(args.json)) if args.json else '.', os.devnull)
    engine = Engine(net, Classify(), ctx, FitConfig(dtype=args.dtype), None, num_classes=classes, logger=log)
    t = time.time()
    res = engine.evaluate(data.val, progress=args.log_interval)
    res['images_per_sec'] = res['n'] / max(time.time() - t, 1e-9)
    print('%s on %s (%d images): top-1 %.4f  top-5 %.4f  mean per-class %.4f  loss %.4f  (%.1f img/s)' % (
        args.model, args.dataset, res['n'], res['top1'], res['top5'], res['mean_class_acc'], res['loss'],
        res['images_per_sec']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(res, model=args.model, params=args.params, dataset=args.dataset), f, indent=1)
    return res


def check_args(args):
    from gluon_transfer.errors import ConfigError
    if args.batch_size < 1:
        raise ConfigError('--batch-size must be >= 1, got %r' % args.batch_size)
    if args.num_workers < 0:
        raise ConfigError('-j/--num-data-workers must be >= 0, got %r' % args.num_workers)
    if args.log_interval < 0:
        raise ConfigError('--log-interval must be >= 0 (0: no progress lines), got %r' % args.log_interval)
    return args


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        evaluate(args)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
