"""Batches from a ``.rec``/``.idx`` pair decoded in Python (OpenCV), for augmentations that
``ImageRecordIter`` cannot run (RandAugment).

:class:`PyRecordIter` follows the iterator contract of :mod:`gluon_transfer.data.base`.
Records are read with the pure-Python reader of :mod:`~gluon_transfer.data.recordio`,
decoded with ``cv2.imdecode`` (BGR -> RGB) and transformed in ``gluon.data.DataLoader``
worker **processes** (``num_workers``; 0 = in the calling process). Each process opens its
own handle on the ``.rec`` (a handle shared between threads raced in measurements, so
thread pools are not used).

Transforms (uint8 RGB, H x W x 3 -> uint8 3 x S x S):

* training (``pad = 0``): random resized crop (area ``U(0.08, 1)`` of the image, aspect
  ``exp(U(log 3/4, log 4/3))``, 10 attempts, else a centre crop with the aspect clamped to
  that range, as torchvision/timm), bilinear resize to S x S, horizontal flip with
  probability 0.5, then RandAugment when given. Colour jitter is not applied: timm turns it
  off when RandAugment is on, and the non-binary transfer reference recipe uses it
  that way; with ``pad = P > 0`` (CIFAR presets) instead: pad by P (``pad_mode='constant'``
  with ``fill_value``, or ``'reflect'``, mirrored without repeating the edge), random S x S
  crop, flip, RandAugment;
* evaluation: ImageRecordIter's ``resize`` + default centre crop, i.e. shorter side scaled
  to ``R`` (``new_long = R * long // short``, integer division, bilinear) and the crop at
  ``((h - S) // 2, (w - S) // 2)``.

Normalisation ``(x - mean) / std`` is done on the batch in the calling process.

Determinism: the order of epoch ``e`` comes from ``epoch_seed(seed, e, 0)`` (training) and
the transform of the sample at position ``j`` of that order from
``SeedSequence([seed, e, j])`` alone, independent of the number of workers, so
``set_epoch(e)`` reproduces an epoch exactly (resume) and 0, 1 or 2 workers give the same
batches. Sharding (``num_parts``/``part_index``) splits the file-ordered records into
contiguous nearly equal parts (:func:`~gluon_transfer.data.base.shard_indices`).
"""
import math
import os

import numpy as np
import mxnet as mx

from ..errors import ConfigError, DataError
from .base import Batch, shard_indices
from .recordio import inspect_recordio, read_record, unpack_payload, epoch_seed

__all__ = ['random_resized_crop', 'pad_random_crop', 'resize_short', 'center_crop', 'eval_transform', 'RecordDataset',
           'PyRecordIter']


