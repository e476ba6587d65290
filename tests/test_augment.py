"""RandAugment ops, random erasing and the Python RecordIO pipeline, against hand-computed
values and against ImageRecordIter."""
import os

import cv2
import numpy as np
import pytest

from gluon_transfer.data import (ArrayIter, PyRecordIter, RecordIter, build_data, pack,
                                 parse_randaugment)
from gluon_transfer.data import augment as A
from gluon_transfer.errors import ConfigError


def _img(values):
    v = np.asarray(values, np.uint8).reshape(1, -1, 1)
    return np.repeat(v, 3, axis=2)


# ---------------------------------------------------------------- pixel ops

def test_invert_posterize_solarize():
    x = _img([0, 37, 128, 200, 255])
    assert A.invert(x)[0, :, 0].tolist() == [255, 218, 127, 55, 0]
    assert A.posterize(x, 3)[0, :, 0].tolist() == [0, 32, 128, 192, 224]   # keep the top 3 bits
    assert A.posterize(x, 1)[0, :, 0].tolist() == [0, 0, 128, 128, 128]
    assert A.posterize(x, 0)[0, :, 0].tolist() == [0, 0, 0, 0, 0]
    assert A.posterize(x, 8)[0, :, 0].tolist() == x[0, :, 0].tolist()
    assert A.solarize(x, 128)[0, :, 0].tolist() == [0, 37, 127, 55, 0]    # >= 128 inverted
    assert A.solarize(x, 256)[0, :, 0].tolist() == x[0, :, 0].tolist()
    assert A.solarize(x, 0)[0, :, 0].tolist() == [255, 218, 127, 55, 0]
    assert A.solarize_add(x, 100)[0, :, 0].tolist() == [100, 137, 128, 200, 255]  # < 128 only
    assert A.solarize_add(_img([120]), 200)[0, 0, 0] == 255


def test_auto_contrast_and_equalize():
    x = np.zeros((1, 3, 3), np.uint8)
    x[0, :, 0] = [50, 100, 150]      # stretched: (x - 50) * 255 // 100
    x[0, :, 1] = [7, 7, 7]           # flat: unchanged
    x[0, :, 2] = [0, 128, 255]       # already full range
    out = A.auto_contrast(x)
    assert out[0, :, 0].tolist() == [0, 127, 255]
    assert out[0, :, 1].tolist() == [7, 7, 7]
    assert out[0, :, 2].tolist() == [0, 128, 255]
    # 1024 pixels: 512 of 10, 256 of 20, 256 of 30 -> step = (1024 - 256) // 255 = 3,
    # lut = (1 + pixels below) // 3 -> 10: 0, 20: 513 // 3 = 171, 30: 769 // 3 = 256 -> 255.
    ch = np.array([10] * 512 + [20] * 256 + [30] * 256, np.uint8).reshape(32, 32)
    img = np.stack([ch, ch, np.full_like(ch, 9)], axis=2)
    eq = A.equalize(img)
    assert eq[..., 0][ch == 10].max() == 0 and set(eq[..., 0][ch == 20]) == {171}
    assert set(eq[..., 0][ch == 30]) == {255}
    assert (eq[..., 2] == 9).all()  # one used bin: unchanged


