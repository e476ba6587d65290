"""gluon_transfer.data.images: the picture tools' image readers."""
import os

import cv2
import numpy as np
import pytest

from data_helpers import write_rec, solid_image
from gluon_transfer.data.images import read_record_images, read_image_files, generated_images, to_batch
from gluon_transfer.errors import DataError


def test_record_images_are_rgb_in_file_order(tmp_path):
    rec, _ = write_rec(str(tmp_path / 'a'), 5, size=8)
    imgs = read_record_images(rec, 3, 8)
    assert len(imgs) == 3
    for i, img in enumerate(imgs):
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
        # write_rec stores BGR with R = i, G = 1, B = 200: RGB order puts i first
        assert (img[..., 0] == i).all() and (img[..., 1] == 1).all() and (img[..., 2] == 200).all()


def test_record_images_resize_and_short_file(tmp_path):
    rec, _ = write_rec(str(tmp_path / 'a'), 2, size=8)
    imgs = read_record_images(rec, 10, 4)           # asks for more than the file has
    assert len(imgs) == 2 and imgs[1].shape == (4, 4, 3)
    assert (imgs[1][..., 0] == 1).all()             # a constant image stays constant under area resize


def test_record_errors(tmp_path):
    with pytest.raises(DataError, match='not found'):
        read_record_images(str(tmp_path / 'missing.rec'), 1, 8)
    rec, _ = write_rec(str(tmp_path / 'bad'), 2, payload_of=lambda i: b'not an image' if i == 1 else None)
    with pytest.raises(DataError, match='record 1 is not a decodable image'):
        read_record_images(rec, 2, 8)
    rec, _ = write_rec(str(tmp_path / 'empty'), 0)
    with pytest.raises(DataError, match='holds no records'):
        read_record_images(rec, 2, 8)


def test_image_files(tmp_path):
    path = str(tmp_path / 'x.png')
    cv2.imwrite(path, solid_image(77, size=6))
    img, = read_image_files([path], 6)
    assert (img[..., 0] == 77).all() and (img[..., 2] == 200).all()
    with pytest.raises(DataError, match='cannot read image .*nope.png'):
        read_image_files([os.path.join(str(tmp_path), 'nope.png')], 6)


def test_to_batch_matches_hand_normalisation():
    rng = np.random.RandomState(0)
    imgs = [rng.randint(0, 256, (3, 4, 3)).astype(np.uint8) for _ in range(2)]
    mean, std = (0.5, 0.25, 0.75), (0.2, 0.4, 0.1)
    x = to_batch(imgs, mean, std)
    assert x.shape == (2, 3, 3, 4) and x.dtype == np.float32
    for n in range(2):
        for c in range(3):
            ref = (imgs[n][:, :, c] / 255.0 - mean[c]) / std[c]
            np.testing.assert_allclose(x[n, c], ref, rtol=1e-5, atol=1e-5)
    raw = to_batch(imgs, (10., 20., 30.), (2., 4., 8.), scale=1.0)
    np.testing.assert_allclose(raw[1, 2], (imgs[1][:, :, 2] - 30.) / 8., rtol=1e-6)


def test_generated_images_deterministic():
    a = generated_images(2, 16, seed=3)
    b = generated_images(2, 16, seed=3)
    assert all((x == y).all() for x, y in zip(a, b))
    assert a[0].shape == (16, 16, 3) and a[0].dtype == np.uint8
    noise = generated_images(1, 16, seed=3, smooth=False)[0]
    assert noise.std() > a[0].std() * 0.5   # uniform noise, not blurred
