"""Dataset presets and :func:`build_data`, the one entry point the training scripts call.

A :class:`Preset` fixes what differs between datasets: input size, RGB mean/std in 0-255
units, the ImageRecordIter augmentation for training, the evaluation resize/crop, the
split file names and where to look by default. Presets live in ``PRESETS`` and in
``gluon_transfer.registry.DATASETS``.

Augmentation (what open-aff's training scripts use):

* ``cifar10``/``cifar100`` train: zero-pad 4, random 32 x 32 crop, random mirror
  (GluonCV ``RandomCrop(32, pad=4)`` + ``RandomFlipLeftRight``); ImageRecordIter's
  ``fill_value`` defaults to 255, so the preset sets it to 0. Eval: none.
  Mean/std (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010) x 255.
* ``imagenet`` train (``--use-rec`` path): random resized crop, area 0.08-1, aspect
  3/4-4/3, mirror, brightness/contrast/saturation 0.4, PCA noise 0.1. Eval: shorter side
  resized to ``ceil(input_size / crop_ratio)`` (256 for 224 / 0.875), centre crop.
  Mean 123.68/116.779/103.939, std 58.393/57.12/57.375.
* ``transfer`` (fine-tuning sets): ImageNet statistics and eval crop; training follows
  the DELTA/AFA reference code's ``default`` augmentation: resize to 256
  (the eval resize, ``ceil(input_size / crop_ratio)``), random ``input_size`` crop, mirror.
  ImageRecordIter resizes the shorter side (aspect kept) where the references squash the
  image to 256 x 256 (ImageRecordIter has no fixed-size resize). One preset per
  fine-grained set derives from it (:data:`TRANSFER_DATASETS`: ``stanford_dogs``,
  ``mit_indoor67``, ``caltech256_30``, ``caltech256_60``, ``cub200``, ``food101``,
  ``stanford_cars``, ``fgvc_aircraft``, ``dtd``), differing only in name and class count;
  ``tools/prepare_dataset.py`` writes their data dirs (``gluon_transfer.data.transfer_sets``).

Options every script gets through :func:`build_data` (``gluon_transfer.cli.add_augment_args``):

* ``randaugment='rand-m9-mstd0.5'``: training batches come from the Python decode pipeline
  (:class:`~gluon_transfer.data.pyrecord.PyRecordIter`: random resized crop, flip,
  RandAugment; no colour jitter, as timm) instead of ImageRecordIter; evaluation keeps
  ImageRecordIter (same preprocessing). CIFAR presets: pad-4 crop + flip, then RandAugment.
* ``pad_mode='reflect'``: CIFAR presets pad by reflection before the random crop (the
  attention-transfer reference); ImageRecordIter cannot, so training batches come from the
  Python decode pipeline (docs/benchmarks.md: loader throughput, far above training speed).
* ``random_erasing=p``: timm's pixel-mode random erasing on the normalised training batches
  (:class:`~gluon_transfer.data.augment.ErasingIter`), any pipeline.
* ``train_fraction=F``: train on a seeded class-balanced subset (:func:`class_balanced_subset`),
  copied once into a cache ``.rec/.idx`` under ``$GLUON_TRANSFER_CACHE/subsets`` (default
  ``~/.cache/gluon_transfer/subsets``; never the data folder; :func:`subset_recordio`), because ImageRecordIter
  needs a physical file: an ``.idx`` listing only some records of the full ``.rec`` does
  not work (measured: with records 0, 3, 6, 9 indexed out of 12, ImageRecordIter still
  yields all 12, in chunks running from each indexed offset to the next).
"""
import collections
import fractions
import functools
import hashlib
import json
import math
import os

import numpy as np

from ..cache import cache_dir as user_cache_dir
from ..errors import ConfigError, DataError
from ..registry import DATASETS, unknown_name_message
from .base import ArrayIter
from .recordio import RecordIter, inspect_recordio, default_idx_path

__all__ = ['Preset', 'PRESETS', 'get_preset', 'DataBundle', 'build_data', 'record_iter_kwargs',
           'resolve_data_dir', 'TRANSFER_DATASETS', 'class_balanced_subset', 'subset_count',
           'write_record_subset', 'subset_recordio', 'default_subset_dir']

CIFAR_MEAN = tuple(255.0 * m for m in (0.4914, 0.4822, 0.4465))
CIFAR_STD = tuple(255.0 * s for s in (0.2023, 0.1994, 0.2010))
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)


