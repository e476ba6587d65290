"""The original CIFAR binary files, read with numpy, and the CIFAR training augment.

Binary format (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):

* CIFAR-10: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train), ``test_batch.bin``; each
  record is 1 label byte then 3072 pixel bytes; ``batches.meta.txt`` holds the names.
* CIFAR-100: ``train.bin``, ``test.bin``; each record is a coarse label byte, a fine label
  byte, then 3072 pixel bytes; ``fine_label_names.txt`` / ``coarse_label_names.txt``.

Pixels are the R plane, then G, then B, each 32 x 32 row-major, so a record reshapes
directly to (3, 32, 32) RGB. Files are looked up in ``root`` and in the archive folders
``cifar-10-batches-bin`` / ``cifar-100-binary`` below it. gluon's ``CIFAR10``/``CIFAR100``
classes read the same files but re-download them when the sha1 differs, so they cannot be
used offline on anything but the exact published files; this reader never downloads.
"""
import os

import numpy as np

from ..errors import DataError

__all__ = ['CIFAR_FILES', 'find_cifar_binary', 'read_cifar_binary', 'pad_crop_flip', 'PAD_MODES', 'check_pad_mode']

CIFAR_FILES = {
    'cifar10': {'subdir': 'cifar-10-batches-bin',
                'train': ['data_batch_%d.bin' % i for i in range(1, 6)],
                'test': ['test_batch.bin'], 'label_bytes': 1,
                'names': {False: 'batches.meta.txt'}},
    'cifar100': {'subdir': 'cifar-100-binary', 'train': ['train.bin'], 'test': ['test.bin'],
                 'label_bytes': 2,
                 'names': {False: 'fine_label_names.txt', True: 'coarse_label_names.txt'}},
}
_PIXELS = 3 * 32 * 32


def find_cifar_binary(root, dataset):
    """The folder under ``root`` holding ``dataset``'s binary files, or None."""
    spec = CIFAR_FILES[dataset]
    for d in (root, os.path.join(root, spec['subdir'])):
        if all(os.path.isfile(os.path.join(d, f)) for f in spec['train'] + spec['test']):
            return d
    return None


def read_cifar_binary(root, dataset='cifar10', train=True, coarse=False):
    """``(images uint8 (N, 3, 32, 32) RGB, labels int32 (N,), class names or None)``.

    ``coarse`` (CIFAR-100 only) returns the 20 superclass labels instead of the 100 fine
    labels (open-aff's train_cifar.py used the coarse labels by accident; the default here is fine).
    """
    if dataset not in CIFAR_FILES:
        raise DataError('no binary CIFAR reader for %r (cifar10, cifar100)' % dataset)
    spec = CIFAR_FILES[dataset]
    folder = find_cifar_binary(root, dataset)
    if folder is None:
        raise DataError('%s: binary %s files not found (expected %s in it or in %s/)'
                        % (root, dataset, ', '.join(spec['train'] + spec['test']), spec['subdir']))
    lb = spec['label_bytes']
    rec = lb + _PIXELS
    images, labels = [], []
    for fn in spec['train' if train else 'test']:
        path = os.path.join(folder, fn)
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % rec:
            raise DataError('%s: %d bytes is not a whole number of %d-byte %s records (truncated?)'
                            % (path, raw.size, rec, dataset))
        raw = raw.reshape(-1, rec)
        images.append(raw[:, lb:].reshape(-1, 3, 32, 32))
        labels.append(raw[:, 0 if (lb == 1 or coarse) else 1].astype(np.int32))
    names = None
    name_file = os.path.join(folder, spec['names'].get(bool(coarse) and lb == 2, spec['names'][False]))
    if os.path.isfile(name_file):
        with open(name_file) as f:
            names = [ln.strip() for ln in f if ln.strip()]
    return np.concatenate(images), np.concatenate(labels), names


PAD_MODES = ('constant', 'reflect')


def check_pad_mode(pad_mode):
    from ..errors import ConfigError
    if pad_mode not in PAD_MODES:
        raise ConfigError('unknown pad mode %r; valid: %s' % (pad_mode, ', '.join(PAD_MODES)))
    return pad_mode


def pad_crop_flip(images, rng, pad=4, flip=True, pad_mode='constant'):
    """CIFAR training augment on a uint8 batch (N, C, H, W): pad ``pad`` pixels on each
    side, take a random H x W crop (offsets uniform in ``[0, 2*pad]`` per axis), then mirror
    left-right with probability 1/2; ``rng`` is a ``np.random.RandomState``.

    ``pad_mode='constant'`` pads with zeros: GluonCV ``RandomCrop(32, pad=4)`` +
    ``RandomFlipLeftRight``. ``pad_mode='reflect'`` mirrors the border without repeating
    the edge pixel (``np.pad(mode='reflect')``, torchvision's ``Pad(4, padding_mode=
    'reflect')``): the attention-transfer reference's ``T.Pad(4, reflect)``, random flip,
    ``RandomCrop(32)`` (flipping before or after the crop gives the same distribution).
    The random draws do not depend on the mode."""
    check_pad_mode(pad_mode)
    n, c, h, w = images.shape
    if pad_mode == 'reflect':
        padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode='reflect')
    else:
        padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=images.dtype)
        padded[:, :, pad:pad + h, pad:pad + w] = images
    dy = rng.randint(0, 2 * pad + 1, size=n)
    dx = rng.randint(0, 2 * pad + 1, size=n)
    mirror = rng.rand(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    out = np.empty_like(images)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop[:, :, ::-1] if mirror[i] else crop
    return out
