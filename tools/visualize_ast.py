#!/usr/bin/env python
"""Save a PNG of AFA's spatial attention (AST, stage 1) over a few images.

    python tools/visualize_attention.py ast --model resnet101_v1b --params resnet101_v1b-imagenet.params \
        --afa-params runs/afa/stage1_ast/resnet101_v1b-afa-ast-0010.extra.params \
        --rec data/dogs/val.rec --num-images 4 --out ast.png

(also ``python tools/visualize_ast.py ...``.) Each row is one image: the input, then for every tap ``l`` the attention
``a = softmax_HW(fc2(relu(fc1(mean_c s_l))))`` computed from the SOURCE network's map
``s_l`` (the attention reads the frozen source, transfer-methods.md §4.1), reshaped to
``H x W``, times ``HW`` (so 1 = uniform weight), upsampled to the image and drawn over it.
``--params``: the source network's weights (the ImageNet network; random without it);
``--afa-params``: the ``.extra.params`` file a stage-1 checkpoint writes beside its
``.params`` (random attention without it). Images come from a RecordIO file (mx.recordio +
cv2) or, without --rec, are generated. Errors are one line (``error: ...``, exit status 2).
"""
import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet101_v1b')
    p.add_argument('--params', help="the source network's save_parameters file (random weights without it)")
    p.add_argument('--classes', type=int, help='classifier size of --params (default: read from the file)')
    p.add_argument('--afa-params', help="a stage-1 checkpoint's .extra.params (random attention without it)")
    p.add_argument('--rec', help='RecordIO file with images (generated images without it)')
    p.add_argument('--num-images', type=int, default=4)
    p.add_argument('--input-size', type=int, default=224)
    p.add_argument('--taps', help='comma-separated structural conv paths (default: AFA taps of the model)')
    p.add_argument('--out', default='ast.png')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import cv2
        import mxnet as mx
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import gluon_transfer as gt
        from gluon_transfer.methods import afa
        from gluon_transfer.engine.checkpoint import load_blocks
        from gluon_transfer.errors import ConfigError, GluonTransferError
        from gluon_transfer.losses.afa import AFASpatial
        from gluon_transfer.methods.base import source_head_classes
        from gluon_transfer.losses.transfer_common import bottleneck_taps
        from gluon_transfer.weights import load_params
        from gluon_transfer.data.images import read_record_images, generated_images, to_batch
    try:
        if args.num_images < 1:
            raise ConfigError('--num-images must be >= 1')
        classes = args.classes
        if classes is None and args.params:
            classes = source_head_classes(args.model, args.params, {})
        net = gt.get_model(args.model, classes=classes or 1000)
        mx.random.seed(args.seed)
        net.initialize(mx.init.Xavier(), ctx=mx.cpu())
        if args.params:
            load_params(net, args.params)
        taps = args.taps.split(',') if args.taps else afa.default_taps(net)
        shapes = afa.check_taps(net, taps, args.input_size)
        reg = AFASpatial(seed=args.seed)
        reg.set_feature_shapes(shapes)
        block = reg.blocks()['afa_ast']
        block.initialize(ctx=mx.cpu())
        if args.afa_params:
            load_blocks(reg.blocks(), args.afa_params)
        size = args.input_size
        images = read_record_images(args.rec, args.num_images, size) if args.rec else \
            generated_images(args.num_images, size, args.seed)
        x = mx.nd.array(to_batch(images, IMAGENET_MEAN, IMAGENET_STD))
        with mx.autograd.predict_mode():
            feats = bottleneck_taps(net, taps, with_logits=False)(x)
        panels = []
        for t, s, module, (c, h, w) in zip(taps, feats, block, shapes):
            a = module(s).asnumpy().reshape(-1, h, w) * (h * w)     # 1 = uniform
            panels.append((t, a))
        rows, cols = len(images), 1 + len(panels)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        vmax = max(float(a.max()) for _, a in panels)
        for r, img in enumerate(images):
            axes[r][0].imshow(img)
            axes[r][0].set_title('input' if r == 0 else '')
            for k, (title, a) in enumerate(panels, 1):
                up = cv2.resize(a[r], (size, size), interpolation=cv2.INTER_LINEAR)
                axes[r][k].imshow(img)
                im = axes[r][k].imshow(up, cmap='jet', alpha=0.5, vmin=0, vmax=vmax)
                if r == 0:
                    axes[r][k].set_title('%s (%dx%d)' % (title, a.shape[1], a.shape[2]), fontsize=7)
            for ax in axes[r]:
                ax.axis('off')
        fig.colorbar(im, ax=[ax for row in axes for ax in row[1:]], shrink=0.6, label='HW * a (1 = uniform)')
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fig.savefig(args.out, dpi=100)
        plt.close(fig)
        print('wrote %s: %d images x %d AST maps (%s)' % (args.out, rows, len(panels), ', '.join(taps)))
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