def random_resized_crop(img, size, rng, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """Crop a random area/aspect window (see module docstring) and resize it to
    ``size x size`` (bilinear)."""
    import cv2
    h, w = img.shape[:2]
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * r)))
        ch = int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            top = rng.randint(0, h - ch + 1)
            left = rng.randint(0, w - cw + 1)
            break
    else:
        in_ratio = float(w) / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            ch, cw = h, int(round(h * ratio[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[top:top + ch, left:left + cw]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def pad_random_crop(img, size, pad, fill_value, rng, pad_mode='constant'):
    """Pad by ``pad`` pixels on every side, then a uniformly placed ``size x size`` crop
    (ImageRecordIter's ``pad`` + ``rand_crop``). ``pad_mode='constant'`` fills with
    ``fill_value`` (as ImageRecordIter); ``'reflect'`` mirrors the border without repeating
    the edge pixel (``np.pad(mode='reflect')``, which ImageRecordIter cannot do)."""
    if pad and pad_mode == 'reflect':
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    elif pad:
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=fill_value)
    h, w = img.shape[:2]
    top = rng.randint(0, h - size + 1)
    left = rng.randint(0, w - size + 1)
    return img[top:top + size, left:left + size]


def resize_short(img, short):
    """Shorter side to ``short``, the other ``short * long // short_side`` (ImageRecordIter's
    integer rule), bilinear."""
    import cv2
    h, w = img.shape[:2]
    if h > w:
        nh, nw = short * h // w, short
    else:
        nh, nw = short, short * w // h
    if (nh, nw) == (h, w):
        return img
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


def center_crop(img, size):
    h, w = img.shape[:2]
    if h < size or w < size:
        import cv2
        img = cv2.resize(img, (max(w, size), max(h, size)), interpolation=cv2.INTER_LINEAR)
        h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def eval_transform(img, size, resize=None):
    """Evaluation preprocessing of ImageRecordIter: optional shorter-side resize, centre crop."""
    if resize:
        img = resize_short(img, int(resize))
    return center_crop(img, size)


class RecordDataset(mx.gluon.data.Dataset):
    """Records of a ``.rec`` addressed by file position, transformed per sample.

    ``dataset[(epoch, j, pos)]`` decodes the record at ``offsets[pos]`` and returns
    ``(uint8 array (3, S, S), float32 label)``; the transform's generator is seeded from
    ``(seed, epoch, j)``. ``train`` selects the training transform (module docstring).
    """

    def __init__(self, rec, offsets, labels, keys, size, train, seed=0, randaugment=None,
                 resize=None, rrc_scale=(0.08, 1.0), rrc_ratio=(3.0 / 4.0, 4.0 / 3.0), pad=0,
                 fill_value=0, pad_mode='constant'):
        from .cifar import check_pad_mode
        self.rec = rec
        self.pad, self.fill_value, self.pad_mode = int(pad), int(fill_value), check_pad_mode(pad_mode)
        self.offsets, self.labels, self.keys = offsets, labels, keys
        self.size, self.train, self.seed = int(size), bool(train), int(seed)
        self.randaugment, self.resize = randaugment, resize
        # rrc_scale None: resize the shorter side to ``resize``, then a random crop (transfer preset)
        self.rrc_scale = None if rrc_scale is None else tuple(rrc_scale)
        self.rrc_ratio = tuple(rrc_ratio)
        self._fh, self._pid = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_fh'], state['_pid'] = None, None
        return state

    def __len__(self):
        return len(self.offsets)

    def close(self):
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh, self._pid = None, None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _file(self):
        if self._pid != os.getpid():
            import cv2
            cv2.setNumThreads(1)  # the worker processes provide the parallelism
            self._fh = open(self.rec, 'rb')
            self._pid = os.getpid()
        return self._fh

    def decode(self, pos):
        import cv2
        key = int(self.keys[pos])
        try:
            body = unpack_payload(read_record(self._file(), int(self.offsets[pos])))[4]
        except (ValueError, OSError) as e:
            raise DataError('%s: record %d cannot be read (%s)' % (self.rec, key, e)) from None
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) if body else None
        if img is None or img.size == 0:
            raise DataError('%s: record %d holds %d bytes that do not decode as an image'
                            % (self.rec, key, len(body)))
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def __getitem__(self, item):
        epoch, j, pos = item
        img = self.decode(pos)
        if self.train:
            ss = np.random.SeedSequence([self.seed & 0xffffffff, int(epoch), int(j)])
            rng = np.random.RandomState(ss.generate_state(4))
            if self.pad:
                img = pad_random_crop(img, self.size, self.pad, self.fill_value, rng, self.pad_mode)
            elif self.rrc_scale is None:
                img = pad_random_crop(resize_short(img, int(self.resize)), self.size, 0, 0, rng)
            else:
                img = random_resized_crop(img, self.size, rng, self.rrc_scale, self.rrc_ratio)
            if rng.random_sample() < 0.5:
                img = img[:, ::-1]
            if self.randaugment is not None:
                img = self.randaugment(np.ascontiguousarray(img), rng)
        else:
            img = eval_transform(img, self.size, self.resize)
        return np.ascontiguousarray(img.transpose(2, 0, 1)), np.float32(self.labels[pos])


class _EpochSampler:
    """Batch sampler living in the calling process: yields lists of ``(epoch, j, pos)``."""

    def __init__(self, owner):
        self.owner = owner

    def __len__(self):
        return len(self.owner)

    def __iter__(self):
        return iter(self.owner.batch_items())


class PyRecordIter:
    """Python-decoded batches from a ``.rec``/``.idx`` pair (module docstring).

    Parameters: ``rec``, ``idx``, ``batch_size``, ``data_shape`` (3, S, S), ``mean``/``std``
    (0-255 units), ``train``, ``randaugment`` (a :class:`~gluon_transfer.data.augment.RandAugment`
    or None), ``resize`` (evaluation: shorter side before the centre crop), ``num_parts``/
    ``part_index``, ``seed``, ``num_workers`` (DataLoader processes), ``info`` (a
    :class:`~gluon_transfer.data.recordio.RecordInfo`), ``rrc_scale``/``rrc_ratio``, or
    ``pad``/``fill_value``/``pad_mode`` ('constant' or 'reflect') for pad + random crop training.
    Training batches are full (the epoch order wraps round) and report ``pad = 0``;
    evaluation batches keep file order and pad the last batch by repeating its first rows.
    """

    def __init__(self, rec, idx=None, batch_size=32, data_shape=(3, 224, 224), mean=(0., 0., 0.),
                 std=(1., 1., 1.), train=False, randaugment=None, resize=None, num_parts=1,
                 part_index=0, seed=0, num_workers=2, info=None, rrc_scale=(0.08, 1.0),
                 rrc_ratio=(3.0 / 4.0, 4.0 / 3.0), pad=0, fill_value=0, prefetch=None, timeout=120,
                 pad_mode='constant'):
        if not 0 <= part_index < num_parts:
            raise ConfigError('part_index %d not in [0, %d)' % (part_index, num_parts))
        if data_shape[0] != 3 or data_shape[1] != data_shape[2]:
            raise ConfigError('PyRecordIter produces square RGB crops, got data_shape %s' % (data_shape,))
        self.info = info if info is not None else inspect_recordio(rec, idx)
        self.rec, self.idx = self.info.rec, self.info.idx
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self._positions = shard_indices(self.info.num_records, num_parts, part_index)
        self.num_samples = len(self._positions)
        if self.num_samples == 0:
            raise ConfigError('%s: part %d of %d holds no records' % (self.rec, part_index, num_parts))
        self.seed = int(seed)
        self.epoch = 0
        self.num_workers = max(0, int(num_workers))
        self.data_shape = tuple(data_shape)
        self._mean = mx.nd.array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1))
        self._std = mx.nd.array(np.asarray(std, np.float32).reshape(1, 3, 1, 1))
        self.dataset = RecordDataset(self.rec, self.info.offsets, self.info.labels, self.info.keys,
                                     data_shape[1], self.train, self.seed, randaugment, resize,
                                     rrc_scale, rrc_ratio, pad, fill_value, pad_mode)
        self.randaugment = randaugment
        self._prefetch, self._timeout = prefetch, timeout
        self._loader = None

    def __len__(self):
        return int(math.ceil(self.num_samples / float(self.batch_size)))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def epoch_order(self):
        """File positions in this epoch's order (training: seeded permutation)."""
        if self.train:
            rng = np.random.RandomState(epoch_seed(self.seed, self.epoch, 0))
            return self._positions[rng.permutation(self.num_samples)]
        return self._positions

    def batch_items(self):
        order = self.epoch_order()
        bs = self.batch_size
        for b in range(len(self)):
            sel = order[b * bs:(b + 1) * bs]
            if len(sel) < bs:
                # training wraps round the epoch order, evaluation repeats the first rows
                sel = np.concatenate([sel, np.resize(order, bs - len(sel))])
            yield [(self.epoch, b * bs + i, int(p)) for i, p in enumerate(sel)]

    def _get_loader(self):
        if self._loader is None:
            self._loader = mx.gluon.data.DataLoader(
                self.dataset, batch_sampler=_EpochSampler(self), num_workers=self.num_workers,
                thread_pool=False, prefetch=self._prefetch, timeout=self._timeout)
        return self._loader

    def close(self):
        """Stop the worker processes and close the file (also done when the iterator is
        garbage-collected)."""
        self.dataset.close()
        if self._loader is not None:
            pool = self._loader._worker_pool
            self._loader._worker_pool = None
            if pool is not None:
                pool.terminate()
                pool.join()
            self._loader = None

    def __iter__(self):
        n_last = self.num_samples - (len(self) - 1) * self.batch_size
        for b, (data, label) in enumerate(self._get_loader()):
            x = data.as_in_context(mx.cpu()).astype('float32')
            x = mx.nd.broadcast_div(mx.nd.broadcast_sub(x, self._mean), self._std)
            label = label.as_in_context(mx.cpu()).astype('float32')
            pad = 0 if self.train or b < len(self) - 1 else self.batch_size - n_last
            yield Batch(x, label, pad)
