"""What the picture tools (visualize_attention.py, visualize_fusion.py, visualize_ast.py) share:
where the images come from, where the PNG goes, and the refusal to draw random weights.

* Images: ``--rec FILE --num-images K`` (the first K records of a RecordIO file, e.g.
  ``data/cifar10_sample/val.rec``) or ``--images a.png b.jpg``. Generated noise images only
  with ``--random``, and the figure title says so.
* Output: ``--out`` is a ``.png`` file or a folder (the tool's file name inside it). Default:
  ``vis/`` inside the folder of the weights file (a run folder), so a picture lands beside the
  run it shows, never in the working directory; with ``--random`` and no weights,
  ``runs/vis/``.
* Weights: a tool without its weights file stops with an error unless ``--random`` is
  given (random weights draw meaningless maps; the figure title then says "random weights").
"""
import os

from gluon_transfer.errors import ConfigError


def add_image_args(parser, default_num=4):
    g = parser.add_argument_group('images (one of)')
    g.add_argument('--rec', help='RecordIO file to take the first --num-images images from (e.g. '
                                 'data/cifar10_sample/val.rec)')
    g.add_argument('--images', nargs='+', metavar='FILE', help='image files (any format OpenCV reads)')
    g.add_argument('--num-images', type=int, default=default_num, help='images from --rec (default %(default)s)')
    return g


def add_output_args(parser, filename):
    parser.add_argument('--out', default=None,
                        help='a .png file or a folder (then %s inside it); default: vis/%s in the folder '
                             'of the weights file' % (filename, filename))
    parser.add_argument('--random', action='store_true',
                        help='allow random weights (no weights file) and generated images; for trying the tool only')


def check_weights(args, missing):
    """``missing``: names of the weight flags that were not given (e.g. ``['--params']``).
    Refuses them unless ``--random``; returns True when random weights are used."""
    missing = [m for m in missing if m]
    if missing and not args.random:
        raise ConfigError('%s not given: the network would have random weights; give %s, or --random to '
                          'draw random weights on purpose' % (' and '.join(missing), ' and '.join(missing)))
    return bool(missing)


def load_images(args, size):
    """``(images, names, generated)``: RGB uint8 arrays of ``size x size`` from ``--rec`` or
    ``--images``; generated images (``generated=True``) only with ``--random``."""
    from gluon_transfer.data.images import read_record_images, read_image_files, generated_images
    if args.num_images < 1:
        raise ConfigError('--num-images must be >= 1, got %d' % args.num_images)
    if args.rec and args.images:
        raise ConfigError('give --rec or --images, not both')
    if args.rec:
        images = read_record_images(args.rec, args.num_images, size)
        base = os.path.basename(args.rec)
        return images, ['%s #%d' % (base, i) for i in range(len(images))], False
    if args.images:
        return read_image_files(args.images, size), [os.path.basename(p) for p in args.images], False
    if not args.random:
        raise ConfigError('no images: give --rec FILE --num-images K (e.g. --rec data/cifar10_sample/val.rec) '
                          'or --images FILE...')
    images = generated_images(args.num_images, size, getattr(args, 'seed', 0))
    return images, ['generated #%d' % i for i in range(len(images))], True


def output_path(args, weights_file, filename):
    """The PNG path: ``--out`` (a .png file, or a folder for ``filename``), else
    ``<folder of weights_file>/vis/<filename>``, else ``runs/vis/<filename>``."""
    out = args.out
    if out and out.lower().endswith('.png'):
        return out
    if not out:
        out = os.path.join(os.path.dirname(weights_file) or '.', 'vis') if weights_file else os.path.join('runs', 'vis')
    return os.path.join(out, filename)


def save_figure(fig, out, dpi=100):
    """Write ``fig`` to ``out`` atomically (a ``.part`` file renamed), creating the folder."""
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + '.part'
    try:
        fig.savefig(tmp, dpi=dpi, format='png')
        os.replace(tmp, out)
    except OSError as err:
        raise ConfigError('cannot write %s: %s' % (out, err.strerror or err)) from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def weights_note(random_weights, generated):
    """The title suffix that says what is not real."""
    notes = (['RANDOM WEIGHTS'] if random_weights else []) + (['generated images'] if generated else [])
    return (' [%s]' % ', '.join(notes)) if notes else ''
