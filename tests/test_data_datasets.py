import os

import numpy as np
import pytest

from gluon_transfer.data import build_data, read_cifar_binary, pad_crop_flip, ArrayIter, get_preset
from gluon_transfer.errors import DataError, ConfigError
from gluon_transfer.registry import DATASETS
from data_helpers import write_rec


def _rec_dir(root, n_train=12, n_val=7, val_name='val', classes=None, label_of=lambda i: i % 3):
    os.makedirs(root, exist_ok=True)
    write_rec(os.path.join(root, 'train'), n_train, label_of=label_of)
    write_rec(os.path.join(root, val_name), n_val, label_of=label_of)
    if classes:
        with open(os.path.join(root, 'classes.txt'), 'w') as f:
            f.write('\n'.join(classes) + '\n')
    return root


def test_presets_registered():
    assert set(DATASETS.names()) >= {'cifar10', 'cifar100', 'imagenet', 'transfer'}
    assert DATASETS.get('imagenet').input_size == 224
    with pytest.raises(ConfigError, match="unknown dataset preset 'cifar1'"):
        build_data('cifar1', data_dir='.')


def test_build_from_recordio_dir_with_classes(tmp_path):
    d = _rec_dir(str(tmp_path / 'd'), classes=['a', 'b', 'c', 'd'])
    data = build_data('cifar10', data_dir=d, batch_size=4, input_size=8, seed=1)
    assert data.num_classes == 4 and data.classes == ['a', 'b', 'c', 'd']
    assert data.num_train == 12 and data.num_val == 7 and data.source == 'recordio'
    assert len(data.train) == 3 and len(data.val) == 2
    assert data.train.iter_kwargs['pad'] == 4 and data.train.iter_kwargs['fill_value'] == 0
    assert [b.pad for b in data.val] == [0, 1]
    b = next(iter(data.train))
    assert b.data.shape == (4, 3, 8, 8) and b.label.shape == (4,)


def test_build_uses_test_split_and_label_scan(tmp_path):
    d = _rec_dir(str(tmp_path / 'd'), val_name='test', label_of=lambda i: i % 5)
    data = build_data('imagenet', data_dir=d, batch_size=2, input_size=8, crop_ratio=0.5)
    assert data.num_classes == 5 and data.classes is None  # max label + 1
    assert data.val.rec.endswith('test.rec') and data.val.iter_kwargs['resize'] == 16
    only_val = build_data('imagenet', rec_val=os.path.join(d, 'test.rec'), with_train=False,
                          batch_size=2, input_size=8)
    assert only_val.train is None and only_val.num_classes == 5


def test_label_outside_classes_txt(tmp_path):
    d = _rec_dir(str(tmp_path / 'd'), classes=['a', 'b'])
    with pytest.raises(DataError, match=r'train\.rec: record 2 has label 2\.0, outside the 2 classes'):
        build_data('cifar10', data_dir=d, batch_size=2)


def test_missing_and_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match=r'nope: data dir not found \(expected train\.rec/\.idx and '
                                        r'val\.rec/\.idx or test\.rec/\.idx, or the binary cifar10 '
                                        r'files \(data_batch_1\.bin'):
        build_data('cifar10', data_dir=str(tmp_path / 'nope'))
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(DataError, match='empty: no data found'):
        build_data('imagenet', data_dir=str(tmp_path / 'empty'))
    with pytest.raises(ConfigError, match='no default data dir'):
        build_data('transfer')
    d = _rec_dir(str(tmp_path / 'd'))
    os.remove(os.path.join(d, 'val.idx'))
    with pytest.raises(DataError, match=r'val\.rec has no index file'):
        build_data('cifar10', data_dir=d)
    with pytest.raises(ConfigError, match='coarse_labels needs the binary'):
        build_data('cifar100', data_dir=d, coarse_labels=True)


def _write_cifar(folder, files, n, label_bytes, rng):
    os.makedirs(folder, exist_ok=True)
    truth = {}
    for fn in files:
        imgs = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
        labs = rng.randint(0, 20, size=(n, label_bytes)).astype(np.uint8)
        with open(os.path.join(folder, fn), 'wb') as f:
            for i in range(n):
                f.write(labs[i].tobytes() + imgs[i].tobytes())
        truth[fn] = (imgs, labs)
    return truth