def test_enhance_ops():
    px = np.array([[[200, 100, 0]]], np.uint8)
    # gray = (19595*200 + 38470*100 + 32768) >> 16 = 7798768 >> 16 = 118 (65536 * 119 = 7798784)
    assert A.gray(px)[0, 0] == 118
    assert A.color(px, 0.0)[0, 0].tolist() == [118, 118, 118]
    assert A.color(px, 0.5)[0, 0].tolist() == [159, 109, 59]    # floor(118 + 0.5 (x - 118))
    assert A.color(px, 1.0)[0, 0].tolist() == [200, 100, 0]
    g = np.array([[[50, 50, 50], [150, 150, 150]]], np.uint8)   # mean gray 100
    assert A.contrast(g, 0.5)[0, :, 0].tolist() == [75, 125]
    assert A.contrast(g, 0.0)[0, :, 0].tolist() == [100, 100]
    assert A.contrast(g, 2.0)[0, :, 0].tolist() == [0, 200]
    b = np.array([[[100, 201, 200]]], np.uint8)
    assert A.brightness(b, 0.5)[0, 0].tolist() == [50, 100, 100]
    assert A.brightness(b, 2.0)[0, 0].tolist() == [200, 255, 255]
    s = np.zeros((3, 3, 3), np.uint8)
    s[1, 1] = 130                       # smooth centre: round(5 * 130 / 13) = 50
    assert A.sharpness(s, 0.0)[1, 1, 0] == 50 and A.sharpness(s, 0.0)[0, 0, 0] == 0
    assert A.sharpness(s, 2.0)[1, 1, 0] == 210                     # 50 + 2 (130 - 50)
    assert np.array_equal(A.sharpness(s, 1.0), s)


def test_geometric_ops():
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    fill = (1, 2, 3)
    t = A.translate_x(img, 2, fill)
    assert np.array_equal(t[:, :4], img[:, 2:])                     # content moves left
    assert (t[:, 4:] == np.array(fill, np.uint8)).all()
    t = A.translate_x(img, -2, fill)
    assert np.array_equal(t[:, 2:], img[:, :4]) and (t[:, :2] == np.array(fill, np.uint8)).all()
    t = A.translate_y(img, 1, fill)
    assert np.array_equal(t[:4], img[1:]) and (t[4] == np.array(fill, np.uint8)).all()
    sq = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    assert np.array_equal(A.rotate(sq, 90), np.rot90(sq))           # counter-clockwise
    assert np.array_equal(A.rotate(sq, -90), np.rot90(sq, -1))
    sh = A.shear_x(img, 1.0, fill)                                   # out(x, y) = in(x + y, y)
    for y in range(5):
        for x in range(6):
            want = img[y, x + y] if x + y < 6 else np.array(fill, np.uint8)
            assert np.array_equal(sh[y, x], want)
    sh = A.shear_y(img, 1.0, fill)                                   # out(x, y) = in(x, y + x)
    assert np.array_equal(sh[0, :5], np.stack([img[x, x] for x in range(5)]))


# ---------------------------------------------------------------- RandAugment

def test_parse_spec():
    cfg = parse_randaugment('rand-m9-mstd0.5')
    assert cfg == dict(magnitude=9.0, num_ops=2, magnitude_std=0.5, magnitude_max=10.0,
                       increasing=False, prob=0.5)
    assert parse_randaugment('rand-m7-n3-inc1-p1')['num_ops'] == 3
    assert parse_randaugment('rand-m7-n3-inc1-p1')['increasing'] is True
    with pytest.raises(ConfigError, match="unknown part 'x3'"):
        parse_randaugment('rand-m9-x3')
    with pytest.raises(ConfigError, match="must start with 'rand'"):
        parse_randaugment('augmix-m9')
    ra = A.RandAugment('rand-m9-mstd0.5')
    assert ra.ops == A.RAND_OPS and len(ra.ops) == 15
    assert A.RandAugment('rand-m9-inc1').ops == A.RAND_OPS_INCREASING


