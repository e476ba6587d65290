#!/usr/bin/env python
"""Save a PNG of the AFF/iAFF attention weights of a trained network over a few images.

    .venv/bin/python tools/visualize_fusion.py --model cifar_aff_resnet --blocks 1 --channel-times 1 \\
        --params runs/aff/best.params --rec data/cifar10_sample/val.rec --num-images 4
    # -> runs/aff/vis/fusion.png

Every AFF/iAFF block fuses ``x``, the residual branch's output (its first input), with ``y``,
the shortcut (its second input), through the MS-CAM weight ``w = M(.)`` in [0, 1], per
channel and position (gluon_transfer/nn/fusion.py)::

    AFF:   w = M(x + y)                      out = 2 * (w * x + (1 - w) * y)
    iAFF:  w1 = M1(x + y),  xi = w1 * x + (1 - w1) * y
           w2 = M2(xi)                       out = w2 * x + (1 - w2) * y

So ``w`` is the weight given to the residual branch x and ``1 - w`` the weight given to the
shortcut y: near 1 the block passes the residual branch, near 0 the shortcut. Each row is
one image: the input, then, for every chosen block, ``mean_c w[c, h, w]`` at the block's
resolution (iAFF: w1 and w2), all on one colour scale from 0 to 1.

Needs ``--params`` (a trained network) and images (``--rec FILE --num-images K`` or
``--images``); ``--random`` draws a randomly initialised network on generated images instead,
and the title says so. The PNG goes to ``--out``, by default ``vis/fusion.png`` in the folder
of ``--params``. Errors are one line (``error: ...``, exit status 2).
"""
import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vis_common  # noqa: E402

W_LABEL = 'w: weight of x (residual branch); 1 - w goes to y (shortcut)'


def build_parser():
    from gluon_transfer import cli
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', default='cifar_aff_resnet32', help='an AFF/iAFF network (default %(default)s)')
    p.add_argument('--params', help='the trained network (a save_parameters file, e.g. RUN/best.params)')
    p.add_argument('--classes', type=int, default=10, help='classifier size of --params (default %(default)s)')
    cli.add_model_options(p.add_argument_group('model options (as given to the training script)'))
    vis_common.add_image_args(p)
    p.add_argument('--dataset', default=None, help='normalisation preset (default: cifar10 up to 64 px, else imagenet)')
    p.add_argument('--size', '--input-size', dest='size', type=int, default=32, help='input size (default %(default)s)')
    p.add_argument('--block', action='append',
                   help='structural path of a fusion block to show (repeatable; default: the first and the last)')
    vis_common.add_output_args(p, 'fusion.png')
    p.add_argument('--seed', type=int, default=0, help='random weights and generated images (with --random)')
    return p


def make_figure(images, names, panels, title):
    """``panels``: ``[(title, maps (N, H, W) in [0, 1])]``. Returns the Figure: one row per
    image, the input then every panel, each titled, one colour bar labelled with what w is."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows, cols = len(images), 1 + len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 1.2, 2.3 * rows + 0.9), squeeze=False,
                             layout='constrained')
    im = None
    for r, img in enumerate(images):
        axes[r][0].imshow(img)
        axes[r][0].set_title(names[r], fontsize=7)
        for c, (ptitle, maps) in enumerate(panels, 1):
            im = axes[r][c].imshow(maps[r], vmin=0, vmax=1, cmap='coolwarm', interpolation='nearest')
            axes[r][c].set_title('%s (%dx%d)' % (ptitle, maps.shape[1], maps.shape[2]), fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    bar = fig.colorbar(im, ax=[ax for row in axes for ax in row[1:]], shrink=0.8, aspect=40)
    bar.set_label('mean over channels of ' + W_LABEL, fontsize=7)
    return fig


def build_figure(argv=None):
    """Parse ``argv``, run the network, return ``(figure, output path, panel titles)``."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import mxnet as mx
        from gluon_transfer import cli
        from gluon_transfer.data.datasets import get_preset
        from gluon_transfer.data.images import to_batch
        from gluon_transfer.errors import ConfigError
        from gluon_transfer.nn.fusion import AFF
        from gluon_transfer.weights import load_params
        from gluon_transfer.zoo import get_model
    random_weights = vis_common.check_weights(args, [None if args.params else '--params'])
    images, names, generated = vis_common.load_images(args, args.size)
    net = get_model(args.model, classes=args.classes, **cli.model_kwargs(args))
    mx.random.seed(args.seed)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    if args.params:
        load_params(net, args.params)
    from gluon_transfer.nn.fusion import fusion_blocks
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
    preset = get_preset(args.dataset or ('cifar10' if args.size <= 64 else 'imagenet'))
    x = mx.nd.array(to_batch(images, preset.mean, preset.std, scale=1.0))

    captured, handles = {}, []
    for path, block in chosen:
        def hook(blk, inputs, path=path):
            captured[path] = inputs
        handles.append(block.register_forward_pre_hook(hook))
    with mx.autograd.predict_mode():
        net(x)  # imperative (never hybridized here), so the pre-hooks see (x, y)
        panels = []
        for path, block in chosen:
            weights = block.attention_weights(*captured[path])
            kind = 'AFF' if isinstance(block, AFF) else 'iAFF'
            for i, w in enumerate(weights):
                tag = 'w' if len(weights) == 1 else 'w%d' % (i + 1)
                panels.append(('%s %s %s' % (path.replace('.attention', ''), kind, tag), w.mean(axis=1).asnumpy()))
    for h in handles:
        h.detach()
    title = ('%s: MS-CAM fusion weights, mean over channels%s\n'
             '%s; AFF out = 2(w x + (1-w) y), iAFF out = w2 x + (1-w2) y') % (
        args.model, vis_common.weights_note(random_weights, generated), W_LABEL)
    out = vis_common.output_path(args, args.params, 'fusion.png')
    return make_figure(images, names, panels, title), out, [t for t, _ in panels]


def main(argv=None):
    from gluon_transfer.errors import GluonTransferError
    try:
        fig, out, panels = build_figure(argv)
        vis_common.save_figure(fig, out)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('wrote %s: %d attention maps per image (%s)' % (out, len(panels), ', '.join(panels)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
