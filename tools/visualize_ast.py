#!/usr/bin/env python
"""Save a PNG of AFA's learned spatial attention (AST, stage 1) over a few images.

    .venv/bin/python tools/visualize_attention.py ast --model resnet18_v1b --params runs/ct/source.params \\
        --afa-params runs/afa/stage1_ast --dataset cifar10 --input-size 32 \\
        --rec runs/ct/target/val.rec --num-images 4          # -> runs/afa/stage1_ast/vis/ast.png

(also ``.venv/bin/python tools/visualize_ast.py ...``.) Each row is one image: the input,
then for every tap ``l`` the attention ``a = softmax_HW(fc2(relu(fc1(mean_c s_l))))``
computed from the SOURCE network's map ``s_l`` (in AFA the spatial attention reads the
frozen source network, not the target), reshaped to ``H x W`` and multiplied by ``HW``, so
that 1 means uniform weight; upsampled to the image size and drawn over it, one colour scale
and colour bar per tap.

``--params``: the source network's weights. ``--afa-params``: the attention modules, i.e. the
``.extra.params`` file a stage-1 checkpoint writes beside its ``.params``, or a stage-1 run
folder (its latest checkpoint's file). Both are required unless ``--random`` (random weights
and generated images; the title says so). Images: ``--rec FILE --num-images K`` or
``--images``. The PNG goes to ``--out``, by default ``vis/ast.png`` in the stage-1 run folder.
Errors are one line (``error: ...``, exit status 2).
"""
import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vis_common  # noqa: E402

AST_LABEL = 'HW * a: spatial attention weight (1 = uniform)'
BAR_LABEL = 'HW * a (1 = uniform)'


def build_parser():
    p = argparse.ArgumentParser(prog='visualize_attention.py ast', description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', default='resnet101_v1b', help='the source network (default %(default)s)')
    p.add_argument('--params', help="the source network's weights (a save_parameters file)")
    p.add_argument('--classes', type=int, help='classifier size of --params (default: read from the file)')
    p.add_argument('--afa-params', help="a stage-1 checkpoint's .extra.params, or a stage-1 run folder")
    vis_common.add_image_args(p)
    p.add_argument('--dataset', default='imagenet', help='normalisation preset (default %(default)s)')
    p.add_argument('--input-size', type=int, default=224)
    p.add_argument('--taps', help='comma-separated structural conv paths (default: the AFA taps of the model)')
    vis_common.add_output_args(p, 'ast.png')
    p.add_argument('--seed', type=int, default=0, help='random weights and generated images (with --random)')
    return p


def attention_file(path):
    """``path`` itself, or for a run folder the ``.extra.params`` of its latest checkpoint."""
    from gluon_transfer.engine.checkpoint import resolve_resume
    from gluon_transfer.errors import CheckpointError
    if not os.path.isdir(path):
        return path
    meta, folder = resolve_resume(path)
    extra = meta.get('files', {}).get('extra')
    if not extra:
        raise CheckpointError('%s: its latest checkpoint has no .extra.params (not an AFA stage-1 run?)' % path)
    return os.path.join(folder, extra)


def make_figure(images, names, panels, title):
    """``panels``: ``[(title, a (N, h, w) with 1 = uniform)]``. Returns the Figure: each
    attention map upsampled and drawn over its image, every panel titled, one colour scale and
    one labelled colour bar per tap (the taps differ in resolution, hence in range: at most
    ``HW``)."""
    import cv2
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows, cols = len(images), 1 + len(panels)
    size = images[0].shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.3 * rows + 1.4), squeeze=False,
                             layout='constrained')
    for r, img in enumerate(images):
        axes[r][0].imshow(img)
        axes[r][0].set_title(names[r], fontsize=7)
    for k, (ptitle, a) in enumerate(panels, 1):
        vmax = max(float(a.max()), 1.0)
        for r, img in enumerate(images):
            up = cv2.resize(a[r], (size, size), interpolation=cv2.INTER_LINEAR)
            axes[r][k].imshow(img)
            im = axes[r][k].imshow(up, cmap='jet', alpha=0.5, vmin=0, vmax=vmax)
            axes[r][k].set_title('%s (%dx%d)' % (ptitle, a.shape[1], a.shape[2]), fontsize=7)
        bar = fig.colorbar(im, ax=[axes[r][k] for r in range(rows)], orientation='horizontal', shrink=0.9,
                           aspect=20)
        bar.set_label(BAR_LABEL, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return fig


def build_figure(argv=None):
    """Parse ``argv``, run the source network and the attention, return
    ``(figure, output path, panel titles)``."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import mxnet as mx
        import gluon_transfer as gt
        from gluon_transfer.data.datasets import get_preset
        from gluon_transfer.data.images import to_batch
        from gluon_transfer.engine.checkpoint import load_blocks
        from gluon_transfer.losses.afa import AFASpatial, check_taps, default_taps
        from gluon_transfer.losses.taps import bottleneck_taps
        from gluon_transfer.methods.base import source_head_classes
        from gluon_transfer.weights import load_params
    random_weights = vis_common.check_weights(args, [None if args.params else '--params',
                                                     None if args.afa_params else '--afa-params'])
    extra = attention_file(args.afa_params) if args.afa_params else None
    images, names, generated = vis_common.load_images(args, args.input_size)
    classes = args.classes
    if classes is None and args.params:
        classes = source_head_classes(args.model, args.params, {})
    net = gt.get_model(args.model, classes=classes or 1000)
    mx.random.seed(args.seed)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    if args.params:
        load_params(net, args.params)
    taps = args.taps.split(',') if args.taps else default_taps(net)
    shapes = check_taps(net, taps, args.input_size)
    reg = AFASpatial(seed=args.seed)
    reg.set_feature_shapes(shapes)
    block = reg.blocks()['afa_ast']
    block.initialize(ctx=mx.cpu())
    if extra:
        load_blocks(reg.blocks(), extra)
    preset = get_preset(args.dataset)
    x = mx.nd.array(to_batch(images, preset.mean, preset.std, scale=1.0))     # preset mean/std are 0-255
    with mx.autograd.predict_mode():
        feats = bottleneck_taps(net, taps, with_logits=False)(x)
        panels = [(t, module(s).asnumpy().reshape(-1, h, w) * (h * w))
                  for t, s, module, (c, h, w) in zip(taps, feats, block, shapes)]
    title = 'AFA spatial attention (stage 1) on the source network %s%s\n%s' % (
        args.model, vis_common.weights_note(random_weights, generated), AST_LABEL)
    weights_file = extra or args.params
    if extra and os.path.isdir(args.afa_params):
        weights_file = os.path.join(args.afa_params, os.path.basename(extra))
    out = vis_common.output_path(args, weights_file, 'ast.png')
    return make_figure(images, names, panels, title), out, [t for t, _ in panels]


def main(argv=None):
    from gluon_transfer.errors import GluonTransferError
    try:
        fig, out, panels = build_figure(argv)
        vis_common.save_figure(fig, out)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('wrote %s: %d AST maps per image (%s)' % (out, len(panels), ', '.join(panels)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