class Preset(collections.namedtuple('Preset', [
        'name', 'input_size', 'mean', 'std', 'train_aug', 'val_resize', 'crop_ratio',
        'num_classes', 'train_split', 'val_splits', 'binary', 'default_dir'])):
    """A dataset preset.

    ``train_aug``: ImageRecordIter keyword arguments for training (augmentation only);
    ``val_resize``: True to resize the shorter side to ``ceil(input_size / crop_ratio)``
    before the centre crop at evaluation; ``num_classes``: the usual count (the data's own
    ``classes.txt`` or labels take precedence); ``train_split`` / ``val_splits``: file
    stems looked up in a data dir (first existing val split wins); ``binary``: name of the
    CIFAR binary reader that can serve the set, or None; ``default_dir``: where to look
    when no data dir is given.
    """


CIFAR_TRAIN_AUG = {'pad': 4, 'fill_value': 0, 'rand_crop': True, 'rand_mirror': True}
IMAGENET_TRAIN_AUG = {'random_resized_crop': True, 'min_random_area': 0.08, 'max_random_area': 1.0,
                      'min_aspect_ratio': 3.0 / 4.0, 'max_aspect_ratio': 4.0 / 3.0,
                      'rand_mirror': True, 'brightness': 0.4, 'contrast': 0.4, 'saturation': 0.4,
                      'pca_noise': 0.1}
# 'resize': 'eval' = the evaluation resize for this input size (see record_iter_kwargs).
TRANSFER_TRAIN_AUG = {'resize': 'eval', 'rand_crop': True, 'rand_mirror': True}

PRESETS = collections.OrderedDict()


def register_preset(preset):
    PRESETS[preset.name] = preset
    DATASETS.register(preset.name, obj=preset)
    return preset


register_preset(Preset('cifar10', 32, CIFAR_MEAN, CIFAR_STD, CIFAR_TRAIN_AUG, False, None, 10,
                       'train', ('val', 'test'), 'cifar10', '~/.mxnet/datasets/cifar10'))
register_preset(Preset('cifar100', 32, CIFAR_MEAN, CIFAR_STD, CIFAR_TRAIN_AUG, False, None, 100,
                       'train', ('val', 'test'), 'cifar100', '~/.mxnet/datasets/cifar100'))
register_preset(Preset('imagenet', 224, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_TRAIN_AUG, True, 0.875,
                       1000, 'train', ('val', 'test'), None, '~/.mxnet/datasets/imagenet/rec'))
register_preset(Preset('transfer', 224, IMAGENET_MEAN, IMAGENET_STD, TRANSFER_TRAIN_AUG, True, 0.875,
                       None, 'train', ('val', 'test'), None, None))

# name -> number of classes; data dirs written by tools/prepare_dataset.py NAME.
TRANSFER_DATASETS = collections.OrderedDict([
    ('stanford_dogs', 120), ('mit_indoor67', 67), ('caltech256_30', 256), ('caltech256_60', 256),
    ('cub200', 200), ('food101', 101), ('stanford_cars', 196), ('fgvc_aircraft', 100), ('dtd', 47)])
for _name, _k in TRANSFER_DATASETS.items():
    register_preset(PRESETS['transfer']._replace(name=_name, num_classes=_k))


def get_preset(name):
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ConfigError(unknown_name_message('dataset preset', name, PRESETS))
    return PRESETS[name]


def record_iter_kwargs(preset, train, input_size=None, crop_ratio=None):
    """``(data_shape, aug kwargs)`` for ImageRecordIter from a preset: the preset's training
    augmentation, or for evaluation ``resize = ceil(input_size / crop_ratio)`` (when the
    preset resizes) followed by ImageRecordIter's default centre crop."""
    preset = get_preset(preset)
    size = int(input_size or preset.input_size)

    def eval_resize():
        ratio = float(crop_ratio or preset.crop_ratio)
        if not 0 < ratio <= 1:
            raise ConfigError('crop_ratio must be in (0, 1], got %r' % ratio)
        return int(math.ceil(size / ratio))
    if train:
        aug = dict(preset.train_aug)
        if aug.get('resize') == 'eval':   # resize as for evaluation, then the random crop
            aug['resize'] = eval_resize()
        return (3, size, size), aug
    aug = {}
    if preset.val_resize:
        aug['resize'] = eval_resize()
    return (3, size, size), aug