def test_randaugment_arguments_and_probability():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (6, 7, 3)).astype(np.uint8)
    r = np.random.RandomState(1)
    # one op, always applied, no noise: the argument mapping of the docstring
    assert np.array_equal(A.RandAugment('rand-m9-n1-p1', ops=['Posterize'])(img, r), A.posterize(img, 3))
    assert np.array_equal(A.RandAugment('rand-m9-n1-p1', ops=['PosterizeIncreasing'])(img, r),
                          A.posterize(img, 1))
    assert np.array_equal(A.RandAugment('rand-m5-n1-p1', ops=['Solarize'])(img, r), A.solarize(img, 128))
    assert np.array_equal(A.RandAugment('rand-m5-n1-p1', ops=['SolarizeAdd'])(img, r),
                          A.solarize_add(img, 55))
    assert np.array_equal(A.RandAugment('rand-m5-n1-p1', ops=['Brightness'])(img, r),
                          A.brightness(img, 1.0))                       # 1.8 * 0.5 + 0.1
    assert np.array_equal(A.RandAugment('rand-m9-n2-p1', ops=['Invert'])(img, r), img)  # twice
    # per-op probability 0.5
    ra = A.RandAugment('rand-m9-n1', ops=['Invert'])
    hits = sum(ra(img, np.random.RandomState(s))[0, 0, 0] != img[0, 0, 0] for s in range(1000))
    assert 430 < hits < 570
    # magnitude noise is clipped to [0, 10]
    noisy = A.RandAugment('rand-m9-mstd100')
    ms = [noisy.magnitude_sample(np.random.RandomState(s)) for s in range(200)]
    assert min(ms) == 0.0 and max(ms) == 10.0
    # translate at m10: +-45 % of the width, sign random
    t = A.RandAugment('rand-m10-n1-p1', ops=['TranslateX'], fill=(0, 0, 0))
    wide = np.tile(np.arange(1, 21, dtype=np.uint8)[None, :, None], (2, 1, 3))
    seen = set()
    for s in range(20):
        out = t(wide, np.random.RandomState(s))[0, :, 0]
        seen.add('left' if out[0] == 10 else 'right' if out[-1] == 11 else 'other')
    assert seen == {'left', 'right'}  # shifts of exactly 9 pixels either way


def test_randaugment_deterministic_by_seed():
    img = np.random.RandomState(0).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    ra = A.RandAugment('rand-m9-mstd0.5', fill=(124, 117, 104))
    a = ra(img, np.random.RandomState(5))
    b = ra(img, np.random.RandomState(5))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == img.shape
    outs = {ra(img, np.random.RandomState(s)).tobytes() for s in range(20)}
    assert len(outs) > 5
    before = img.copy()
    ra(img, np.random.RandomState(1))
    assert np.array_equal(img, before)  # the input is never changed


# ---------------------------------------------------------------- random erasing

def test_random_erasing_bounds_and_identity():
    x = np.zeros((3, 40, 50), np.float32)
    assert A.random_erase(x, np.random.RandomState(0), prob=0.0) is None and not x.any()
    er = A.RandomErasing(0.0)
    batch = np.ones((4, 3, 8, 8), np.float32)
    assert np.array_equal(er(batch.copy(), np.random.RandomState(0)), batch)
    H, W = 40, 50
    n_erased = 0
    noise = []
    for s in range(300):
        x = np.full((3, H, W), 7.0, np.float32)
        box = A.random_erase(x, np.random.RandomState(s), prob=1.0)
        if box is None:
            continue
        n_erased += 1
        top, left, h, w = box
        # rounding of h and w moves the area/aspect by at most half a pixel per side
        assert (h - 0.5) * (w - 0.5) <= H * W / 3.0 + 1e-9
        assert (h + 0.5) * (w + 0.5) >= 0.02 * H * W
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
        inside = np.zeros((H, W), bool)
        inside[top:top + h, left:left + w] = True
        assert (x[:, ~inside] == 7.0).all() and (x[:, inside] != 7.0).all()
        noise.append(x[:, inside].ravel())
    assert n_erased >= 290
    noise = np.concatenate(noise)
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02
    hits = sum(A.random_erase(np.zeros((1, 20, 20)), np.random.RandomState(s), prob=0.5) is not None
               for s in range(1000))
    assert 430 < hits < 570
    # NDArray batches are erased in place with the same draws as numpy ones
    import mxnet as mx
    base = np.random.RandomState(9).randn(6, 3, 12, 10).astype(np.float32)
    er = A.RandomErasing(0.7)
    want = er(base.copy(), np.random.RandomState(2))
    got = er(mx.nd.array(base), np.random.RandomState(2)).asnumpy()
    assert np.array_equal(want, got) and not np.array_equal(want, base)
    with pytest.raises(ConfigError, match="only 'pixel'"):
        A.RandomErasing(0.5, mode='const')


