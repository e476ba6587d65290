"""Readers of the official layouts and split files of the fine-grained transfer sets.

Each reader takes the folder the user extracted the official archives into and returns a
:class:`SplitSpec`: the image root, the class names in the official order and, per split,
``(label, relpath)`` rows in the official order. ``tools/prepare_dataset.py NAME SRC OUT``
(:func:`prepare_dataset`) checks them against the published split sizes
(:data:`OFFICIAL_COUNTS`) and packs them into ``OUT/train.rec`` (training), ``OUT/val.rec``
(model selection: a seeded per-class split carved from the official training list, or
the official val split where one exists) and ``OUT/test.rec`` (the official test split,
for the final evaluation only) for the preset of the same name
(:data:`gluon_transfer.data.datasets.TRANSFER_DATASETS`). Nothing is downloaded: the URLs
in the docstrings are where the archives were published (several personal/lab mirrors
have died over the years, so none is fetched automatically).

A missing or incomplete tree raises one :class:`~gluon_transfer.errors.DataError` line
naming the first missing file and the expected layout. Readers are registered in
:data:`PREPARERS` (a :class:`~gluon_transfer.registry.Registry`; the ``DATASETS``
registry holds the presets under the same names); :func:`read_split` looks one up.
"""
import collections
import os
import re

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..weights import file_sha1
from .pack import IMAGE_EXTS

__all__ = ['SplitSpec', 'PREPARERS', 'read_split', 'check_images', 'prepare_dataset', 'fraction_name',
           'OFFICIAL_COUNTS', 'check_official_counts', 'carve_validation', 'DEFAULT_VAL_FRACTION',
           'read_stanford_dogs', 'read_mit_indoor67', 'read_caltech256', 'read_cub200', 'read_food101',
           'read_stanford_cars', 'read_fgvc_aircraft', 'read_dtd']

PREPARERS = Registry('dataset preparer')

# Images each official split file lists, and the number of classes, as published with the
# datasets (the papers and project pages cited in the readers' docstrings). FGVC-Aircraft's
# "train" is its official trainval split. Caltech-256 has no split file: only its class
# count is fixed (256 object categories; 257 with the clutter class).
OFFICIAL_COUNTS = {
    'stanford_dogs': {'classes': 120, 'train': 12000, 'test': 8580},
    'mit_indoor67': {'classes': 67, 'train': 5360, 'test': 1340},
    'cub200': {'classes': 200, 'train': 5994, 'test': 5794},
    'food101': {'classes': 101, 'train': 75750, 'test': 25250},
    'stanford_cars': {'classes': 196, 'train': 8144, 'test': 8041},
    'fgvc_aircraft': {'classes': 100, 'train': 6667, 'test': 3333},
    'dtd': {'classes': 47, 'train': 1880, 'val': 1880, 'test': 1880},
    'caltech256_30': {'classes': 256},
    'caltech256_60': {'classes': 256},
}


class SplitSpec:
    """What a reader found.

    ``name``; ``root``: folder the relpaths are relative to; ``classes``: names, label =
    index; ``splits``: ordered ``{split: [(label, relpath), ...]}`` with split names
    ``train``, ``val``, ``test`` (a set without an official val has ``train``/``test``);
    ``split_files``: the official files the splits come from (their SHA-1s go into
    ``dataset.json``); ``protocol``: one line saying how the splits were formed;
    ``expected``: published counts (``classes`` and images per split) the official files
    must give (default: :data:`OFFICIAL_COUNTS` of ``name``, empty when unknown).
    """

    def __init__(self, name, root, classes, splits, split_files, protocol, expected=None):
        self.name, self.root, self.classes = name, root, list(classes)
        self.splits = collections.OrderedDict(splits)
        self.split_files, self.protocol = list(split_files), protocol
        self.expected = dict(OFFICIAL_COUNTS.get(name, {}) if expected is None else expected)

    @property
    def num_classes(self):
        return len(self.classes)

    def counts(self):
        return {k: len(v) for k, v in self.splits.items()}

    def __repr__(self):
        return 'SplitSpec(%s, %d classes, %s)' % (self.name, self.num_classes, self.counts())


def read_split(name, src_dir, **options):
    """:class:`SplitSpec` of dataset ``name`` read from ``src_dir``; ``options`` go to the
    reader (ConfigError when it does not take one)."""
    import inspect
    reader = PREPARERS.get(name)
    params = inspect.signature(reader).parameters
    for k in options:
        if k not in params:
            raise ConfigError('option %s does not apply to %s (it takes: %s)' % (
                k, name, ', '.join(p for p in params if p != 'src_dir') or 'none'))
    return reader(src_dir, **options)


# ---------------------------------------------------------------- helpers

def _pick_root(src, subdirs, marker):
    """``src`` or ``src/<subdir>`` holding ``marker`` (the first that does), else ``src``."""
    src = os.path.abspath(os.path.expanduser(src))
    if not os.path.isdir(src):
        raise DataError('%s: source dir not found' % src)
    for d in [src] + [os.path.join(src, s) for s in subdirs]:
        if os.path.exists(os.path.join(d, marker)):
            return d
    return src