class DataBundle(collections.namedtuple('DataBundle', [
        'train', 'val', 'num_classes', 'classes', 'num_train', 'num_val', 'preset', 'source'])):
    """What :func:`build_data` returns.

    ``train``/``val``: iterators (``train`` is None with ``with_train=False``; ``val`` None
    when the data has no evaluation split); ``num_classes``; ``classes``: names or None;
    ``num_train``/``num_val``: records in the whole split (all shards; ``it.num_samples`` is
    this shard's); ``preset``: the :class:`Preset`; ``source``: 'recordio' or 'cifar-binary'.
    """


def resolve_data_dir(preset, data_dir):
    """``('recordio', train_rec, val_rec or None)`` or ``('cifar-binary', folder, None)``
    for a data dir, else :class:`DataError` saying which files were expected."""
    preset = get_preset(preset)
    data_dir = os.path.expanduser(data_dir)
    rec_names = '%s.rec/.idx and %s' % (preset.train_split, ' or '.join(
        '%s.rec/.idx' % s for s in preset.val_splits))
    expected = rec_names
    if preset.binary:
        from .cifar import CIFAR_FILES
        spec = CIFAR_FILES[preset.binary]
        expected += ', or the binary %s files (%s)' % (preset.binary, ', '.join(spec['train'] + spec['test']))
    if not os.path.isdir(data_dir):
        raise DataError('%s: data dir not found (expected %s)' % (data_dir, expected))
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError('%s: data dir is not readable' % data_dir)
    train_rec = os.path.join(data_dir, preset.train_split + '.rec')
    vals = [os.path.join(data_dir, s + '.rec') for s in preset.val_splits]
    val_rec = next((v for v in vals if os.path.exists(v)), None)
    if os.path.exists(train_rec) or val_rec is not None:
        return 'recordio', train_rec, val_rec
    if preset.binary:
        from .cifar import find_cifar_binary
        folder = find_cifar_binary(data_dir, preset.binary)
        if folder is not None:
            return 'cifar-binary', folder, None
    raise DataError('%s: no data found (expected %s)' % (data_dir, expected))


def _classes_for(rec):
    path = os.path.join(os.path.dirname(os.path.abspath(rec)), 'classes.txt')
    if os.path.isfile(path):
        from .pack import read_classes
        return read_classes(path)
    return None


def _check_labels(info, num_classes):
    labels = info.labels
    if labels.size == 0:
        return
    if not np.all(np.isfinite(labels)) or labels.min() < 0 or labels.max() >= num_classes \
            or np.any(labels != np.round(labels)):
        bad = int(np.nonzero(~np.isfinite(labels) | (labels < 0) | (labels >= num_classes)
                             | (labels != np.round(labels)))[0][0])
        raise DataError('%s: record %d has label %r, outside the %d classes [0, %d)'
                        % (info.rec, int(info.keys[bad]), float(labels[bad]), num_classes, num_classes))


