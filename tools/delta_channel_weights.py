#!/usr/bin/env python
"""Compute DELTA's channel importances for a model, its source weights and a prepared dataset.

    python tools/delta_channel_weights.py --model resnet101_v1b --source-params R101.params \\
        --data-dir ~/data/dogs --batch-size 32            # then: train_transfer.py ... --reg delta

Procedure (lixingjian/DELTA channel_eval.py; gluon_transfer.methods.delta.channel_importance):
train only the new classifier for --head-epochs epochs, then zero each filter of the tapped
convolutions in turn over the first --num-batches training batches and record the mean
increase of the cross-entropy. The JSON holds the raw importances (one list per tap);
train_transfer.py --reg delta turns them into softmax(zscore(r)/5) weights.

Where they go: by default into the cache entry of this model, source file and training data
($GLUON_TRANSFER_CACHE/delta/, default ~/.cache/gluon_transfer/delta/; the path is printed),
which train_transfer.py --reg delta reads when --channel-weights is not given; never into the
data folder. --out FILE writes elsewhere (then pass --channel-weights FILE). An existing file
is reused unless --force. Cost: (sum of tapped channels) x --num-batches forward passes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluon_transfer import cli  # noqa: E402
from gluon_transfer.errors import GluonTransferError  # noqa: E402


def main(argv=None):
    parser = cli.build_parser('transfer', 'DELTA channel importances')
    parser.set_defaults(batch_size=32, num_epochs=0)
    g = parser.add_argument_group('channel importance')
    g.add_argument('--head-epochs', type=int, default=10, help='epochs of classifier-only training')
    g.add_argument('--num-batches', type=int, default=4, help='training batches the importances average over')
    g.add_argument('--out', default=None,
                   help='JSON path (default: the cache entry of this model, source and data, which '
                        'train_transfer.py --reg delta reads)')
    g.add_argument('--force', action='store_true', help='recompute even if the JSON exists')
    args = cli.parse_args(parser, argv)
    try:
        from gluon_transfer.losses.delta import load_channel_weights
        from gluon_transfer.methods.base import dataset_preset
        from gluon_transfer.methods.delta import (channel_importance, channel_weights_key, channel_weights_path,
                                                  save_channel_weights)
        args.dataset_name = args.dataset
        args.dataset = dataset_preset(args.dataset)
        if not (args.source_params or args.source_pretrained):
            raise cli.ConfigError('pass --source-params FILE or --source-pretrained')
        kw = cli.model_kwargs(args)
        out = args.out or channel_weights_path(args, kw)
        log = cli.setup_logging(args.save_dir, args.logging_file)
        if os.path.isfile(out) and not args.force:
            raw = load_channel_weights(out)
            log.info('%s exists (%d layers); reusing it (--force recomputes)', out, len(raw))
            return 0
        ctx = cli.resolve_ctx(args)
        args.mode = cli.resolve_mode(args.mode, args.model, ctx)
        taps, raw, procedure = channel_importance(args, ctx, kw, args.head_epochs, args.num_batches, log)
        save_channel_weights(out, raw, taps, args.model, args.dataset_name, procedure,
                             identity=channel_weights_key(args, kw)[1])
        log.info('wrote %s: %s', out, ', '.join('%s (%d)' % (t, len(r)) for t, r in zip(taps, raw)))
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    finally:
        cli.close_logging()
    return 0


if __name__ == '__main__':
    sys.exit(main())