def test_cifar10_binary(tmp_path, rng):
    folder = tmp_path / 'c10' / 'cifar-10-batches-bin'
    files = ['data_batch_%d.bin' % i for i in range(1, 6)] + ['test_batch.bin']
    truth = _write_cifar(str(folder), files, 3, 1, rng)
    with open(folder / 'batches.meta.txt', 'w') as f:
        f.write('\n'.join('c%d' % i for i in range(10)) + '\n\n')
    x, y, names = read_cifar_binary(str(tmp_path / 'c10'), 'cifar10', train=True)
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.uint8 and names[3] == 'c3'
    np.testing.assert_array_equal(x[3:6], truth['data_batch_2.bin'][0])
    np.testing.assert_array_equal(y[:3], truth['data_batch_1.bin'][1][:, 0])
    # byte 1 + 1024 + 2*32 + 5 of a record is the green value of row 2, column 5
    with open(folder / 'test_batch.bin', 'rb') as f:
        raw = f.read()
    xt, yt, _ = read_cifar_binary(str(tmp_path / 'c10'), 'cifar10', train=False)
    assert xt[0, 1, 2, 5] == raw[1 + 1024 + 2 * 32 + 5] and yt[1] == raw[3073]

    data = build_data('cifar10', data_dir=str(tmp_path / 'c10'), batch_size=4)
    assert data.source == 'cifar-binary' and data.num_train == 15 and data.num_classes == 10
    assert len(data.train) == 4 and all(b.pad == 0 and b.data.shape[0] == 4 for b in data.train)
    assert [b.pad for b in data.val] == [1]
    v = next(iter(data.val)).data.asnumpy()
    pre = get_preset('cifar10')
    want = (xt[:3].astype(np.float32) - np.array(pre.mean, np.float32).reshape(1, 3, 1, 1)) \
        / np.array(pre.std, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(v[:3], want, rtol=1e-5)


def test_cifar100_binary_fine_and_coarse(tmp_path, rng):
    truth = _write_cifar(str(tmp_path / 'c100'), ['train.bin', 'test.bin'], 4, 2, rng)
    _, fine, _ = read_cifar_binary(str(tmp_path / 'c100'), 'cifar100', train=True)
    _, coarse, _ = read_cifar_binary(str(tmp_path / 'c100'), 'cifar100', train=True, coarse=True)
    np.testing.assert_array_equal(fine, truth['train.bin'][1][:, 1])
    np.testing.assert_array_equal(coarse, truth['train.bin'][1][:, 0])
    assert build_data('cifar100', data_dir=str(tmp_path / 'c100'), batch_size=2).num_classes == 100
    data = build_data('cifar100', data_dir=str(tmp_path / 'c100'), batch_size=2, coarse_labels=True)
    assert data.num_classes == 20
    np.testing.assert_array_equal(next(iter(data.val)).label.asnumpy(), truth['test.bin'][1][:2, 0])
    with open(tmp_path / 'c100' / 'test.bin', 'ab') as f:
        f.write(b'xx')
    with pytest.raises(DataError, match=r'test\.bin: 12298 bytes is not a whole number of 3074-byte'):
        build_data('cifar100', data_dir=str(tmp_path / 'c100'))


def test_pad_crop_flip_is_a_uniform_shifted_crop(rng):
    img = (np.arange(36).reshape(1, 1, 6, 6) + 1).astype(np.uint8)
    padded = np.pad(img[0, 0], 2)
    cands = {}
    for dy in range(5):
        for dx in range(5):
            crop = padded[dy:dy + 6, dx:dx + 6]
            cands[(dy, dx, 0)] = crop
            cands[(dy, dx, 1)] = crop[:, ::-1]
    out = pad_crop_flip(np.repeat(img, 5000, axis=0), rng, pad=2)
    counts = {}
    for o in out[:, 0]:
        hits = [k for k, c in cands.items() if np.array_equal(o, c)]
        assert len(hits) == 1
        counts[hits[0]] = counts.get(hits[0], 0) + 1
    assert len(counts) == 50
    assert 50 < min(counts.values()) and max(counts.values()) < 150  # expected 100 each


def test_array_iter_sharding_and_epochs(rng):
    x = np.arange(23, dtype=np.uint8).reshape(23, 1, 1, 1).repeat(3, axis=1)
    y = np.arange(23)
    parts = []
    for p in range(3):
        it = ArrayIter(x, y, 4, num_parts=3, part_index=p, last_batch='pad')
        parts.append([int(v) for b in it for v in b.label.asnumpy()[:4 - b.pad]])
    assert sorted(sum(parts, [])) == list(range(23))
    assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])
    tr = ArrayIter(x, y, 4, shuffle=True, last_batch='rollover', seed=5)
    ep = lambda e: (tr.set_epoch(e), [b.label.asnumpy().tolist() for b in tr])[1]
    assert ep(2) == ep(2) and ep(2) != ep(3)
    small = ArrayIter(x[:3], y[:3], 8, last_batch='pad')  # shard smaller than a batch
    b = next(iter(small))
    assert b.data.shape[0] == 8 and b.pad == 5


SAMPLE = os.path.join(os.path.dirname(__file__), '..', 'data', 'cifar10_sample')


def test_shipped_demo_sample():
    data = build_data('cifar10', data_dir=SAMPLE, batch_size=100)
    assert data.num_train == 4000 and data.num_val == 1000 and data.num_classes == 10
    assert data.classes[0] == 'airplane' and data.classes[9] == 'truck'
    counts = np.bincount(data.train.info.labels.astype(int), minlength=10)
    assert counts.tolist() == [400] * 10
    assert np.bincount(data.val.info.labels.astype(int)).tolist() == [100] * 10


@pytest.mark.realdata
def test_demo_sample_bytes_match_source(cifar10_shared):
    from gluon_transfer.data.recordio import inspect_recordio, read_record, unpack_payload
    src = inspect_recordio(os.path.join(cifar10_shared, 'val.rec'))
    smp = inspect_recordio(os.path.join(SAMPLE, 'val.rec'))
    with open(src.rec, 'rb') as fs:
        src_bodies = {}
        for off, lab in zip(src.offsets[:2000], src.labels[:2000]):
            src_bodies.setdefault(unpack_payload(read_record(fs, int(off)))[4], float(lab))
    with open(smp.rec, 'rb') as f:
        for off, lab in zip(smp.offsets[:50], smp.labels[:50]):
            body = unpack_payload(read_record(f, int(off)))[4]
            assert src_bodies[body] == float(lab)
