"""The batch-iterator contract shared by every data source and the engine.

Every iterator the engine consumes (RecordIO or in-memory) behaves like this:

* ``len(it)`` is the number of batches one epoch yields (for this shard);
* ``it.set_epoch(e)`` fixes shuffling and augmentation randomness for epoch ``e`` from
  ``(seed, e)`` alone, so a resumed run sees exactly the batches an uninterrupted run
  would have seen;
* iterating yields :class:`Batch` objects with ``data`` (float32 NDArray, N x C x H x W,
  normalised), ``label`` (float32 NDArray, N) and ``pad`` (how many trailing rows are
  filler that evaluation must ignore; always 0 for training iterators);
* ``num_samples`` (records in this shard) and ``batch_size`` attributes.
"""
import collections
import math

import numpy as np
import mxnet as mx

Batch = collections.namedtuple('Batch', ['data', 'label', 'pad'])

__all__ = ['Batch', 'ArrayIter', 'shard_indices']


def shard_indices(n, num_parts=1, part_index=0):
    """Contiguous shard ``part_index`` of ``range(n)`` split into ``num_parts`` nearly equal
    parts (sizes differ by at most one); the parts are disjoint and cover every index."""
    if not 0 <= part_index < num_parts:
        raise ValueError('part_index %d not in [0, %d)' % (part_index, num_parts))
    start = (n * part_index) // num_parts
    stop = (n * (part_index + 1)) // num_parts
    return np.arange(start, stop)


class ArrayIter:
    """Batches from in-memory uint8 images (N, C, H, W) and integer labels.

    Parameters
    ----------
    images : np.ndarray, uint8, (N, C, H, W)
    labels : np.ndarray, (N,) or (N, k)
    batch_size : int
    mean, std : sequence of C floats in 0-255 pixel units; ``(x - mean) / std``.
    shuffle : bool
    augment : callable ``(uint8 batch, np.random.RandomState) -> uint8 batch`` or None,
        applied before normalisation (e.g. pad-4 random crop + flip).
    last_batch : 'pad' (evaluation: the last batch is filled by repeating the first rows
        and ``pad`` says how many), 'rollover' (training: the last batch is completed by
        wrapping around the epoch's order, as ImageRecordIter's ``round_batch`` does, and
        ``pad`` is 0) or 'discard' (drop the incomplete last batch).
    num_parts, part_index : shard for distributed training (disjoint, covering).
    seed : int; the epoch's order and augmentation come from ``(seed, epoch)``.
    """

    def __init__(self, images, labels, batch_size, mean=(0., 0., 0.), std=(1., 1., 1.),
                 shuffle=False, augment=None, last_batch='pad', num_parts=1, part_index=0, seed=0):
        if images.ndim != 4:
            raise ValueError('images must be (N, C, H, W), got shape %s' % (images.shape,))
        if len(images) != len(labels):
            raise ValueError('%d images but %d labels' % (len(images), len(labels)))
        if last_batch not in ('pad', 'rollover', 'discard'):
            raise ValueError("last_batch must be 'pad', 'rollover' or 'discard'")
        idx = shard_indices(len(images), num_parts, part_index)
        self._images = images[idx]
        self._labels = np.asarray(labels, dtype=np.float32)[idx]
        self.batch_size = int(batch_size)
        self.num_samples = len(idx)
        c = images.shape[1]
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, c, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, c, 1, 1)
        self.shuffle = shuffle
        self.augment = augment
        self.last_batch = last_batch
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self):
        if self.last_batch == 'discard':
            return self.num_samples // self.batch_size
        return int(math.ceil(self.num_samples / float(self.batch_size)))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _rng(self):
        return np.random.RandomState((self.seed * 1000003 + self.epoch) % (2 ** 32))

    def __iter__(self):
        rng = self._rng()
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        bs = self.batch_size
        for b in range(len(self)):
            sel = order[b * bs:(b + 1) * bs]
            pad = bs - len(sel)
            if pad:
                # 'pad' repeats the first rows and reports them; 'rollover' wraps around
                # the epoch's order, so every batch is full and pad stays 0 for training.
                # np.resize repeats the order cyclically, so a shard smaller than one
                # batch still fills it.
                sel = np.concatenate([sel, np.resize(order, pad)])
            imgs = self._images[sel]
            if self.augment is not None:
                imgs = self.augment(imgs, rng)
            data = (imgs.astype(np.float32) - self._mean) / self._std
            yield Batch(mx.nd.array(data, dtype='float32'), mx.nd.array(self._labels[sel], dtype='float32'),
                        pad if self.last_batch == 'pad' else 0)