def test_erasing_iter_resume_exact():
    imgs = np.random.RandomState(0).randint(0, 256, (10, 3, 8, 8)).astype(np.uint8)
    inner = ArrayIter(imgs, np.arange(10) % 2, 4, shuffle=True, last_batch='rollover', seed=3)
    it = A.ErasingIter(inner, A.RandomErasing(1.0), seed=3)
    assert len(it) == 3 and it.batch_size == 4 and it.num_samples == 10
    it.set_epoch(2)
    first = [b.data.asnumpy() for b in it]
    it.set_epoch(0)
    other = [b.data.asnumpy() for b in it]
    it.set_epoch(2)
    again = [b.data.asnumpy() for b in it]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    inner.set_epoch(2)
    plain = [b.data.asnumpy() for b in inner]
    changed = [(a != p).any(axis=(1, 2, 3)) for a, p in zip(first, plain)]
    assert np.concatenate(changed).all()  # p = 1: every row erased


# ---------------------------------------------------------------- the Python pipeline

@pytest.fixture(scope='module')
def jpeg_dir(tmp_path_factory):
    """train/val .rec of 12 smooth JPEGs of varied sizes, 3 classes."""
    root = tmp_path_factory.mktemp('pyrec')
    tree = root / 'tree'
    rng = np.random.RandomState(0)
    sizes = [(40, 56), (60, 44), (48, 48), (52, 70)]
    for c in range(3):
        os.makedirs(tree / ('c%d' % c))
        for k in range(4):
            h, w = sizes[(c + k) % 4]
            small = rng.randint(0, 256, (5, 6, 3)).astype(np.uint8)
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(tree / ('c%d' % c) / ('%d.jpg' % k)), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = root / 'data'
    pack(str(tree), str(out / 'train'), workers=1)
    pack(str(tree), str(out / 'val'), workers=1, shuffle=False)
    return str(out)


def test_python_val_matches_imagerecorditer(jpeg_dir):
    mean, std = (123.68, 116.779, 103.939), (58.393, 57.12, 57.375)
    rec = os.path.join(jpeg_dir, 'val.rec')
    ref = RecordIter(rec, batch_size=5, data_shape=(3, 32, 32), mean=mean, std=std,
                     aug={'resize': 37}, preprocess_threads=1)
    py = PyRecordIter(rec, batch_size=5, data_shape=(3, 32, 32), mean=mean, std=std, resize=37,
                      num_workers=0)
    a = [b for b in ref]
    b = [b for b in py]
    assert [x.pad for x in a] == [x.pad for x in b] == [0, 0, 3]
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert np.array_equal(x.label.asnumpy(), y.label.asnumpy())
        diff = np.abs(x.data.asnumpy() - y.data.asnumpy()) * np.array(std).reshape(1, 3, 1, 1)
        # same JPEG bytes, bilinear resize, same crop: rounding-level differences only
        assert diff.mean() < 0.5 and diff.max() <= 3.0, (diff.mean(), diff.max())
    py.close()


