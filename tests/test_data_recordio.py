import os
import struct

import cv2
import numpy as np
import pytest
import mxnet as mx

from gluon_transfer.data import RecordIter, build_data, inspect_recordio, record_iter_kwargs, get_preset
from gluon_transfer.data.recordio import read_record, unpack_payload, indexed_part_size, RECORD_MAGIC
from gluon_transfer.errors import DataError, ConfigError
from data_helpers import write_rec, solid_image


@pytest.fixture
def no_cpp_iter(monkeypatch):
    """Fail the test if anything starts mx.io.ImageRecordIter."""
    def boom(**kw):
        raise AssertionError('ImageRecordIter was started on a damaged file')
    monkeypatch.setattr(mx.io, 'ImageRecordIter', boom)


def _ids(batch, drop_pad=True):
    """Record ids from the red channel (data normalised with mean 0, std 1)."""
    x = batch.data.asnumpy()[:, 0, 0, 0]
    n = len(x) - (batch.pad if drop_pad else 0)
    return [int(round(v)) for v in x[:n]]


def test_inspect_reads_offsets_and_labels(tmp_path):
    rec, idx = write_rec(str(tmp_path / 'a'), 7, label_of=lambda i: 6 - i)
    info = inspect_recordio(rec)
    assert info.num_records == 7 and list(info.keys) == list(range(7))
    assert list(info.labels) == [6, 5, 4, 3, 2, 1, 0]
    with open(idx) as f:
        assert list(info.offsets) == [int(ln.split('\t')[1]) for ln in f]


def test_multi_part_record_is_accepted_and_read_back(tmp_path):
    magic = struct.pack('<I', RECORD_MAGIC)
    body = b'abcd' + magic + b'efghij'  # the writer splits at the aligned magic
    rec, idx = write_rec(str(tmp_path / 'm'), 3, payload_of=lambda i: body if i == 1 else None)
    info = inspect_recordio(rec)
    with open(rec, 'rb') as f:
        f.seek(int(info.offsets[1]) + 4)
        assert struct.unpack('<I', f.read(4))[0] >> 29 == 1  # really split
        payload = read_record(f, int(info.offsets[1]))
    assert unpack_payload(payload)[4] == body
    r = mx.recordio.MXIndexedRecordIO(idx, rec, 'r')
    assert mx.recordio.unpack(r.read_idx(1))[1] == body
    r.close()


def test_missing_and_empty_files(tmp_path, no_cpp_iter):
    with pytest.raises(DataError, match=r'nope\.rec: record file not found'):
        inspect_recordio(str(tmp_path / 'nope.rec'))
    rec, idx = write_rec(str(tmp_path / 'a'), 4)
    os.remove(idx)
    with pytest.raises(DataError, match=r'a\.rec has no index file .*a\.idx'):
        RecordIter(rec, batch_size=2, data_shape=(3, 8, 8))
    open(idx, 'w').close()
    with pytest.raises(DataError, match='lists no records'):
        inspect_recordio(rec)
    with open(idx, 'w') as f:
        f.write('0\t0\n1\tabc\n')
    with pytest.raises(DataError, match=r'a\.idx: line 2 is not'):
        inspect_recordio(rec)