def build_data(preset, data_dir=None, rec_train=None, rec_val=None, batch_size=128,
               rec_train_idx=None, rec_val_idx=None, val_batch_size=None, num_workers=2,
               num_parts=1, part_index=0, seed=0, shard_val=True,
               input_size=None, crop_ratio=None, coarse_labels=False, prefetch_buffer=2,
               verify='auto', with_train=True, train_aug=None, randaugment=None,
               random_erasing=0.0, train_fraction=None, fraction_seed=0, pipeline='auto',
               subset_dir=None, pad_mode='constant'):
    """Training and evaluation iterators for a preset.

    Data sources, in order: ``rec_train``/``rec_val`` (``.rec`` paths; their index files are
    ``rec_train_idx``/``rec_val_idx``, by default the ``.idx`` beside each, and required);
    else ``data_dir`` (default: the preset's ``default_dir``) holding
    ``train.rec/.idx`` and ``val.rec/.idx`` (``test.*`` when there is no val), or, for the
    CIFAR presets, the original binary files (read into memory, served by
    :class:`~gluon_transfer.data.base.ArrayIter` with :func:`~gluon_transfer.data.cifar.pad_crop_flip`).

    Every ``.rec`` is structure-checked, and every record ImageRecordIter will read is
    decode-checked (``verify='auto'``, at any file size; see :func:`~gluon_transfer.data.recordio.verify_decode`),
    before ImageRecordIter opens it. Classes: ``classes.txt`` next to the training
    ``.rec`` when present (its length is ``num_classes``), else ``max label + 1`` over the
    training (or, without it, evaluation) records; every label must lie below it.

    Parameters: ``batch_size`` per iterator (``val_batch_size`` defaults to it);
    ``num_workers`` ImageRecordIter ``preprocess_threads``; ``num_parts``/``part_index``
    shard the training split, and the evaluation split too unless ``shard_val=False`` (then
    every worker evaluates all of it; evaluation drops ``Batch.pad`` rows); ``seed`` with ``set_epoch``
    fixes order and augmentation; ``input_size``/``crop_ratio`` override the preset;
    ``coarse_labels``: CIFAR-100 binary only, 20 superclasses; ``train_aug``: dict merged
    over the preset's training augmentation (ImageRecordIter pipeline).

    Augmentation and subset options (module docstring): ``randaugment`` (a spec such as
    ``'rand-m9-mstd0.5'`` or a :class:`~gluon_transfer.data.augment.RandAugment`),
    ``random_erasing`` (probability, pixel mode), ``train_fraction`` (``0 < F <= 1``,
    class-balanced subset chosen with ``fraction_seed``, cached under ``subset_dir``,
    default the user cache of :func:`subset_recordio`, never the data dir), ``pipeline``:
    'auto' (Python decoding for training when RandAugment is on, else ImageRecordIter),
    'record' (ImageRecordIter only) or
    'python' (Python decoding for training and evaluation; ``num_workers`` processes).
    ``pad_mode``: how pad/crop presets (CIFAR) pad before the random crop: 'constant'
    (``fill_value``, as ImageRecordIter) or 'reflect' (the attention-transfer reference's
    ``T.Pad(4, reflect)``). ImageRecordIter only pads with a constant, so 'reflect' trains
    from the Python pipeline (RecordIO data; 'auto' switches to it, 'record' is an error) or
    from the in-memory binary CIFAR arrays.
    """
    preset = get_preset(preset)
    val_batch_size = int(val_batch_size or batch_size)
    size = int(input_size or preset.input_size)
    if coarse_labels and preset.name != 'cifar100':
        raise ConfigError('coarse_labels applies to cifar100 only, not %r' % preset.name)
    if pipeline not in ('auto', 'record', 'python'):
        raise ConfigError("pipeline must be 'auto', 'record' or 'python', got %r" % (pipeline,))
    ra = _make_randaugment(randaugment, preset)
    from .cifar import check_pad_mode
    check_pad_mode(pad_mode)
    if pad_mode != 'constant' and with_train and not preset.train_aug.get('pad'):
        raise ConfigError('pad_mode %r applies to pad + random-crop presets (e.g. cifar10, cifar100); preset %r '
                          'does not pad' % (pad_mode, preset.name))
    if pad_mode == 'reflect' and pipeline == 'record':
        raise ConfigError("ImageRecordIter pads with a constant only: reflect padding needs pipeline auto or python, "
                          "not record")
    if ra is not None and pipeline == 'record':
        raise ConfigError('RandAugment runs in Python: it needs pipeline auto or python, not record')
    erasing = None
    if random_erasing:
        from .augment import RandomErasing
        erasing = RandomErasing(float(random_erasing))
    if train_fraction is not None:
        train_fraction = float(train_fraction)
        if not 0 < train_fraction <= 1:
            raise ConfigError('train_fraction must be in (0, 1], got %r' % train_fraction)
    if rec_train or rec_val:
        source, train_rec, val_rec = 'recordio', rec_train, rec_val
    else:
        data_dir = data_dir or preset.default_dir
        if not data_dir:
            raise ConfigError('preset %r has no default data dir: pass data_dir (--data-dir) or '
                              'rec_train/rec_val' % preset.name)
        source, train_rec, val_rec = resolve_data_dir(preset, data_dir)
    if source == 'cifar-binary':
        if train_fraction not in (None, 1.0):
            raise ConfigError('train_fraction needs RecordIO data (pack the CIFAR set with tools/pack.py)')
        if pipeline == 'python':
            raise ConfigError("pipeline 'python' reads RecordIO; the binary CIFAR files are "
                              "served from memory (RandAugment works there too)")
        bundle = _build_cifar_binary(preset, train_rec, batch_size, val_batch_size, num_parts,
                                     part_index, seed, coarse_labels, with_train, ra, shard_val, pad_mode)
        if erasing is not None and bundle.train is not None:
            from .augment import ErasingIter
            bundle = bundle._replace(train=ErasingIter(bundle.train, erasing, seed))
        return bundle
    if coarse_labels:
        raise ConfigError('coarse_labels needs the binary CIFAR-100 files (a .rec stores one label)')

    train_info = val_info = None
    if with_train:
        if not train_rec:
            raise ConfigError('no training data: pass rec_train or a data dir with train.rec')
        train_info = inspect_recordio(train_rec, rec_train_idx or default_idx_path(train_rec))
        if train_fraction not in (None, 1.0):
            train_info = subset_recordio(train_info, train_fraction, fraction_seed, subset_dir)
    if val_rec:
        val_info = inspect_recordio(val_rec, rec_val_idx or default_idx_path(val_rec))
    ref = train_info or val_info
    if ref is None:
        raise ConfigError('no evaluation data: pass rec_val or a data dir with val.rec or test.rec')
    classes = _classes_for(train_rec if train_info is not None else val_rec)
    if classes is not None:
        num_classes = len(classes)
    else:
        num_classes = int(np.max(ref.labels)) + 1
    for info in (train_info, val_info):
        if info is not None:
            _check_labels(info, num_classes)

    common = dict(mean=preset.mean, std=preset.std, num_parts=num_parts, part_index=part_index,
                  seed=seed, preprocess_threads=num_workers, prefetch_buffer=prefetch_buffer,
                  verify=verify)
    train = val = None
    py_train = pipeline == 'python' or ra is not None or pad_mode == 'reflect'
    if train_info is not None:
        shape, aug = record_iter_kwargs(preset, True, size, crop_ratio)
        aug.update(train_aug or {})
        if py_train:
            train = _py_iter(train_info, batch_size, shape, preset, aug, True, ra, common, pad_mode)
        else:
            train = RecordIter(train_info.rec, train_info.idx, batch_size, shape, aug=aug, train=True,
                               info=train_info, **common)
        if erasing is not None:
            from .augment import ErasingIter
            train = ErasingIter(train, erasing, seed)
    if val_info is not None:
        shape, aug = record_iter_kwargs(preset, False, size, crop_ratio)
        vcommon = common if shard_val else dict(common, num_parts=1, part_index=0)
        if pipeline == 'python':
            val = _py_iter(val_info, val_batch_size, shape, preset, aug, False, None, vcommon)
        else:
            val = RecordIter(val_info.rec, val_info.idx, val_batch_size, shape, aug=aug, train=False,
                             info=val_info, **vcommon)
    return DataBundle(train, val, num_classes, classes,
                      train_info.num_records if train_info is not None else 0,
                      val_info.num_records if val_info is not None else 0, preset, 'recordio')


