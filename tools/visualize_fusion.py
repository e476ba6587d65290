#!/usr/bin/env python
"""Save a PNG of AFF/iAFF attention weights (mean over channels) for a few images.

    python tools/visualize_fusion.py --model cifar_aff_resnet32 --params best.params \
        --rec data/cifar10/val.rec --num-images 4 --out fusion.png

Each row is one image: the input, then for every chosen fusion block its MS-CAM weight map
``mean_c w[c, h, w]`` (AFF: w = M(x + y); iAFF: w1 and w2). ``w`` near 1 favours the residual
branch x, near 0 the shortcut y. Images come from a RecordIO file (gluon_transfer.data.images)
or, without --rec, are random. Errors are one line (``error: ...``, exit status 2).
"""
import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fusion_blocks(net):
    """``[(structural path, block)]`` of every AFF/iAFF block, in network order."""
    from gluon_transfer.nn.fusion import AFF, iAFF
    found = []

    def walk(block, path):
        for name, child in block._children.items():
            sub = '%s.%s' % (path, name) if path else name
            if isinstance(child, (AFF, iAFF)):
                found.append((sub, child))
            walk(child, sub)
    walk(net, '')
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='cifar_aff_resnet32')
    p.add_argument('--params', help='a save_parameters file (random weights without it)')
    p.add_argument('--fusion', help='model option fusion (add/aff/iaff) for generic model names')
    p.add_argument('--blocks', type=int, help='model option blocks for generic CIFAR names')
    p.add_argument('--channel-times', type=int, help='model option channel_times')
    p.add_argument('--classes', type=int)
    p.add_argument('--rec', help='RecordIO file with images (random images without it)')
    p.add_argument('--num-images', type=int, default=4)
    p.add_argument('--size', type=int, default=32, help='input size (default %(default)s)')
    p.add_argument('--block', action='append',
                   help='structural path of a fusion block to show (repeatable; default: first and last)')
    p.add_argument('--out', default='fusion.png')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import mxnet as mx
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import gluon_transfer as gt
        from gluon_transfer.errors import ConfigError, GluonTransferError
        from gluon_transfer.weights import load_params
        from gluon_transfer.data.images import read_record_images, generated_images, to_batch
    try:
        if args.num_images < 1:
            raise ConfigError('--num-images must be >= 1')
        kwargs = {k: v for k, v in (('fusion', args.fusion), ('blocks', args.blocks),
                                     ('channel_times', args.channel_times), ('classes', args.classes)) if v is not None}
        net = gt.get_model(args.model, **kwargs)
        net.initialize(mx.init.Xavier(), ctx=mx.cpu())
        if args.params:
            load_params(net, args.params)
        blocks = fusion_blocks(net)
        if not blocks:
            raise ConfigError('%s has no AFF/iAFF block to show (fusion add?)' % args.model)
        by_path = dict(blocks)
        if args.block:
            for path in args.block:
                if path not in by_path:
                    raise ConfigError('no fusion block %r; valid: %s' % (path, ', '.join(by_path)))
            chosen = [(path, by_path[path]) for path in args.block]
        else:
            chosen = [blocks[0]] if len(blocks) == 1 else [blocks[0], blocks[-1]]
        if args.rec:
            images = read_record_images(args.rec, args.num_images, args.size)
        else:
            images = generated_images(args.num_images, args.size, args.seed, smooth=False)
        mean, std = (CIFAR_MEAN, CIFAR_STD) if args.size <= 64 else (IMAGENET_MEAN, IMAGENET_STD)
        x = mx.nd.array(to_batch(images, mean, std))

        captured = {}
        handles = []
        for path, block in chosen:
            def hook(blk, inputs, path=path):
                captured[path] = inputs
            handles.append(block.register_forward_pre_hook(hook))
        net(x)  # imperative (not hybridized), so the hooks fire
        for h in handles:
            h.detach()
        panels = []
        for path, block in chosen:
            weights = block.attention_weights(*captured[path])
            for i, w in enumerate(weights):
                tag = '' if len(weights) == 1 else ' w%d' % (i + 1)
                panels.append(('%s%s' % (path.replace('.attention', ''), tag), w.mean(axis=1).asnumpy()))
        rows, cols = len(images), 1 + len(panels)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        for r, img in enumerate(images):
            axes[r][0].imshow(img)
            axes[r][0].set_title('input' if r == 0 else '')
            for c, (title, maps) in enumerate(panels, 1):
                im = axes[r][c].imshow(maps[r], vmin=0, vmax=1, cmap='viridis')
                if r == 0:
                    axes[r][c].set_title(title, fontsize=7)
            for ax in axes[r]:
                ax.axis('off')
        fig.colorbar(im, ax=[ax for row in axes for ax in row[1:]], shrink=0.6, label='mean over channels of w')
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fig.savefig(args.out, dpi=100)
        plt.close(fig)
        print('wrote %s: %d images x %d attention maps (%s)' % (args.out, rows, len(panels),
                                                               ', '.join(t for t, _ in panels)))
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