@pytest.mark.parametrize('keep', [0.5, 0.97])
def test_truncated_rec_with_idx_never_reaches_cpp(tmp_path, no_cpp_iter, keep):
    rec, idx = write_rec(str(tmp_path / 't'), 20)
    size = os.path.getsize(rec)
    with open(rec, 'r+b') as f:
        f.truncate(int(size * keep) // 4 * 4 + 2)
    with pytest.raises(DataError, match=r't\.rec: record \d+ .*truncated'):
        RecordIter(rec, batch_size=4, data_shape=(3, 8, 8))


def test_truncated_rec_without_idx(tmp_path, no_cpp_iter):
    rec, idx = write_rec(str(tmp_path / 't'), 20)
    with open(rec, 'r+b') as f:
        f.truncate(os.path.getsize(rec) // 3)
    os.remove(idx)
    with pytest.raises(DataError, match='has no index file'):
        RecordIter(rec, batch_size=4, data_shape=(3, 8, 8))


@pytest.mark.parametrize('bad_offset, why', [(8, 'does not start with the RecordIO magic'),
                                             (10 ** 9, 'beyond the end of the file'),
                                             (6, 'not 4-byte aligned')])
def test_garbage_offset_in_idx(tmp_path, no_cpp_iter, bad_offset, why):
    rec, idx = write_rec(str(tmp_path / 'g'), 6)
    with open(idx) as f:
        lines = f.read().splitlines()
    lines[3] = '3\t%d' % bad_offset
    with open(idx, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match=r'g\.rec: record 3 \(offset %d\) .*%s' % (bad_offset, why)):
        RecordIter(rec, batch_size=2, data_shape=(3, 8, 8))


def _garble(i):
    if i != 5:
        return None
    ok, enc = cv2.imencode('.jpg', solid_image(5))
    b = enc.tobytes()
    return b[:20] + bytes(np.random.RandomState(0).randint(0, 256, len(b) - 20).astype(np.uint8))


def test_garbled_jpeg_named_before_cpp_iter(tmp_path, no_cpp_iter):
    rec, idx = write_rec(str(tmp_path / 'j'), 12, payload_of=_garble)
    inspect_recordio(rec)  # the structure is intact
    with pytest.raises(DataError, match=r'j\.rec: record 5 holds \d+ bytes that do not decode'):
        RecordIter(rec, batch_size=4, data_shape=(3, 8, 8))  # verify='auto' decodes small files


@pytest.fixture
def big_file_rules(monkeypatch, tmp_path):
    """Treat every file as a large one (the tests' files are a few kB): the old size limit of
    the decode check (if this version still had one) and the size from which a passed check
    is remembered both drop to 0; the cache goes to a temporary directory."""
    from gluon_transfer.data import recordio
    monkeypatch.setattr(recordio, 'AUTO_DECODE_BYTES', 0, raising=False)
    monkeypatch.setattr(recordio, 'STAMP_MIN_BYTES', 0, raising=False)
    monkeypatch.setenv('GLUON_TRANSFER_CACHE', str(tmp_path / 'cache'))
    return recordio


def test_corrupt_record_is_an_error_at_every_size(tmp_path, no_cpp_iter, big_file_rules):
    """A large file's undecodable record is refused like a small file's, before
    ImageRecordIter opens the file. (With the CIFAR presets' pad + random-crop augmentation,
    ImageRecordIter turns it into a blank training image without a word: measured.)"""
    rec, idx = write_rec(str(tmp_path / 'j'), 12, payload_of=_garble)
    shape, aug = record_iter_kwargs('cifar10', True, 8)
    with pytest.raises(DataError, match=r'j\.rec: record 5 holds \d+ bytes that do not decode'):
        RecordIter(rec, batch_size=4, data_shape=shape, aug=aug, train=True)
    with pytest.raises(DataError, match=r'j\.rec: record 5 holds \d+ bytes that do not decode'):
        build_data('cifar10', rec_train=rec, rec_val=rec, batch_size=4, input_size=8, pipeline='record')
    assert not (tmp_path / 'cache').exists()           # a failed check is not remembered


def test_passed_check_of_a_large_file_runs_once_per_version(tmp_path, big_file_rules, monkeypatch):
    """Large files: a passed check is remembered for the records checked, keyed on the files'
    identity; another part, or a changed file, is checked (again)."""
    rec, idx = write_rec(str(tmp_path / 'ok'), 16)
    calls = []
    real = big_file_rules.find_bad_record

    def counting(info, positions=None, workers=1):
        calls.append(list(positions))
        return real(info, positions, workers)
    monkeypatch.setattr(big_file_rules, 'find_bad_record', counting)
    RecordIter(rec, batch_size=4, data_shape=(3, 8, 8))
    RecordIter(rec, batch_size=4, data_shape=(3, 8, 8), num_parts=2, part_index=1)   # inside the full check
    assert calls == [list(range(16))]
    assert len(os.listdir(str(tmp_path / 'cache' / 'verified'))) == 1
    # Same size, one record garbled in place: the file's identity (times) changed.
    info = inspect_recordio(rec)
    with open(rec, 'r+b') as f:
        f.seek(int(info.offsets[9]) + 8 + 24 + 30)
        f.write(b'\x00' * 8)
    with pytest.raises(DataError, match=r'ok\.rec: record 9 '):
        RecordIter(rec, batch_size=4, data_shape=(3, 8, 8))
    assert len(calls) == 2
    # A part checked on its own is remembered as that part only.
    rec2, _ = write_rec(str(tmp_path / 'ok2'), 16)
    RecordIter(rec2, batch_size=4, data_shape=(3, 8, 8), num_parts=2, part_index=0)
    RecordIter(rec2, batch_size=4, data_shape=(3, 8, 8), num_parts=2, part_index=0)
    RecordIter(rec2, batch_size=4, data_shape=(3, 8, 8), num_parts=2, part_index=1)
    assert calls[2:] == [list(range(8)), list(range(8, 16))]


def test_parallel_decode_check_names_the_first_bad_record(tmp_path, monkeypatch):
    from gluon_transfer.data import recordio
    monkeypatch.setattr(recordio, 'PARALLEL_MIN_RECORDS', 1)
    bad = {5, 17, 18}

    def payload(i):
        return b'not an image %d' % i if i in bad else None
    rec, idx = write_rec(str(tmp_path / 'p'), 24, payload_of=payload)
    info = inspect_recordio(rec)
    want = (5, 'holds 14 bytes that do not decode as an image')
    assert recordio.find_bad_record(info) == want
    assert recordio.find_bad_record(info, workers=2) == want
    assert recordio.find_bad_record(info, range(6, 24), workers=3) == (17, want[1].replace('14', '15'))
    assert recordio.find_bad_record(info, range(19, 24), workers=2) is None
    with pytest.raises(DataError, match=r'p\.rec: record 5 holds 14 bytes'):
        RecordIter(rec, batch_size=4, data_shape=(3, 8, 8), preprocess_threads=2)


def test_garbled_jpeg_error_from_cpp_iter_is_named(tmp_path):
    # Without the up-front decode check, ImageRecordIter raises a catchable MXNetError
    # (no resize augmenter here: with one it dies of SIGFPE instead, see recordio.py).
    rec, idx = write_rec(str(tmp_path / 'j'), 12, payload_of=_garble)
    it = RecordIter(rec, batch_size=4, data_shape=(3, 8, 8), verify=False)
    with pytest.raises(DataError, match=r'j\.rec: record 5 holds .* \(ImageRecordIter: '):
        for _ in it:
            pass


@pytest.mark.parametrize('parts', [2, 3, 4])
def test_sharding_disjoint_and_covering(tmp_path, parts):
    rec, idx = write_rec(str(tmp_path / 's'), 23)
    seen = []
    for p in range(parts):
        val = RecordIter(rec, batch_size=2, data_shape=(3, 8, 8), num_parts=parts, part_index=p)
        got = [i for b in val for i in _ids(b)]
        assert len(got) == val.num_samples == indexed_part_size(23, parts, p)[0]
        seen.append(got)
        tr = RecordIter(rec, batch_size=2, data_shape=(3, 8, 8), num_parts=parts, part_index=p,
                        train=True, seed=1)
        bs = list(tr)
        assert len(bs) == len(tr) and all(b.pad == 0 and b.data.shape[0] == 2 for b in bs)
        assert set(i for b in bs for i in _ids(b)) == set(got)
    flat = [i for s in seen for i in s]
    assert sorted(flat) == list(range(23))  # covering, each record exactly once


def test_part_smaller_than_batch_is_config_error(tmp_path):
    rec, idx = write_rec(str(tmp_path / 's'), 5)
    with pytest.raises(ConfigError, match='fewer than the batch size'):
        RecordIter(rec, batch_size=4, data_shape=(3, 8, 8), num_parts=2, part_index=1)


def test_val_pad_and_order(tmp_path):
    rec, idx = write_rec(str(tmp_path / 'v'), 23)
    it = RecordIter(rec, batch_size=5, data_shape=(3, 8, 8))
    bs = list(it)
    assert len(it) == len(bs) == 5 and [b.pad for b in bs] == [0, 0, 0, 0, 2]
    assert [i for b in bs for i in _ids(b)] == list(range(23))
    assert _ids(bs[-1], drop_pad=False)[:3] == [20, 21, 22]
    assert [int(v) for v in bs[0].label.asnumpy()] == [0, 1, 2, 3, 0]


def test_set_epoch_is_deterministic(tmp_path):
    rec, idx = write_rec(str(tmp_path / 'd'), 24)
    shape, aug = record_iter_kwargs('cifar10', True, 8)
    it = RecordIter(rec, batch_size=6, data_shape=shape, aug=aug, train=True, seed=3)

    def epoch(e):
        it.set_epoch(e)
        return [(b.data.asnumpy(), b.label.asnumpy()) for b in it]
    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    order = lambda bs: [int(round(v)) for d, _ in bs for v in d[:, 0].max(axis=(1, 2))]
    assert sorted(order(a)) == sorted(order(c)) == list(range(24))
    assert order(a) != order(c)
    other = RecordIter(rec, batch_size=6, data_shape=shape, aug=aug, train=True, seed=4)
    other.set_epoch(1)
    assert order(a) != order([(b.data.asnumpy(), None) for b in other])


def test_preset_values_reach_the_iterator(tmp_path, monkeypatch):
    rec, idx = write_rec(str(tmp_path / 'p'), 8, size=8)
    seen = []
    real = mx.io.ImageRecordIter

    def spy(**kw):
        seen.append(kw)
        return real(**kw)
    monkeypatch.setattr(mx.io, 'ImageRecordIter', spy)
    pre = get_preset('imagenet')
    shape, aug = record_iter_kwargs(pre, True, 8)
    list(RecordIter(rec, batch_size=4, data_shape=shape, aug=aug, mean=pre.mean, std=pre.std,
                    train=True, preprocess_threads=1))
    kw = seen[-1]
    want = dict(random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                min_aspect_ratio=0.75, max_aspect_ratio=4 / 3., rand_mirror=True, brightness=0.4,
                contrast=0.4, saturation=0.4, pca_noise=0.1, mean_r=123.68, mean_g=116.779,
                mean_b=103.939, std_r=58.393, std_g=57.12, std_b=57.375, round_batch=True,
                shuffle=True, preprocess_threads=1)
    assert {k: kw[k] for k in want} == pytest.approx(want)
    assert kw['data_shape'] == (3, 8, 8)
    shape, aug = record_iter_kwargs('imagenet', False, 224, 0.875)
    assert aug == {'resize': 256}
    shape, aug = record_iter_kwargs('imagenet', False, 8, 0.5)
    list(RecordIter(rec, batch_size=4, data_shape=shape, aug=aug))
    assert seen[-1]['resize'] == 16 and seen[-1]['shuffle'] is False


def test_cifar_normalisation_and_zero_padding(tmp_path):
    rec, idx = write_rec(str(tmp_path / 'c'), 40, size=8)
    pre = get_preset('cifar10')
    shape, aug = record_iter_kwargs(pre, False, 8)
    b = next(iter(RecordIter(rec, batch_size=40, data_shape=shape, aug=aug, mean=pre.mean, std=pre.std)))
    x = b.data.asnumpy()
    for i in range(40):  # pixel (R, G, B) = (i, 1, 200)
        want = [(i - 0.4914 * 255) / (0.2023 * 255), (1 - 0.4822 * 255) / (0.1994 * 255),
                (200 - 0.4465 * 255) / (0.2010 * 255)]
        np.testing.assert_allclose(x[i, :, 3, 3], want, rtol=1e-5)
    # training: zero-padded random crops; the fill is 0 (not ImageRecordIter's default 255)
    shape, aug = record_iter_kwargs(pre, True, 8)
    assert aug['fill_value'] == 0 and aug['pad'] == 4
    it = RecordIter(rec, batch_size=40, data_shape=shape, aug=aug, train=True)
    x = next(iter(it)).data.asnumpy()
    red = x[:, 0]
    ids = red.max(axis=(1, 2))
    for i in range(40):
        vals = set(np.unique(red[i]).tolist())
        assert vals <= {0.0, float(ids[i])}
    assert (red == 0).any(axis=(1, 2)).sum() > 20  # most crops show some padding
