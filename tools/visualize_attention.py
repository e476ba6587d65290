#!/usr/bin/env python
"""Save a PNG grid of activation-based attention maps, student beside teacher, per group.

    python tools/visualize_attention.py --model wrn16_1 --params student.params \\
        --teacher wrn16_2 --teacher-params teacher.params --images a.png b.png --out at.png
    python tools/visualize_attention.py --model resnet18_v1b --params r18.params --dataset imagenet \\
        --input-size 224 --classes 1000 --images dog.jpg --out at.png

    python tools/visualize_attention.py ast --model resnet18_v1b --params source.params \\
        --afa-params STAGE1_DIR/PREFIX-0015.extra.params --rec val.rec --input-size 32 --out ast.png

``ast`` as the first argument: AFA's learned spatial attention (stage 1) over the images
instead (``tools/visualize_ast.py``; ``ast --help`` lists its options). Otherwise each map
is ``at(x)`` of :func:`gluon_transfer.losses.attention_map` (channel mean of |x|^p,
L2-normalised per image) at the tap's resolution, shown with its own colour scale.
Taps default to every stage of the network (stage1..stage3 for CIFAR nets, stage1..stage4
for ImageNet ResNets).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NORMALISE = {'cifar': ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),      # attention-transfer cifar.py
             'imagenet': ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))}


def load_images(paths, size, dataset):
    from gluon_transfer.data.images import read_image_files, to_batch
    raw = read_image_files(paths, size)
    mean, std = NORMALISE[dataset]           # on the 0-255 scale
    return raw, to_batch(raw, mean, std, scale=1.0)


def build(name, params, classes, taps, ctx):
    from gluon_transfer.nn.feature import FeatureTaps, stage_aliases
    from gluon_transfer.weights import load_params
    from gluon_transfer.zoo import get_model
    net = get_model(name, classes=classes)
    load_params(net, params, ctx=ctx)
    taps = taps or sorted(stage_aliases(net))
    return FeatureTaps(net, taps), taps


def attention(view, x, p):
    import mxnet as mx
    from gluon_transfer.losses import attention_map
    with mx.autograd.pause(train_mode=False):
        _, maps = view(mx.nd.array(x))
    return [attention_map(m, p).reshape((m.shape[0], m.shape[2], m.shape[3])).asnumpy() for m in maps]


def plot(raw, student, teacher, taps, out, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cols = 1 + len(student) * (2 if teacher else 1)
    fig, axes = plt.subplots(len(raw), cols, figsize=(2.0 * cols, 2.0 * len(raw)), squeeze=False)
    for i, img in enumerate(raw):
        axes[i][0].imshow(img)
        axes[i][0].set_title('input' if i == 0 else '', fontsize=8)
        c = 1
        for g in range(len(student)):
            for who, maps in (('student', student), ('teacher', teacher)):
                if maps is None:
                    continue
                axes[i][c].imshow(maps[g][i], cmap='jet', interpolation='nearest')
                if i == 0:
                    axes[i][c].set_title('g%d %s\n%s' % (g, who, taps[who][g]), fontsize=7)
                c += 1
    for ax in axes.ravel():
        ax.axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['ast']:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import visualize_ast
        return visualize_ast.main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', required=True, help='student network name')
    p.add_argument('--params', required=True, help="the student's .params file")
    p.add_argument('--teacher', default=None, help='teacher network name (optional)')
    p.add_argument('--teacher-params', default=None)
    p.add_argument('--taps', default=None, help='student taps, comma-separated (default: all stages)')
    p.add_argument('--teacher-taps', default=None, help='teacher taps (default: as --taps)')
    p.add_argument('--images', nargs='+', required=True)
    p.add_argument('--dataset', default='cifar', choices=sorted(NORMALISE), help='normalisation preset')
    p.add_argument('--input-size', type=int, default=32)
    p.add_argument('--classes', type=int, default=10)
    p.add_argument('--p', type=float, default=2.0, help='attention map exponent')
    p.add_argument('--out', default='attention.png')
    args = p.parse_args(argv)
    import mxnet as mx
    from gluon_transfer.errors import GluonTransferError, ConfigError
    split = lambda t: tuple(s.strip() for s in t.split(',') if s.strip()) if t else ()  # noqa: E731
    try:
        raw, x = load_images(args.images, args.input_size, args.dataset)
        view, s_taps = build(args.model, args.params, args.classes, split(args.taps), [mx.cpu()])
        student = attention(view, x, args.p)
        teacher, t_taps = None, ()
        if args.teacher:
            if not args.teacher_params:
                raise ConfigError('--teacher needs --teacher-params')
            tview, t_taps = build(args.teacher, args.teacher_params, args.classes,
                                  split(args.teacher_taps) or split(args.taps), [mx.cpu()])
            teacher = attention(tview, x, args.p)
            if len(teacher) != len(student):
                raise ConfigError('%d student taps but %d teacher taps' % (len(student), len(teacher)))
        plot(raw, student, teacher, {'student': s_taps, 'teacher': t_taps}, args.out,
             '%s%s, p=%g' % (args.model, (' vs teacher %s' % args.teacher) if args.teacher else '', args.p))
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('wrote %s' % args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
