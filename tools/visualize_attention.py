#!/usr/bin/env python
"""Save a PNG of activation-based attention maps of a trained network, beside its teacher's.

    .venv/bin/python tools/visualize_attention.py --model wrn16_1 --params runs/at_student/best.params \\
        --teacher wrn16_2 --teacher-params runs/at_teacher/best.params \\
        --rec data/cifar10_sample/val.rec --num-images 4          # -> runs/at_student/vis/attention.png
    .venv/bin/python tools/visualize_attention.py --model resnet18_v1b --params r18.params --dataset imagenet \\
        --input-size 224 --classes 1000 --images dog.jpg --out at.png

    .venv/bin/python tools/visualize_attention.py ast --help     # AFA's learned spatial attention instead

Each map is the attention of attention transfer, ``at(x) = v / max(||v||_2, 1e-12)`` with
``v = mean_c |x_c|^p`` over the channels of a feature map ``x`` (p = 2 by default;
:func:`gluon_transfer.losses.attention_map`), at the tap's resolution. Each row is one image:
the input, then for every tapped stage the network's map and, with ``--teacher``, the
teacher's map of the same stage. The student and teacher maps of one stage share one colour
scale (0 to the largest value over the images), with its colour bar below the column pair,
so the two can be compared directly. Taps default to every stage of the network
(stage1..stage3 for CIFAR WRNs and ResNets, stage1..stage4 for ImageNet ResNets).

``ast`` as the first argument runs tools/visualize_ast.py (AFA, stage 1). Needs ``--params``
(and ``--teacher-params`` with ``--teacher``) and images (``--rec FILE --num-images K`` or
``--images``); ``--random`` allows random weights and generated images, and the title says so.
The PNG goes to ``--out``, by default ``vis/attention.png`` in the folder of ``--params``.
Errors are one line (``error: ...``, exit status 2).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vis_common  # noqa: E402

AT_LABEL = 'at(x) = mean_c |x|^p / ||.||_2'


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--model', required=True, help='the network (student) name')
    p.add_argument('--params', help="the network's weights (a save_parameters file, e.g. RUN/best.params)")
    p.add_argument('--teacher', default=None, help='teacher network name (optional)')
    p.add_argument('--teacher-params', default=None, help="the teacher's weights")
    p.add_argument('--taps', default=None, help='taps, comma-separated (default: every stage)')
    p.add_argument('--teacher-taps', default=None, help='teacher taps (default: as --taps)')
    vis_common.add_image_args(p)
    p.add_argument('--dataset', default='cifar10', help='normalisation preset (default %(default)s)')
    p.add_argument('--input-size', type=int, default=32)
    p.add_argument('--classes', type=int, default=10, help='classifier size of the weights (default %(default)s)')
    p.add_argument('--p', type=float, default=2.0, help='attention map exponent (default %(default)s)')
    vis_common.add_output_args(p, 'attention.png')
    p.add_argument('--seed', type=int, default=0, help='random weights and generated images (with --random)')
    return p


def build(name, params, classes, taps, seed):
    """``(FeatureTaps view, tap names)`` of network ``name`` with ``params`` (random weights
    when None)."""
    import mxnet as mx
    from gluon_transfer.nn.feature import FeatureTaps, stage_aliases
    from gluon_transfer.weights import load_params
    from gluon_transfer.zoo import get_model
    net = get_model(name, classes=classes)
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    if params:
        load_params(net, params, ctx=[mx.cpu()])
    taps = taps or tuple(sorted(stage_aliases(net)))
    return FeatureTaps(net, taps), taps


def attention(view, x, p):
    """``[(N, H, W) numpy]``: the attention map of every tap."""
    import mxnet as mx
    from gluon_transfer.losses import attention_map
    with mx.autograd.pause(train_mode=False):
        _, maps = view(mx.nd.array(x))
    return [attention_map(m, p).reshape((m.shape[0], m.shape[2], m.shape[3])).asnumpy() for m in maps]


def make_figure(images, names, columns, title, p):
    """``columns``: ``[[(panel title, maps (N, H, W)), ...] per stage]`` (one or two entries:
    network, teacher). Returns the Figure; every panel titled, one colour bar per stage."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ncols = 1 + sum(len(group) for group in columns)
    rows = len(images)
    fig, axes = plt.subplots(rows, ncols, figsize=(2.1 * ncols, 2.1 * rows + 1.3), squeeze=False,
                             layout='constrained')
    for r, img in enumerate(images):
        axes[r][0].imshow(img)
        axes[r][0].set_title(names[r], fontsize=7)
    c = 1
    bars = []
    for group in columns:
        vmax = max(float(maps.max()) for _, maps in group) or 1.0
        first = c
        for ptitle, maps in group:
            for r in range(rows):
                im = axes[r][c].imshow(maps[r], cmap='jet', vmin=0, vmax=vmax, interpolation='nearest')
                axes[r][c].set_title('%s (%dx%d)' % (ptitle, maps.shape[1], maps.shape[2]), fontsize=7)
            c += 1
        bars.append((im, [axes[r][k] for r in range(rows) for k in range(first, c)]))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    for im, axs in bars:
        bar = fig.colorbar(im, ax=axs, orientation='horizontal', shrink=0.9, aspect=30)
        bar.set_label('%s, p=%g' % (AT_LABEL, p), fontsize=7)
    return fig