def _require(root, rels, layout):
    """Raise DataError naming the first of ``rels`` (relative to ``root``) that is missing."""
    for rel in rels:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            raise DataError('%s not found (expected %s)' % (path, layout))
    return [os.path.join(root, r) for r in rels]


def check_images(spec, layout=''):
    """Raise DataError naming the first image a split lists that is not a file."""
    for split, rows in spec.splits.items():
        for _, rel in rows:
            if not os.path.isfile(os.path.join(spec.root, rel)):
                raise DataError('%s not found: %s split lists it; the tree is incomplete%s' % (
                    os.path.join(spec.root, rel), split, ' (expected %s)' % layout if layout else ''))


def check_official_counts(spec):
    """Raise one DataError line listing every count of ``spec`` (classes, images per split)
    that differs from ``spec.expected``, the published numbers: a partly extracted archive,
    a truncated or edited split file or another release shows up here, before any packing."""
    exp = spec.expected
    bad = []
    if 'classes' in exp and spec.num_classes != exp['classes']:
        bad.append('%d classes, expected %d' % (spec.num_classes, exp['classes']))
    for split in ('train', 'val', 'test'):
        if split in exp and split in spec.splits and len(spec.splits[split]) != exp[split]:
            bad.append('the official %s split lists %d images, expected %d' % (
                split, len(spec.splits[split]), exp[split]))
    if bad:
        files = ', '.join(os.path.basename(p) for p in spec.split_files) or spec.root
        raise DataError('%s in %s: %s (read from %s): not the complete official release; '
                        'pass --no-count-check to pack it anyway' % (spec.name, spec.root, '; '.join(bad), files))


def _lines(path):
    with open(path, encoding='utf-8') as f:
        return [ln.strip() for ln in f if ln.strip()]


def _id_value_lines(path, what):
    """``{int id: rest of line}`` for ``"<id> <value>"`` lines."""
    out = collections.OrderedDict()
    for n, ln in enumerate(_lines(path), 1):
        parts = ln.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError('%s: line %d is not "<id> <%s>"' % (path, n, what))
        out[int(parts[0])] = parts[1].strip()
    return out


def _loadmat(path, **kw):
    try:
        import scipy.io
    except ImportError:
        raise DataError('%s: reading MATLAB files needs scipy (pip install -r requirements.txt, '
                        'or pip install scipy)' % path) from None
    try:
        return scipy.io.loadmat(path, **kw)
    except Exception as e:  # scipy raises several types for a damaged file
        raise DataError('%s: cannot read MATLAB file (%s)' % (path, e)) from None


def _mat_strings(arr):
    """Strings from a MATLAB cell array as loadmat returns it (nested object arrays)."""
    out = []
    for x in np.asarray(arr, dtype=object).ravel():
        while isinstance(x, np.ndarray):
            x = x.ravel()[0] if x.size else ''
        out.append(str(x))
    return out


def _labels_from_folders(rows_by_split, path_hint):
    """Classes = sorted first path components; rows become ``(label, relpath)``."""
    names = sorted({r.split('/')[0] for rows in rows_by_split.values() for r in rows})
    index = {c: i for i, c in enumerate(names)}
    splits = collections.OrderedDict()
    for split, rows in rows_by_split.items():
        out = []
        for r in rows:
            if '/' not in r:
                raise DataError('%s: entry %r is not "<class>/<file>"' % (path_hint, r))
            out.append((index[r.split('/')[0]], r))
        splits[split] = out
    return names, splits


# ---------------------------------------------------------------- readers

DOGS_LAYOUT = ('Stanford Dogs layout: SRC/Images/<wnid-breed>/<file>.jpg (images.tar) and '
               'train_list.mat, test_list.mat in SRC or SRC/lists (lists.tar)')


@PREPARERS.register('stanford_dogs')
def read_stanford_dogs(src_dir):
    """Stanford Dogs (Khosla et al. 2011), 120 breeds, 12,000 train / 8,580 test.

    Download (http://vision.stanford.edu/aditya86/ImageNetDogs/): ``images.tar`` and
    ``lists.tar``. Expected tree::

        SRC/Images/n02085620-Chihuahua/n02085620_10074.jpg ...
        SRC/train_list.mat  SRC/test_list.mat        (or SRC/lists/*.mat)

    ``*_list.mat`` hold ``file_list`` (paths relative to ``Images/``) and ``labels``
    (1-based). Label ``k - 1``; class name = the folder of its images (``n02085620-Chihuahua``),
    so ``classes.txt`` is in the official label order. There is no official val split.
    """
    root = _pick_root(src_dir, ['StanfordDogs', 'stanford_dogs'], 'Images')
    lists = root if os.path.exists(os.path.join(root, 'train_list.mat')) or \
        not os.path.exists(os.path.join(root, 'lists', 'train_list.mat')) else os.path.join(root, 'lists')
    files = _require(lists, ['train_list.mat', 'test_list.mat'], DOGS_LAYOUT)
    _require(root, ['Images'], DOGS_LAYOUT)
    names = {}
    splits = collections.OrderedDict()
    for split, path in zip(('train', 'test'), files):
        m = _loadmat(path)
        if 'file_list' not in m or 'labels' not in m:
            raise DataError('%s: no file_list/labels variables (is it the Stanford Dogs list?)' % path)
        rels = _mat_strings(m['file_list'])
        labels = np.asarray(m['labels']).ravel().astype(np.int64) - 1
        if len(rels) != len(labels):
            raise DataError('%s: %d files but %d labels' % (path, len(rels), len(labels)))
        rows = []
        for rel, lab in zip(rels, labels):
            rel = rel.replace('\\', '/')
            folder = rel.split('/')[0]
            if lab < 0:
                raise DataError('%s: label %d is not 1-based' % (path, lab + 1))
            if names.setdefault(int(lab), folder) != folder:
                raise DataError('%s: label %d used for folders %s and %s' % (path, lab + 1, names[lab], folder))
            rows.append((int(lab), 'Images/' + rel))
        splits[split] = rows
    k = max(names) + 1
    missing = [i + 1 for i in range(k) if i not in names]
    if missing:
        raise DataError('%s: label %d has no image in either list' % (files[0], missing[0]))
    return SplitSpec('stanford_dogs', root, [names[i] for i in range(k)], splits, files,
                     'official train_list.mat / test_list.mat')