def test_python_train_pipeline_deterministic(jpeg_dir):
    rec = os.path.join(jpeg_dir, 'train.rec')
    ra = A.RandAugment('rand-m9-mstd0.5')
    kw = dict(batch_size=5, data_shape=(3, 16, 16), train=True, randaugment=ra, seed=4)
    it0 = PyRecordIter(rec, num_workers=0, **kw)
    it2 = PyRecordIter(rec, num_workers=2, **kw)
    assert len(it0) == 3 and it0.num_samples == 12
    it0.set_epoch(1)
    it2.set_epoch(1)
    b0 = [b for b in it0]
    b2 = [b for b in it2]
    assert all(b.pad == 0 and b.data.shape == (5, 3, 16, 16) for b in b0)
    for x, y in zip(b0, b2):  # worker count does not change the result
        assert np.array_equal(x.data.asnumpy(), y.data.asnumpy())
        assert np.array_equal(x.label.asnumpy(), y.label.asnumpy())
    it2.set_epoch(0)
    other = [b.data.asnumpy() for b in it2]
    it2.set_epoch(1)
    again = [b.data.asnumpy() for b in it2]
    assert all(np.array_equal(x.data.asnumpy(), y) for x, y in zip(b0, again))
    assert not np.array_equal(b0[0].data.asnumpy(), other[0])
    # every record appears in an epoch (12 records in 15 rows: 3 wrap round)
    labels = np.concatenate([b.label.asnumpy() for b in b0])
    assert np.bincount(labels[:12].astype(int)).tolist() == [4, 4, 4]
    it2.close()
    parts = [PyRecordIter(rec, num_parts=2, part_index=i, num_workers=0, **kw) for i in range(2)]
    assert [p.num_samples for p in parts] == [6, 6]
    assert set(parts[0]._positions) | set(parts[1]._positions) == set(range(12))


def test_build_data_augment_options(jpeg_dir, tmp_path):
    d = build_data('dtd', data_dir=jpeg_dir, batch_size=4, input_size=16, randaugment='rand-m9-mstd0.5',
                   random_erasing=0.5, num_workers=0, seed=1)
    assert isinstance(d.train, A.ErasingIter) and isinstance(d.train.inner, PyRecordIter)
    assert isinstance(d.val, RecordIter) and d.train.inner.randaugment.magnitude == 9
    assert d.train.inner.randaugment.fill == (124, 117, 104)
    assert next(iter(d.train)).data.shape == (4, 3, 16, 16)
    with pytest.raises(ConfigError, match='needs pipeline auto or python'):
        build_data('dtd', data_dir=jpeg_dir, randaugment='rand-m9', pipeline='record')
    with pytest.raises(ConfigError, match="unknown part 'q1'"):
        build_data('dtd', data_dir=jpeg_dir, randaugment='rand-q1')
    plain = build_data('dtd', data_dir=jpeg_dir, batch_size=4, input_size=16)
    assert isinstance(plain.train, RecordIter)
    py = build_data('cifar10', data_dir=jpeg_dir, batch_size=4, input_size=16, pipeline='python',
                    num_workers=0)
    assert py.train.dataset.pad == 4 and isinstance(py.val, PyRecordIter)
    assert next(iter(py.train)).data.shape == (4, 3, 16, 16)


def test_cifar_array_randaugment():
    from gluon_transfer.data.datasets import _CifarRandAugment
    imgs = np.random.RandomState(0).randint(0, 256, (3, 3, 8, 8)).astype(np.uint8)
    aug = _CifarRandAugment(A.RandAugment('rand-m9-n1-p1', ops=['Invert']))
    out = aug(imgs, np.random.RandomState(0))
    from gluon_transfer.data import pad_crop_flip
    assert np.array_equal(out, 255 - pad_crop_flip(imgs, np.random.RandomState(0)))


def test_cli_flags_reach_build_data():
    from gluon_transfer.cli import build_parser, augment_kwargs
    p = build_parser('imagenet', 'x')
    kw = augment_kwargs(p.parse_args(['--randaugment', '--random-erasing', '0.5', '--train-fraction', '0.3']))
    assert kw == dict(randaugment='rand-m9-mstd0.5', random_erasing=0.5, train_fraction=0.3,
                      fraction_seed=0, pipeline='auto', pad_mode='constant', train_aug=None)
    kw = augment_kwargs(p.parse_args(['--randaugment', 'rand-m7-n3', '--data-pipeline', 'python']))
    assert kw['randaugment'] == 'rand-m7-n3' and kw['pipeline'] == 'python'
    assert augment_kwargs(p.parse_args([]))['randaugment'] is None