def _build_cifar_binary(preset, folder, batch_size, val_batch_size, num_parts, part_index, seed,
                        coarse, with_train, randaugment=None, shard_val=True, pad_mode='constant'):
    from .cifar import read_cifar_binary, pad_crop_flip
    train = None
    num_train = 0
    names = None
    if with_train:
        x, y, names = read_cifar_binary(folder, preset.binary, train=True, coarse=coarse)
        num_train = len(y)
        if randaugment is None:
            augment = pad_crop_flip if pad_mode == 'constant' else functools.partial(pad_crop_flip, pad_mode=pad_mode)
        else:
            augment = _CifarRandAugment(randaugment, pad_mode)
        train = ArrayIter(x, y, batch_size, mean=preset.mean, std=preset.std, shuffle=True,
                          augment=augment, last_batch='rollover', num_parts=num_parts,
                          part_index=part_index, seed=seed)
    xv, yv, vnames = read_cifar_binary(folder, preset.binary, train=False, coarse=coarse)
    names = names or vnames
    val = ArrayIter(xv, yv, val_batch_size, mean=preset.mean, std=preset.std, shuffle=False,
                    last_batch='pad', num_parts=num_parts if shard_val else 1,
                    part_index=part_index if shard_val else 0, seed=seed)
    num_classes = 20 if coarse else preset.num_classes
    if names is not None and len(names) != num_classes:
        names = None
    return DataBundle(train, val, num_classes, names, num_train, len(yv), preset, 'cifar-binary')