INDOOR_LAYOUT = ('MIT Indoor-67 layout: SRC/Images/<class>/<file>.jpg (indoorCVPR_09.tar) and '
                 'SRC/TrainImages.txt, SRC/TestImages.txt')


@PREPARERS.register('mit_indoor67')
def read_mit_indoor67(src_dir):
    """MIT Indoor-67 (Quattoni & Torralba 2009), 67 scene classes, 5,360 train / 1,340 test
    (80 / 20 per class).

    Download (http://web.mit.edu/torralba/www/indoor.html): ``indoorCVPR_09.tar``,
    ``TrainImages.txt``, ``TestImages.txt``. Expected tree::

        SRC/Images/airport_inside/airport_inside_0001.jpg ...
        SRC/TrainImages.txt  SRC/TestImages.txt       (lines "airport_inside/<file>.jpg")

    Classes: the sorted class folder names appearing in the lists (no official class file).
    A few files of the archive are not decodable JPEGs in some copies: :func:`prepare_dataset`
    lists them and stops; with ``skip_corrupt`` (``--skip-corrupt``) it leaves them out and
    records them in ``dataset.json`` (``skipped``).
    """
    root = _pick_root(src_dir, ['indoorCVPR_09'], 'TrainImages.txt')
    files = _require(root, ['TrainImages.txt', 'TestImages.txt', 'Images'], INDOOR_LAYOUT)[:2]
    rows = collections.OrderedDict((s, [ln.replace('\\', '/') for ln in _lines(p)])
                                   for s, p in zip(('train', 'test'), files))
    names, splits = _labels_from_folders(rows, files[0])
    splits = collections.OrderedDict((s, [(lab, 'Images/' + r) for lab, r in v]) for s, v in splits.items())
    return SplitSpec('mit_indoor67', root, names, splits, files, 'official TrainImages.txt / TestImages.txt')


CALTECH_LAYOUT = ('Caltech-256 layout: SRC/256_ObjectCategories/001.ak47/001_0001.jpg ... '
                  '257.clutter/ (256_ObjectCategories.tar)')
_CALTECH_DIR = re.compile(r'^(\d{3})\.(.+)$')


def read_caltech256(src_dir, per_class, seed=0, test_per_class=None, with_clutter=False):
    """Caltech-256 (Griffin et al. 2007) with ``per_class`` training images per class.

    Download (https://data.caltech.edu/records/nyv15-4j048, formerly
    http://www.vision.caltech.edu/Image_Datasets/Caltech256/): ``256_ObjectCategories.tar``.
    Expected tree::

        SRC/256_ObjectCategories/001.ak47/001_0001.jpg ... 256.toad/  257.clutter/

    Protocol (no official split file exists): classes are the numbered folders in number
    order; per class, the image files directly in its folder (sorted names) are permuted
    with ``SeedSequence([seed, class number])``; train = the first ``per_class``, test =
    all the others, or with ``test_per_class=T`` the last ``T`` of the permutation (so the
    30- and 60-per-class protocols share one test set and the 30-image train set lies in
    the 60-image one). The reference notes do not give a fixed test count for the DELTA/AFA
    Caltech-256-30/60 sets (the L2-SP code only has ``--examples_per_class``), so "the rest"
    is the default. ``257.clutter`` is excluded unless ``with_clutter``: it is a background
    class ("none of the 256"), the set is named and evaluated as 256 object categories, and
    the presets have 256 classes.
    """
    root = _pick_root(src_dir, [], '256_ObjectCategories')
    cat_dir = _require(root, ['256_ObjectCategories'], CALTECH_LAYOUT)[0]
    folders = []
    for d in os.listdir(cat_dir):
        m = _CALTECH_DIR.match(d)
        if m and os.path.isdir(os.path.join(cat_dir, d)):
            if m.group(2) == 'clutter' and not with_clutter:
                continue
            folders.append((int(m.group(1)), d))
    folders.sort()
    if not folders:
        raise DataError('%s: no class folders "NNN.name" found (expected %s)' % (cat_dir, CALTECH_LAYOUT))
    per_class = int(per_class)
    need = per_class + (int(test_per_class) if test_per_class else 1)
    train, test = [], []
    for label, (num, d) in enumerate(folders):
        files = sorted(f for f in os.listdir(os.path.join(cat_dir, d))
                       if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(cat_dir, d, f)))
        if len(files) < need:
            raise DataError('%s: %d images, the protocol needs at least %d (%d train + %s test)' % (
                os.path.join(cat_dir, d), len(files), need, per_class, test_per_class or 'some'))
        ss = np.random.SeedSequence([int(seed) & 0xffffffff, num])
        perm = np.random.RandomState(ss.generate_state(4)).permutation(len(files))
        tr = perm[:per_class]
        te = perm[len(files) - int(test_per_class):] if test_per_class else perm[per_class:]
        train += [(label, '256_ObjectCategories/%s/%s' % (d, files[i])) for i in sorted(tr)]
        test += [(label, '256_ObjectCategories/%s/%s' % (d, files[i])) for i in sorted(te)]
    name = 'caltech256_%d' % per_class
    expected = dict(OFFICIAL_COUNTS.get(name, {}))
    if with_clutter and 'classes' in expected:
        expected['classes'] += 1
    protocol = '%d train per class (seed %d), test = %s; %s' % (
        per_class, seed, 'last %d of the permutation' % test_per_class if test_per_class else 'the rest',
        'with 257.clutter' if with_clutter else '257.clutter excluded')
    return SplitSpec(name, root, [d for _, d in folders], [('train', train), ('test', test)], [], protocol,
                     expected=expected)