def build_figure(argv=None):
    """Parse ``argv``, run the network(s), return ``(figure, output path, panel titles)``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from gluon_transfer.data.datasets import get_preset
    from gluon_transfer.data.images import to_batch
    from gluon_transfer.errors import ConfigError
    split = lambda t: tuple(s.strip() for s in t.split(',') if s.strip()) if t else ()  # noqa: E731
    if args.teacher_params and not args.teacher:
        raise ConfigError('--teacher-params given without --teacher (the teacher network name)')
    random_weights = vis_common.check_weights(args, [
        None if args.params else '--params',
        '--teacher-params' if args.teacher and not args.teacher_params else None])
    images, names, generated = vis_common.load_images(args, args.input_size)
    preset = get_preset(args.dataset)
    x = to_batch(images, preset.mean, preset.std, scale=1.0)          # preset mean/std are 0-255
    view, s_taps = build(args.model, args.params, args.classes, split(args.taps), args.seed)
    student = attention(view, x, args.p)
    teacher, t_taps = None, ()
    if args.teacher:
        tview, t_taps = build(args.teacher, args.teacher_params, args.classes,
                              split(args.teacher_taps) or split(args.taps), args.seed + 1)
        teacher = attention(tview, x, args.p)
        if len(teacher) != len(student):
            raise ConfigError('%d network taps but %d teacher taps' % (len(student), len(teacher)))
    columns = []
    for g in range(len(student)):
        group = [('%s %s' % (args.model, s_taps[g]), student[g])]
        if teacher is not None:
            group.append(('teacher %s %s' % (args.teacher, t_taps[g]), teacher[g]))
        columns.append(group)
    title = 'attention maps at(x) of %s%s%s\none colour scale per stage (network and teacher share it)' % (
        args.model, (' and teacher %s' % args.teacher) if args.teacher else '',
        vis_common.weights_note(random_weights, generated))
    out = vis_common.output_path(args, args.params, 'attention.png')
    fig = make_figure(images, names, columns, title, args.p)
    return fig, out, [t for group in columns for t, _ in group]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['ast']:
        import visualize_ast
        return visualize_ast.main(argv[1:])
    from gluon_transfer.errors import GluonTransferError
    try:
        fig, out, panels = build_figure(argv)
        vis_common.save_figure(fig, out)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    print('wrote %s: %d maps per image (%s)' % (out, len(panels), ', '.join(panels)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
