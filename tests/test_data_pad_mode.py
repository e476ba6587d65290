"""Reflect padding for the CIFAR pad-4 random crop (the attention-transfer reference's
``T.Pad(4, reflect)``): every path against ``np.pad(mode='reflect')`` + the same window."""
import os

import cv2
import numpy as np
import pytest
import mxnet as mx

from gluon_transfer.data import build_data, get_preset
from gluon_transfer.data.cifar import pad_crop_flip
from gluon_transfer.data.pyrecord import PyRecordIter, pad_random_crop
from gluon_transfer.errors import ConfigError


class FixedRng:
    """Stands in for ``np.random.RandomState``: every offset is ``(dy, dx)``, flips as given."""

    def __init__(self, dy, dx, flip=False):
        self.values = [dy, dx]
        self.flip = flip

    def randint(self, lo, hi, size=None):
        v = self.values.pop(0)
        self.values.append(v)
        assert lo <= v < hi
        return v if size is None else np.full(size, v)

    def rand(self, n):
        return np.full(n, 0.0 if self.flip else 1.0)


def test_reflect_pad_crop_equals_numpy_window():
    img = np.random.RandomState(0).randint(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    ref = np.pad(img, ((0, 0), (0, 0), (4, 4), (4, 4)), mode='reflect')
    # reflection does not repeat the edge: column -1 of the padded image is column 1
    np.testing.assert_array_equal(ref[..., 4:12, 3], img[..., 1])
    for dy in range(9):
        for dx in range(9):
            out = pad_crop_flip(img, FixedRng(dy, dx), pad=4, pad_mode='reflect')
            np.testing.assert_array_equal(out, ref[:, :, dy:dy + 8, dx:dx + 8], err_msg='%d,%d' % (dy, dx))
    out = pad_crop_flip(img, FixedRng(1, 7, flip=True), pad=4, pad_mode='reflect')
    np.testing.assert_array_equal(out, ref[:, :, 1:9, 7:15][..., ::-1])
    # constant mode (the default) is unchanged: zeros
    out = pad_crop_flip(img, FixedRng(0, 0), pad=4)
    assert (out[:, :, :4, :] == 0).all() and (out[:, :, 4:, 4:] == img[:, :, :4, :4]).all()


def test_reflect_pad_random_crop_hwc():
    img = np.random.RandomState(1).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    ref = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode='reflect')
    for dy, dx in [(0, 0), (8, 8), (3, 6)]:
        out = pad_random_crop(img, 8, 4, 0, FixedRng(dy, dx), pad_mode='reflect')
        np.testing.assert_array_equal(out, ref[dy:dy + 8, dx:dx + 8])
    out = pad_random_crop(img, 8, 4, 7, FixedRng(0, 0))
    assert (out[:4] == 7).all()


def write_random_rec(prefix, n, size=8, seed=0):
    rng = np.random.RandomState(seed)
    imgs = rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)       # RGB
    rec = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')
    for i in range(n):
        ok, enc = cv2.imencode('.png', imgs[i][:, :, ::-1])                # lossless, BGR on disk
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(i % 3), i, 0), enc.tobytes()))
    rec.close()
    return imgs


def test_build_data_reflect_routes_recordio_through_python_pipeline(tmp_path):
    d = tmp_path / 'c'
    os.makedirs(d)
    imgs = write_random_rec(str(d / 'train'), 6)
    write_random_rec(str(d / 'val'), 3, seed=1)
    data = build_data('cifar10', data_dir=str(d), batch_size=3, input_size=8, num_workers=0, pad_mode='reflect',
                      seed=5)
    assert isinstance(data.train, PyRecordIter) and data.train.dataset.pad_mode == 'reflect'
    pre = get_preset('cifar10')
    mean = np.array(pre.mean, np.float32).reshape(3, 1, 1)
    std = np.array(pre.std, np.float32).reshape(3, 1, 1)
    data.train.set_epoch(1)
    batch = next(iter(data.train))
    items = next(iter(data.train.batch_items()))
    for row, (epoch, j, pos) in enumerate(items):
        # the window PyRecordIter draws for sample j of epoch 1 (its documented seeding)
        rng = np.random.RandomState(np.random.SeedSequence([5, epoch, j]).generate_state(4))
        top, left, flip = rng.randint(0, 9), rng.randint(0, 9), rng.random_sample() < 0.5
        want = np.pad(imgs[pos], ((4, 4), (4, 4), (0, 0)), mode='reflect')[top:top + 8, left:left + 8]
        if flip:
            want = want[:, ::-1]
        want = (want.transpose(2, 0, 1).astype(np.float32) - mean) / std
        np.testing.assert_allclose(batch.data[row].asnumpy(), want, rtol=1e-5, atol=1e-5)
    data.train.close()
    with pytest.raises(ConfigError, match='constant only.*not record'):
        build_data('cifar10', data_dir=str(d), batch_size=3, input_size=8, pad_mode='reflect', pipeline='record')
    with pytest.raises(ConfigError, match="unknown pad mode 'edge'"):
        build_data('cifar10', data_dir=str(d), batch_size=3, input_size=8, pad_mode='edge')
    with pytest.raises(ConfigError, match="preset 'imagenet' does not pad"):
        build_data('imagenet', data_dir=str(d), batch_size=3, pad_mode='reflect')


def test_cli_pad_mode_flag():
    from gluon_transfer.cli import build_parser, augment_kwargs
    p = build_parser('cifar', 'x')
    assert augment_kwargs(p.parse_args(['--pad-mode', 'reflect']))['pad_mode'] == 'reflect'
    assert augment_kwargs(p.parse_args([]))['pad_mode'] == 'constant'


def test_cifar_binary_reflect(tmp_path):
    from test_data_datasets import _write_cifar
    folder = tmp_path / 'c10' / 'cifar-10-batches-bin'
    files = ['data_batch_%d.bin' % i for i in range(1, 6)] + ['test_batch.bin']
    truth = _write_cifar(str(folder), files, 1, 1, np.random.RandomState(3))
    data = build_data('cifar10', data_dir=str(tmp_path / 'c10'), batch_size=5, pad_mode='reflect')
    pre = get_preset('cifar10')
    mean = np.array(pre.mean, np.float32).reshape(3, 1, 1)
    std = np.array(pre.std, np.float32).reshape(3, 1, 1)
    windows = []
    for fn in files[:5]:
        p = np.pad(truth[fn][0][0], ((0, 0), (4, 4), (4, 4)), mode='reflect')
        for dy in range(9):
            for dx in range(9):
                w = p[:, dy:dy + 32, dx:dx + 32]
                windows += [w, w[:, :, ::-1]]
    windows = np.stack(windows).astype(np.float32)
    x = next(iter(data.train)).data.asnumpy() * std + mean
    for row in x:     # every augmented image is one reflect-padded window of a training image
        err = np.abs(windows - row).reshape(len(windows), -1).max(axis=1)
        assert err.min() < 1e-3