@PREPARERS.register('caltech256_30')
def read_caltech256_30(src_dir, seed=0, test_per_class=None, with_clutter=False):
    """Caltech-256, 30 training images per class (:func:`read_caltech256`)."""
    return read_caltech256(src_dir, 30, seed, test_per_class, with_clutter)


@PREPARERS.register('caltech256_60')
def read_caltech256_60(src_dir, seed=0, test_per_class=None, with_clutter=False):
    """Caltech-256, 60 training images per class (:func:`read_caltech256`)."""
    return read_caltech256(src_dir, 60, seed, test_per_class, with_clutter)


CUB_LAYOUT = ('CUB-200-2011 layout: SRC[/CUB_200_2011]/images.txt, image_class_labels.txt, '
              'train_test_split.txt, classes.txt, images/<NNN.Class>/<file>.jpg')


@PREPARERS.register('cub200')
def read_cub200(src_dir):
    """Caltech-UCSD Birds-200-2011 (Wah et al. 2011), 200 species, 5,994 train / 5,794 test.

    Download (https://www.vision.caltech.edu/datasets/cub_200_2011/, archive
    ``CUB_200_2011.tgz``, now hosted at https://data.caltech.edu/records/65de6-vp158).
    Expected tree (SRC may be the ``CUB_200_2011`` folder or its parent)::

        images.txt             "<image id> 001.Black_footed_Albatross/<file>.jpg"
        image_class_labels.txt "<image id> <class id 1..200>"
        train_test_split.txt   "<image id> <1 = train, 0 = test>"
        classes.txt            "<class id> 001.Black_footed_Albatross"
        images/001.Black_footed_Albatross/<file>.jpg ...

    Label = class id - 1; class names from ``classes.txt``; rows in image-id order.
    """
    root = _pick_root(src_dir, ['CUB_200_2011'], 'images.txt')
    files = _require(root, ['images.txt', 'image_class_labels.txt', 'train_test_split.txt',
                            'classes.txt', 'images'], CUB_LAYOUT)[:4]
    images = _id_value_lines(files[0], 'path')
    labels = _id_value_lines(files[1], 'class id')
    is_train = _id_value_lines(files[2], '0 or 1')
    classes = _id_value_lines(files[3], 'class name')
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        raise DataError('%s: class ids are not 1..%d' % (files[3], len(ids)))
    train, test = [], []
    for img_id, rel in images.items():
        for table, path in ((labels, files[1]), (is_train, files[2])):
            if img_id not in table:
                raise DataError('%s: image id %d (%s) is missing' % (path, img_id, rel))
        try:
            lab, tr = int(labels[img_id]), int(is_train[img_id])
        except ValueError:
            raise DataError('%s / %s: image id %d has a non-integer value' % (files[1], files[2], img_id)) from None
        if not 1 <= lab <= len(ids):
            raise DataError('%s: image id %d has class %d, not in 1..%d' % (files[1], img_id, lab, len(ids)))
        (train if tr == 1 else test).append((lab - 1, 'images/' + rel))
    return SplitSpec('cub200', root, [classes[i] for i in ids], [('train', train), ('test', test)],
                     files, 'official train_test_split.txt')


FOOD_LAYOUT = ('Food-101 layout: SRC[/food-101]/meta/classes.txt, meta/train.txt, meta/test.txt, '
               'images/<class>/<id>.jpg')