class _CifarRandAugment:
    """ArrayIter augment: pad-4 crop + flip, then RandAugment on each image (NCHW uint8)."""

    def __init__(self, randaugment, pad_mode='constant'):
        self.randaugment = randaugment
        self.pad_mode = pad_mode

    def __call__(self, imgs, rng):
        from .cifar import pad_crop_flip
        imgs = pad_crop_flip(imgs, rng, pad_mode=self.pad_mode)
        out = np.empty_like(imgs)
        for i in range(len(imgs)):
            hwc = np.ascontiguousarray(imgs[i].transpose(1, 2, 0))
            out[i] = self.randaugment(hwc, rng).transpose(2, 0, 1)
        return out


def _make_randaugment(spec, preset):
    if spec is None or spec is False or spec == '':
        return None
    from .augment import RandAugment
    if isinstance(spec, RandAugment):
        return spec
    return RandAugment(str(spec), fill=preset.mean)


def _py_iter(info, batch_size, shape, preset, aug, train, randaugment, common, pad_mode='constant'):
    """A :class:`~gluon_transfer.data.pyrecord.PyRecordIter` with the preset's geometry:
    random resized crop (area/aspect from the preset) or, for pad/crop presets (CIFAR),
    ImageRecordIter-style pad + random crop, for training; resize + centre crop for eval."""
    from .pyrecord import PyRecordIter
    kw = dict(mean=preset.mean, std=preset.std, num_parts=common['num_parts'],
              part_index=common['part_index'], seed=common['seed'],
              num_workers=common['preprocess_threads'], info=info)
    if train:
        if aug.get('random_resized_crop'):
            kw.update(rrc_scale=(aug.get('min_random_area', 0.08), aug.get('max_random_area', 1.0)),
                      rrc_ratio=(aug.get('min_aspect_ratio', 3.0 / 4.0), aug.get('max_aspect_ratio', 4.0 / 3.0)))
        elif aug.get('pad'):
            kw.update(pad=int(aug['pad']), fill_value=int(aug.get('fill_value', 0)), pad_mode=pad_mode)
        elif aug.get('rand_crop') and aug.get('resize'):
            kw.update(rrc_scale=None)       # shorter side to `resize`, then a random crop
        else:
            raise ConfigError('the Python pipeline implements random-resized-crop, resize + random crop or pad/crop '
                              'training augmentation; preset %r has neither' % preset.name)
    return PyRecordIter(info.rec, info.idx, batch_size, shape, train=train, randaugment=randaugment,
                        resize=aug.get('resize'), **kw)


def subset_count(n, fraction):
    """Records kept from a class of ``n``: ``min(n, max(1, floor(F * n + 1/2)))`` (round half
    up, at least one per class), with ``F`` taken exactly as the decimal it prints as
    (0.15 is 3/20), so e.g. 15 % of 30 is 5 and 15 % of 10 is 2."""
    f = fractions.Fraction(repr(float(fraction)))
    return int(min(n, max(1, math.floor(f * n + fractions.Fraction(1, 2)))))