@PREPARERS.register('food101')
def read_food101(src_dir):
    """Food-101 (Bossard et al. 2014), 101 dishes, 75,750 train / 25,250 test (750 / 250 per class).

    Download (https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/):
    ``food-101.tar.gz``. Expected tree::

        SRC/meta/classes.txt                 "apple_pie" ... (official class order)
        SRC/meta/train.txt, meta/test.txt    "apple_pie/1005649" (no extension)
        SRC/images/apple_pie/1005649.jpg ...
    """
    root = _pick_root(src_dir, ['food-101'], os.path.join('meta', 'classes.txt'))
    files = _require(root, ['meta/classes.txt', 'meta/train.txt', 'meta/test.txt', 'images'],
                     FOOD_LAYOUT)[:3]
    classes = _lines(files[0])
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split, path in zip(('train', 'test'), files[1:]):
        rows = []
        for n, ln in enumerate(_lines(path), 1):
            c = ln.split('/')[0]
            if c not in index:
                raise DataError('%s: line %d: class %r is not in %s' % (path, n, c, files[0]))
            rows.append((index[c], 'images/%s.jpg' % ln))
        splits.append((split, rows))
    return SplitSpec('food101', root, classes, splits, files, 'official meta/train.txt / meta/test.txt')


CARS_LAYOUT = ('Stanford Cars layout: SRC/cars_train/*.jpg, SRC/cars_test/*.jpg, '
               'SRC/devkit/{cars_meta.mat,cars_train_annos.mat} and cars_test_annos_withlabels.mat '
               'in SRC or SRC/devkit')


@PREPARERS.register('stanford_cars')
def read_stanford_cars(src_dir):
    """Stanford Cars (Krause et al. 2013), 196 models, 8,144 train / 8,041 test.

    Supported layout: the original release (``cars_train.tgz``, ``cars_test.tgz``,
    ``car_devkit.tgz`` and ``cars_test_annos_withlabels.mat`` from
    https://ai.stanford.edu/~jkrause/cars/car_dataset.html, a dead link now; torchvision's
    ``stanford_cars`` folder has the same tree)::

        SRC/cars_train/00001.jpg ...           SRC/cars_test/00001.jpg ...
        SRC/devkit/cars_meta.mat               class_names: 1 x 196 cell
        SRC/devkit/cars_train_annos.mat        annotations: struct (bbox_*, class, fname)
        SRC/cars_test_annos_withlabels.mat     (or in devkit/) same struct, with class

    Label = ``class - 1`` (1-based in the .mat); names from ``cars_meta.mat``. Bounding boxes
    are ignored (whole images, as the transfer papers use them). The single-file
    ``cars_annos.mat`` of the later release is not supported.
    """
    root = _pick_root(src_dir, ['stanford_cars'], 'devkit')
    test_annos = 'cars_test_annos_withlabels.mat'
    if not os.path.exists(os.path.join(root, test_annos)) and \
            os.path.exists(os.path.join(root, 'devkit', test_annos)):
        test_annos = 'devkit/' + test_annos
    files = _require(root, ['devkit/cars_meta.mat', 'devkit/cars_train_annos.mat', test_annos,
                            'cars_train', 'cars_test'], CARS_LAYOUT)[:3]
    meta = _loadmat(files[0])
    if 'class_names' not in meta:
        raise DataError('%s: no class_names variable' % files[0])
    classes = _mat_strings(meta['class_names'])
    splits = []
    for split, path, folder in (('train', files[1], 'cars_train'), ('test', files[2], 'cars_test')):
        ann = _loadmat(path, squeeze_me=True).get('annotations')
        if ann is None or ann.dtype.names is None or not {'fname', 'class'} <= set(ann.dtype.names):
            raise DataError('%s: no annotations struct with fname and class fields' % path)
        ann = np.atleast_1d(ann)
        rows = []
        for fname, cls in zip(ann['fname'], ann['class']):
            lab = int(np.asarray(cls).ravel()[0]) - 1
            if not 0 <= lab < len(classes):
                raise DataError('%s: %s has class %d, not in 1..%d' % (path, fname, lab + 1, len(classes)))
            rows.append((lab, '%s/%s' % (folder, _mat_strings([fname])[0])))
        splits.append((split, rows))
    return SplitSpec('stanford_cars', root, classes, splits, files,
                     'official cars_train_annos.mat / cars_test_annos_withlabels.mat')


AIRCRAFT_LAYOUT = ('FGVC-Aircraft layout: SRC[/fgvc-aircraft-2013b][/data]/variants.txt, '
                   'images_variant_trainval.txt, images_variant_test.txt, images/<id>.jpg')


@PREPARERS.register('fgvc_aircraft')
def read_fgvc_aircraft(src_dir):
    """FGVC-Aircraft 2013b (Maji et al. 2013), variant level: 100 classes, 6,667 trainval /
    3,333 test.

    Download (https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/):
    ``fgvc-aircraft-2013b.tar.gz``. Expected tree::

        SRC/fgvc-aircraft-2013b/data/variants.txt                  one variant name per line
        .../data/images_variant_trainval.txt, images_variant_test.txt   "1025794 707-320"
        .../data/images/1025794.jpg ...

    Train = the official ``trainval`` split (as TLlib and the non-binary reference train on
    it), test = ``test``; names may contain spaces and '/' (``F/A-18``). Images keep their
    20-pixel copyright banner at the bottom (not cropped).
    """
    base = _pick_root(src_dir, ['data', 'fgvc-aircraft-2013b/data'], 'variants.txt')
    files = _require(base, ['variants.txt', 'images_variant_trainval.txt', 'images_variant_test.txt',
                            'images'], AIRCRAFT_LAYOUT)[:3]
    classes = _lines(files[0])
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split, path in zip(('train', 'test'), files[1:]):
        rows = []
        for n, ln in enumerate(_lines(path), 1):
            parts = ln.split(None, 1)  # ids keep their leading zeros ("0034309")
            if len(parts) != 2:
                raise DataError('%s: line %d is not "<image id> <variant>"' % (path, n))
            img_id, variant = parts[0], parts[1].strip()
            if variant not in index:
                raise DataError('%s: line %d: variant %r is not in %s' % (path, n, variant, files[0]))
            rows.append((index[variant], 'images/%s.jpg' % img_id))
        splits.append((split, rows))
    return SplitSpec('fgvc_aircraft', base, classes, splits, files,
                     'official images_variant_trainval.txt / images_variant_test.txt')


DTD_LAYOUT = ('DTD layout: SRC[/dtd]/images/<class>/<file>.jpg and labels/train<k>.txt, '
              'val<k>.txt, test<k>.txt')


@PREPARERS.register('dtd')
def read_dtd(src_dir, split=1):
    """Describable Textures Dataset (Cimpoi et al. 2014), 47 classes, split ``k`` (1..10):
    1,880 train / 1,880 val / 1,880 test (40 per class each).

    Download (https://www.robots.ox.ac.uk/~vgg/data/dtd/): ``dtd-r1.0.1.tar.gz``.
    Expected tree::

        SRC/dtd/images/banded/banded_0002.jpg ...
        SRC/dtd/labels/train1.txt, val1.txt, test1.txt     "banded/banded_0002.jpg"

    Classes: the sorted class names of the split files (alphabetical, as the folders).
    """
    k = int(split)
    if not 1 <= k <= 10:
        raise ConfigError('DTD split must be 1..10, got %r' % split)
    root = _pick_root(src_dir, ['dtd'], 'labels')
    files = _require(root, ['labels/train%d.txt' % k, 'labels/val%d.txt' % k, 'labels/test%d.txt' % k,
                            'images'], DTD_LAYOUT)[:3]
    rows = collections.OrderedDict((s, _lines(p)) for s, p in zip(('train', 'val', 'test'), files))
    names, splits = _labels_from_folders(rows, files[0])
    splits = collections.OrderedDict((s, [(lab, 'images/' + r) for lab, r in v]) for s, v in splits.items())
    return SplitSpec('dtd', root, names, splits, files, 'official labels/{train,val,test}%d.txt' % k)


LAYOUTS = {'stanford_dogs': DOGS_LAYOUT, 'mit_indoor67': INDOOR_LAYOUT, 'caltech256_30': CALTECH_LAYOUT,
           'caltech256_60': CALTECH_LAYOUT, 'cub200': CUB_LAYOUT, 'food101': FOOD_LAYOUT,
           'stanford_cars': CARS_LAYOUT, 'fgvc_aircraft': AIRCRAFT_LAYOUT, 'dtd': DTD_LAYOUT}


# ---------------------------------------------------------------- packing a prepared set

DEFAULT_RESIZE = 320



def _write_if_changed(path, text):
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path + '.part', 'w') as f:
        f.write(text)
    os.replace(path + '.part', path)


def fraction_name(fraction):
    """``'train_15'`` for 0.15, ``'train_12.5'`` for 0.125."""
    return 'train_%s' % ('%g' % (100.0 * float(fraction)))


DEFAULT_VAL_FRACTION = 0.1


def carve_validation(rows, classes, fraction=None, per_class=None, seed=0):
    """Split the official training rows ``[(label, relpath), ...]`` into ``(train, val)``.

    Per class ``c`` with ``n_c`` training images, ``k_c`` of them go to val: ``per_class``,
    or else ``max(1, floor(F n_c + 1/2))`` for ``F = fraction`` (default
    :data:`DEFAULT_VAL_FRACTION`, 10 %; :func:`~gluon_transfer.data.datasets.subset_count`),
    chosen by the seeded class-balanced draw of
    :func:`~gluon_transfer.data.datasets.class_balanced_subset` over the official order
    (``SeedSequence([seed, c])``), so a seed fixes the split. Every class keeps at least one
    training image (a :class:`DataError` names a class that would not). Both lists keep the
    official order."""
    from .datasets import class_balanced_subset
    if per_class is not None and fraction is not None:
        raise ConfigError('give a validation fraction or a count per class, not both')
    if per_class is None:
        fraction = DEFAULT_VAL_FRACTION if fraction is None else float(fraction)
        if not 0 < fraction < 1:
            raise ConfigError('validation fraction must be in (0, 1), got %r' % fraction)
    elif int(per_class) != per_class or per_class < 1:
        raise ConfigError('validation images per class must be a positive integer, got %r' % (per_class,))
    labels = np.array([lab for lab, _ in rows], np.int64)
    pos = class_balanced_subset(labels, np.arange(len(rows)), fraction, seed, per_class=per_class)
    n_all = np.bincount(labels, minlength=len(classes))
    n_val = np.bincount(labels[pos], minlength=len(classes))
    short = np.nonzero(n_all - n_val < 1)[0]
    if len(short):
        c = int(short[0])
        raise DataError('class %r has %d training image(s): a validation split of %d leaves none to train on '
                        '(lower --val-fraction / --val-per-class)' % (classes[c], n_all[c], n_val[c]))
    val_pos = set(pos.tolist())
    return ([r for i, r in enumerate(rows) if i not in val_pos], [r for i, r in enumerate(rows) if i in val_pos])