def class_balanced_subset(labels, keys, fraction, seed=0, per_class=None):
    """Positions (ascending) of a class-balanced subset: for each class ``c`` with members
    sorted by key, a permutation drawn from ``SeedSequence([seed, c])`` and its first
    :func:`subset_count` entries (or ``min(n_c, per_class)`` with ``per_class``; ``fraction``
    is then ignored and may be None). The same permutation serves every fraction, so for one
    seed a smaller fraction's subset lies inside a larger one's (15 % in 30 % in 50 %)."""
    labels = np.asarray(labels)
    keys = np.asarray(keys)
    if labels.ndim != 1 or len(labels) != len(keys):
        raise ValueError('labels and keys must be 1-D arrays of the same length')
    if per_class is not None:
        if int(per_class) != per_class or per_class < 1:
            raise ConfigError('per_class must be a positive integer, got %r' % (per_class,))
    elif fraction is None or not 0 < float(fraction) <= 1:
        raise ConfigError('fraction must be in (0, 1], got %r' % (fraction,))
    lab = np.round(labels).astype(np.int64)
    chosen = []
    for c in np.unique(lab):
        members = np.nonzero(lab == c)[0]
        members = members[np.argsort(keys[members], kind='stable')]
        ss = np.random.SeedSequence([int(seed) & 0xffffffff, int(c) & 0xffffffff])
        perm = np.random.RandomState(ss.generate_state(4)).permutation(len(members))
        k = min(len(members), int(per_class)) if per_class is not None else subset_count(len(members), fraction)
        chosen.append(members[perm[:k]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def write_record_subset(info, positions, prefix):
    """Copy the records at ``positions`` (into ``info``'s file-ordered arrays) verbatim into
    ``prefix.rec/.idx`` (keys kept), writing to ``*.part`` files renamed at the end."""
    import mxnet as mx
    from .recordio import read_record
    out_dir = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    # per-process temporary names: two runs materialising the same subset write identical
    # bytes, so whichever rename lands last leaves a consistent pair
    tmp_rec, tmp_idx = '%s.rec.part%d' % (prefix, os.getpid()), '%s.idx.part%d' % (prefix, os.getpid())
    writer = mx.recordio.MXIndexedRecordIO(tmp_idx, tmp_rec, 'w')
    try:
        with open(info.rec, 'rb') as f:
            for p in positions:
                try:
                    payload = read_record(f, int(info.offsets[p]))
                except ValueError as e:
                    raise DataError('%s: record %d cannot be read (%s)' % (info.rec, int(info.keys[p]), e)) from None
                writer.write_idx(int(info.keys[p]), payload)
    except BaseException:
        writer.close()
        for t in (tmp_rec, tmp_idx):
            if os.path.exists(t):
                os.remove(t)
        raise
    writer.close()
    os.replace(tmp_rec, prefix + '.rec')
    os.replace(tmp_idx, prefix + '.idx')
    return prefix + '.rec', prefix + '.idx'


def _writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def default_subset_dir(rec):
    """Where :func:`subset_recordio` caches the subsets of ``rec`` by default:
    ``$GLUON_TRANSFER_CACHE/subsets/<first 12 hex digits of SHA-1(absolute path of rec)>``,
    with ``GLUON_TRANSFER_CACHE`` defaulting to ``~/.cache/gluon_transfer`` (the cache of the
    fused AFF kernel). Never inside the user's data folder."""
    src = os.path.abspath(rec)
    tag = hashlib.sha1(src.encode('utf-8', 'surrogateescape')).hexdigest()[:12]
    return user_cache_dir('subsets', tag)


def subset_recordio(info, fraction, seed=0, cache_dir=None):
    """:class:`RecordInfo` of the class-balanced ``fraction`` subset of ``info`` (see
    :func:`class_balanced_subset`), materialised once as
    ``<cache_dir>/<stem>_f<F>_s<seed>.rec/.idx`` with a ``.json`` recording its source's
    identity (absolute path, size and mtime of the ``.rec``, size of the ``.idx``, fraction,
    seed); a later call with the same identity reuses it, a changed source rebuilds it.
    Default ``cache_dir``: :func:`default_subset_dir` (a user cache keyed by the source path;
    nothing is written next to the source)."""
    src = os.path.abspath(info.rec)
    st = os.stat(src)
    ident = {'source': src, 'bytes': st.st_size, 'mtime_ns': st.st_mtime_ns,
             'idx_bytes': os.path.getsize(info.idx), 'fraction': float(fraction), 'seed': int(seed)}
    if cache_dir is None:
        cache_dir = default_subset_dir(src)
    if not _writable_dir(cache_dir):
        raise DataError('%s: cannot create the subset cache dir (set GLUON_TRANSFER_CACHE or pass subset_dir)'
                        % cache_dir)
    stem = os.path.splitext(os.path.basename(src))[0]
    prefix = os.path.join(cache_dir, '%s_f%s_s%d' % (stem, ('%g' % float(fraction)), int(seed)))
    meta = prefix + '.json'
    try:
        with open(meta) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = None
    if cached is not None and cached.get('ident') == ident and all(
            os.path.isfile(prefix + e) for e in ('.rec', '.idx')):
        sub = inspect_recordio(prefix + '.rec', prefix + '.idx')
        if sub.num_records == cached.get('records'):
            return sub
    positions = class_balanced_subset(info.labels, info.keys, fraction, seed)
    write_record_subset(info, positions, prefix)
    tmp = '%s.part%d' % (meta, os.getpid())
    with open(tmp, 'w') as f:
        json.dump({'ident': ident, 'records': int(len(positions))}, f, indent=1)
    os.replace(tmp, meta)
    return inspect_recordio(prefix + '.rec', prefix + '.idx')