def _read_json(path):
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path, obj):
    import json
    tmp = '%s.part%d' % (path, os.getpid())
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _claim_out_dir(out_dir, name, src_dir, classes, split_names, stems, force):
    """Refuse (DataError naming the file) an ``out_dir`` holding another set's files, then
    write a provisional ``dataset.json`` naming this set, so that a run interrupted later
    is recognised as this set's own partial output. ``force`` skips the checks."""
    from .pack import check_overwrite, read_classes
    man_path = os.path.join(out_dir, 'dataset.json')
    man = _read_json(man_path) if os.path.exists(man_path) else None
    if not force:
        if os.path.exists(man_path):
            if not isinstance(man, dict) or (man.get('name'), man.get('source_dir')) != (name, src_dir):
                what = ('%s prepared from %s' % (man.get('name'), man.get('source_dir'))
                        if isinstance(man, dict) else 'something unreadable')
                raise DataError('%s describes %s; refusing to overwrite that set with %s from %s (pass --force, '
                                'or choose another output folder)' % (man_path, what, name, src_dir))
        else:
            cpath = os.path.join(out_dir, 'classes.txt')
            if os.path.exists(cpath) and read_classes(cpath) != list(classes):
                raise DataError('%s exists with other class names; refusing to overwrite it (pass --force, or '
                                'choose another output folder)' % cpath)
            for stem in stems:
                for ext in ('.rec', '.idx'):
                    if os.path.exists(os.path.join(out_dir, stem + ext)):
                        raise DataError('%s exists and was not written by preparing %s; refusing to overwrite it '
                                        '(pass --force, or choose another output folder)'
                                        % (os.path.join(out_dir, stem + ext), name))
        for split in split_names:
            check_overwrite(os.path.join(out_dir, split), os.path.join(out_dir, 'lists', split + '.lst'))
    os.makedirs(os.path.join(out_dir, 'lists'), exist_ok=True)
    if not (isinstance(man, dict) and (man.get('name'), man.get('source_dir')) == (name, src_dir)):
        _write_json(man_path, {'name': name, 'source_dir': src_dir, 'complete': False})


def prepare_dataset(name, src_dir, out_dir, resize=DEFAULT_RESIZE, quality=95, workers=2, seed=0,
                    val_fraction=None, val_per_class=None, fractions=(), force=False, progress=None,
                    check_counts=True, skip_corrupt=False, **reader_options):
    """Read ``name``'s official layout in ``src_dir`` and write ``out_dir``.

    Writes ``train``, ``val`` and ``test`` ``.rec/.idx/.lst`` (via
    :func:`~gluon_transfer.data.pack.pack`; the input lists are kept in ``lists/``),
    ``classes.txt`` (official order), ``train_<pct>.rec/.idx`` for each of ``fractions`` and
    ``dataset.json`` (counts, sources, options, SHA-1s of the official split files and of
    every ``.rec``).

    Splits: ``test`` is always the official test split, kept for the final evaluation
    (``tools/evaluate.py --rec-val OUT/test.rec``); model selection never sees it. ``val``
    is the official val split where the set has one (DTD), else a seeded per-class split
    carved from the official training list (:func:`carve_validation`: ``val_fraction``,
    default 10 %, at least one image per class, or ``val_per_class`` images per class;
    ``seed``), and ``train`` is the rest of the official training list. Training records
    are stored in a seeded shuffled order (so ImageRecordIter's contiguous shards each see
    every class), evaluation records in the official order.

    Checks, before anything is packed: the split files give the published numbers of
    classes and images (:data:`OFFICIAL_COUNTS`; ``check_counts=False`` skips this), every
    listed image exists, and ``out_dir`` holds no other set's files (``force=True``
    overwrites them). Images that cannot be decoded make the call fail with
    :class:`~gluon_transfer.data.pack.CorruptImagesError` listing all of them, over all
    splits, unless ``skip_corrupt`` (then they are left out and listed in ``dataset.json``).
    Published checksums of the split files are not checked: none is known for these sets
    (their SHA-1s are recorded instead).

    ``resize``: shorter side in pixels, re-encoded as JPEG ``quality`` (0 keeps the original
    bytes). Default 320: training takes random resized crops of the stored image and
    evaluation resizes the shorter side to 256 before the 224 centre crop, so 320 keeps
    crops of down to half the image area at (nearly) full 224-pixel resolution while
    storing about 3-5x fewer pixels than the originals of most of these sets.
    ``fractions``: TLlib-style sample rates, subsets of the written ``train.rec`` chosen
    with ``seed`` (the same records ``build_data(train_fraction=F, fraction_seed=seed)``
    picks from it). Returns the ``dataset.json`` dict.
    """
    import time
    from .datasets import class_balanced_subset, write_record_subset
    from .pack import pack, CorruptImagesError
    from .recordio import inspect_recordio
    t0 = time.time()
    spec = read_split(name, src_dir, **reader_options)
    for split, rows in spec.splits.items():
        if not rows:
            raise DataError('%s: the %s split of %s is empty' % (spec.root, split, name))
    if check_counts:
        check_official_counts(spec)
    check_images(spec, LAYOUTS.get(name, ''))
    for frac in fractions:
        if not 0 < float(frac) <= 1:
            raise ConfigError('fraction must be in (0, 1], got %r' % frac)
    out = collections.OrderedDict()
    sources = {}
    if 'val' in spec.splits:
        if val_fraction is not None or val_per_class is not None:
            raise ConfigError('%s has an official val split; --val-fraction / --val-per-class apply to sets '
                              'with train/test only' % name)
        for k in ('train', 'val', 'test'):
            out[k] = spec.splits[k]
            sources[k] = 'official %s split' % k
        validation = {'source': 'official'}
    else:
        out['train'], out['val'] = carve_validation(spec.splits['train'], spec.classes, val_fraction,
                                                    val_per_class, seed)
        out['test'] = spec.splits['test']
        rule = ('%d per class' % val_per_class if val_per_class is not None else
                '%g of each class, at least 1' % (DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction))
        sources.update(train='official train split minus the val split',
                       val='seeded per-class split of the official train split (%s, seed %d)' % (rule, seed),
                       test='official test split (final evaluation only)')
        validation = {'source': 'carved from the official train split',
                      'fraction': None if val_per_class is not None else
                      (DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)),
                      'per_class': val_per_class, 'seed': seed}
    src_dir = os.path.abspath(os.path.expanduser(src_dir))
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    stems = [fraction_name(f) for f in fractions]
    _claim_out_dir(out_dir, name, src_dir, spec.classes, list(out), stems, force)
    report = collections.OrderedDict()
    corrupt = []
    for split, rows in out.items():
        if split == 'train':
            order = np.random.RandomState(seed).permutation(len(rows))
            rows = [rows[i] for i in order]
        lst = os.path.join(out_dir, 'lists', split + '.lst')
        _write_if_changed(lst, ''.join('%d\t%f\t%s\n' % (i, float(lab), rel) for i, (lab, rel) in enumerate(rows)))
        try:
            rep = pack(lst, os.path.join(out_dir, split), resize=resize, quality=quality, workers=workers,
                       root=spec.root, force=force, progress=progress, skip_corrupt=skip_corrupt)
        except CorruptImagesError as e:
            corrupt += [(rel, why, split) for rel, why in e.images]
            continue
        report[split] = {'records': rep.written, 'listed': len(rows),
                         'skipped': [list(s) for s in rep.skipped], 'source': sources[split],
                         'rec': split + '.rec'}
    if corrupt:
        raise CorruptImagesError(
            '%s: %d image(s) cannot be read or decoded (first: %s in the %s split: %s); the splits holding them '
            'were not (re)written: fix or remove them, or pass --skip-corrupt to pack without them'
            % (spec.root, len(corrupt), corrupt[0][0], corrupt[0][2], corrupt[0][1]), corrupt)
    _write_if_changed(os.path.join(out_dir, 'classes.txt'), ''.join(c + '\n' for c in spec.classes))
    subsets = collections.OrderedDict()
    if fractions:
        info = inspect_recordio(os.path.join(out_dir, 'train.rec'))
        for frac in fractions:
            frac = float(frac)
            stem = fraction_name(frac)
            pos = class_balanced_subset(info.labels, info.keys, frac, seed)
            write_record_subset(info, pos, os.path.join(out_dir, stem))
            subsets[stem] = {'fraction': frac, 'seed': seed, 'records': int(len(pos)), 'rec': stem + '.rec'}
    for entry in list(report.values()) + list(subsets.values()):
        entry['rec_sha1'] = file_sha1(os.path.join(out_dir, entry['rec']))
    counts = collections.OrderedDict([('classes', spec.num_classes)] + [(k, len(v)) for k, v in spec.splits.items()])
    manifest = collections.OrderedDict([
        ('name', name), ('protocol', spec.protocol), ('source_dir', src_dir),
        ('image_root', spec.root), ('num_classes', spec.num_classes), ('classes', 'classes.txt'),
        ('validation', validation), ('splits', report), ('fractions', subsets),
        ('official_counts', collections.OrderedDict([
            ('found', counts), ('published', spec.expected or None),
            ('checked', bool(check_counts and spec.expected))])),
        ('split_files', collections.OrderedDict(
            (os.path.relpath(p, spec.root), file_sha1(p)) for p in spec.split_files)),
        ('options', dict(reader_options, resize=resize, quality=quality if resize else None, seed=seed,
                         val_fraction=val_fraction, val_per_class=val_per_class, skip_corrupt=skip_corrupt)),
        ('complete', True), ('seconds', round(time.time() - t0, 2))])
    _write_json(os.path.join(out_dir, 'dataset.json'), manifest)
    return manifest
