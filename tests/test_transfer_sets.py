"""Preparers of the transfer sets on miniature fake trees in the official layouts, and
the class-balanced training subsets."""
import collections
import hashlib
import json
import os

import cv2
import numpy as np
import pytest
import scipy.io

from gluon_transfer.data import build_data, inspect_recordio, read_classes, read_lst, read_split
from gluon_transfer.data.datasets import class_balanced_subset, subset_count, TRANSFER_DATASETS
from gluon_transfer.data.pack import CorruptImagesError
from gluon_transfer.data.transfer_sets import prepare_dataset, PREPARERS, OFFICIAL_COUNTS, carve_validation
from gluon_transfer.errors import ConfigError, DataError
from gluon_transfer.registry import DATASETS
from tool_helpers import load_tool

_RNG = np.random.RandomState(0)


def _jpg(path, seed_val=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.full((6, 7, 3), seed_val % 256, np.uint8)
    img[0, 0] = _RNG.randint(0, 256, 3)
    ok, enc = cv2.imencode('.jpg', img)
    with open(path, 'wb') as f:
        f.write(enc.tobytes())


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join(ln + '\n' for ln in lines))


def _cell(strings, shape):
    c = np.empty(shape, dtype=object)
    for i, s in enumerate(strings):
        c.flat[i] = np.array([s])
    return c


def _sha1(path):
    with open(path, 'rb') as f:
        return hashlib.sha1(f.read()).hexdigest()


def _rec_rows(prefix):
    """{relpath: label} of a written split (the .lst pack writes beside the .rec)."""
    return {rel: int(lab[0]) for _, lab, rel in read_lst(prefix + '.lst')}


# ---------------------------------------------------------------- fake trees

def make_dogs(src, lists_dir=''):
    classes = ['n02085620-Chihuahua', 'n02085782-Japanese_spaniel', 'n02085936-Maltese_dog']
    split = {'train': [], 'test': []}
    for c, name in enumerate(classes):
        for k in range(3):
            rel = '%s/%s_%d.jpg' % (name, name.split('-')[0], k)
            _jpg(os.path.join(src, 'Images', rel), c)
            split['train' if k < 2 else 'test'].append((rel, c + 1))
    for s, rows in split.items():
        os.makedirs(os.path.join(src, lists_dir), exist_ok=True)
        scipy.io.savemat(os.path.join(src, lists_dir, '%s_list.mat' % s),
                         {'file_list': _cell([r for r, _ in rows], (len(rows), 1)),
                          'annotation_list': _cell([r[:-4] for r, _ in rows], (len(rows), 1)),
                          'labels': np.array([[lab] for _, lab in rows], np.float64)})
    return classes, {'train': 6, 'test': 3}


def make_indoor(src):
    classes = ['airport_inside', 'bakery', 'kitchen']
    tr, te = [], []
    for c, name in enumerate(classes):
        for k in range(3 + c):
            rel = '%s/%s_%04d.jpg' % (name, name, k)
            _jpg(os.path.join(src, 'Images', rel), c)
            (tr if k % 3 else te).append(rel)
    _write(os.path.join(src, 'TrainImages.txt'), tr)
    _write(os.path.join(src, 'TestImages.txt'), te)
    return classes, {'train': len(tr), 'test': len(te)}


def make_caltech(src):
    classes = ['001.ak47', '002.american-flag', '010.beer-mug']
    for c, name in enumerate(classes + ['257.clutter']):
        for k in range(5 + c):
            _jpg(os.path.join(src, '256_ObjectCategories', name, '%s_%04d.jpg' % (name[:3], k + 1)), c)
    # not an image / not a class folder / nested folder: all ignored
    _write(os.path.join(src, '256_ObjectCategories', '001.ak47', 'RENAME2'), ['x'])
    os.makedirs(os.path.join(src, '256_ObjectCategories', 'misc'))
    _jpg(os.path.join(src, '256_ObjectCategories', '010.beer-mug', 'greg', 'x.jpg'))
    return classes, None


def make_cub(src):
    root = os.path.join(src, 'CUB_200_2011')
    classes = ['001.Black_footed_Albatross', '002.Laysan_Albatross']
    images, labels, split = [], [], []
    i = 0
    for c, name in enumerate(classes):
        for k in range(3):
            i += 1
            rel = '%s/%s_%04d.jpg' % (name, name[4:], k)
            _jpg(os.path.join(root, 'images', rel), c)
            images.append('%d %s' % (i, rel))
            labels.append('%d %d' % (i, c + 1))
            split.append('%d %d' % (i, 1 if k != 1 else 0))
    _write(os.path.join(root, 'images.txt'), images)
    _write(os.path.join(root, 'image_class_labels.txt'), labels)
    _write(os.path.join(root, 'train_test_split.txt'), split)
    _write(os.path.join(root, 'classes.txt'), ['%d %s' % (c + 1, n) for c, n in enumerate(classes)])
    return classes, {'train': 4, 'test': 2}


def make_food(src):
    root = os.path.join(src, 'food-101')
    classes = ['churros', 'apple_pie', 'tacos']   # official order is the file's, not sorted
    tr, te = [], []
    for c, name in enumerate(classes):
        for k in range(3):
            _jpg(os.path.join(root, 'images', name, '%d.jpg' % (1000 + k)), c)
            (te if k == 2 else tr).append('%s/%d' % (name, 1000 + k))
    _write(os.path.join(root, 'meta', 'classes.txt'), classes)
    _write(os.path.join(root, 'meta', 'train.txt'), tr)
    _write(os.path.join(root, 'meta', 'test.txt'), te)
    return classes, {'train': 6, 'test': 3}


def make_cars(src):
    classes = ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012', 'smart fortwo Convertible 2012']
    os.makedirs(os.path.join(src, 'devkit'))
    scipy.io.savemat(os.path.join(src, 'devkit', 'cars_meta.mat'),
                     {'class_names': np.array([classes], dtype=object)})
    for split, fn, n in (('train', 'devkit/cars_train_annos.mat', 6), ('test', 'cars_test_annos_withlabels.mat', 4)):
        ann = np.zeros((1, n), dtype=[('bbox_x1', 'O'), ('bbox_y1', 'O'), ('bbox_x2', 'O'),
                                      ('bbox_y2', 'O'), ('class', 'O'), ('fname', 'O')])
        for i in range(n):
            fname = '%05d.jpg' % (i + 1)
            _jpg(os.path.join(src, 'cars_%s' % split, fname), i)
            one = np.array([[1]], np.uint8)
            ann[0, i] = (one, one, one, one, np.array([[i % 3 + 1]], np.uint8), fname)
        scipy.io.savemat(os.path.join(src, fn), {'annotations': ann})
    return classes, {'train': 6, 'test': 4}


def make_aircraft(src):
    data = os.path.join(src, 'fgvc-aircraft-2013b', 'data')
    classes = ['707-320', 'F/A-18', 'Falcon 2000']
    tv, te = [], []
    for c, name in enumerate(classes):
        for k in range(3):
            img_id = '%07d' % (34309 + 10 * c + k)   # leading zeros are part of the id
            _jpg(os.path.join(data, 'images', img_id + '.jpg'), c)
            (te if k == 0 else tv).append('%s %s' % (img_id, name))
    _write(os.path.join(data, 'variants.txt'), classes)
    _write(os.path.join(data, 'images_variant_trainval.txt'), tv)
    _write(os.path.join(data, 'images_variant_test.txt'), te)
    return classes, {'train': 6, 'test': 3}


def make_dtd(src):
    root = os.path.join(src, 'dtd')
    classes = ['banded', 'blotchy', 'zigzagged']
    lists = {'train': [], 'val': [], 'test': []}
    for c, name in enumerate(classes):
        for k in range(4):
            rel = '%s/%s_%04d.jpg' % (name, name, k)
            _jpg(os.path.join(root, 'images', rel), c)
            lists[['train', 'train', 'val', 'test'][k]].append(rel)
    for s, rows in lists.items():
        _write(os.path.join(root, 'labels', '%s1.txt' % s), rows)
    _write(os.path.join(root, 'labels', 'train2.txt'), lists['val'])   # another split exists
    return classes, {'train': 6, 'val': 3, 'test': 3}


MAKERS = {'stanford_dogs': make_dogs, 'mit_indoor67': make_indoor, 'cub200': make_cub,
          'food101': make_food, 'stanford_cars': make_cars, 'fgvc_aircraft': make_aircraft, 'dtd': make_dtd}


def _official(monkeypatch, name, classes, official):
    """The published counts, replaced by the fake tree's (the check itself runs)."""
    monkeypatch.setitem(OFFICIAL_COUNTS, name, dict(official, classes=len(classes)))


def _check_written(out, classes, counts, spec):
    assert read_classes(os.path.join(out, 'classes.txt')) == classes
    with open(os.path.join(out, 'dataset.json')) as f:
        man = json.load(f)
    assert man['num_classes'] == len(classes) and man['complete']
    assert {k: v['records'] for k, v in man['splits'].items()} == counts
    for split, n in counts.items():
        info = inspect_recordio(os.path.join(out, split + '.rec'))
        assert info.num_records == n
        assert man['splits'][split]['rec_sha1'] == _sha1(os.path.join(out, split + '.rec'))
    for rel, digest in man['split_files'].items():
        assert _sha1(os.path.join(spec.root, rel)) == digest
    return man


@pytest.mark.parametrize('name', sorted(MAKERS))
def test_prepare_official_layouts(tmp_path, monkeypatch, name):
    src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
    classes, official = MAKERS[name](src)
    _official(monkeypatch, name, classes, official)
    spec = read_split(name, src)
    assert spec.classes == classes
    man = prepare_dataset(name, src, out, resize=0, workers=1)
    assert man['official_counts']['checked'] and man['official_counts']['found']['train'] == official['train']
    if 'val' in official:           # DTD: the official val split
        counts = dict(official)
    else:                           # every fake class has 2-3 training images: 10 %, at least 1 -> 1 each
        counts = {'train': official['train'] - len(classes), 'val': len(classes), 'test': official['test']}
    _check_written(out, classes, counts, spec)
    # labels: every listed image carries its class; test = the official test split, untouched
    rows = {split: _rec_rows(os.path.join(out, split)) for split in counts}
    assert rows['test'] == {rel: lab for lab, rel in spec.splits['test']}
    train = {rel: lab for lab, rel in spec.splits['train']}
    if 'val' in official:
        assert rows['val'] == {rel: lab for lab, rel in spec.splits['val']} and rows['train'] == train
        assert man['splits']['val']['source'] == 'official val split'
    else:                           # val carved from the official train list, disjoint from train
        assert not set(rows['val']) & set(rows['train']) and dict(rows['val'], **rows['train']) == train
        assert sorted(rows['val'].values()) == list(range(len(classes)))
        assert man['splits']['val']['source'].startswith('seeded per-class split of the official train split')
        assert man['validation'] == {'source': 'carved from the official train split', 'fraction': 0.1,
                                     'per_class': None, 'seed': 0}
    assert not set(rows['test']) & (set(rows['train']) | set(rows['val']))
    assert name in DATASETS and DATASETS.get(name).num_classes == TRANSFER_DATASETS[name]
    data = build_data(name, data_dir=out, batch_size=2, input_size=8, num_workers=1)
    assert data.num_classes == len(classes) and data.classes == classes
    assert data.num_train == counts['train'] and data.num_val == counts['val']
    assert data.val.info.rec == os.path.join(out, 'val.rec')          # model selection never sees test.rec


def test_label_semantics_by_dataset(tmp_path):
    # spot checks of the official label encodings
    src = str(tmp_path / 'dogs')
    make_dogs(src, lists_dir='lists')          # lists.tar extracted into lists/
    spec = read_split('stanford_dogs', src)
    assert (2, 'Images/n02085936-Maltese_dog/n02085936_2.jpg') in spec.splits['test']
    src = str(tmp_path / 'food')
    make_food(src)
    spec = read_split('food101', src)
    assert (0, 'images/churros/1000.jpg') in spec.splits['train']     # meta/classes.txt order
    src = str(tmp_path / 'air')
    make_aircraft(src)
    spec = read_split('fgvc_aircraft', src)
    assert (1, 'images/0034319.jpg') in spec.splits['test'] and spec.classes[1] == 'F/A-18'
    src = str(tmp_path / 'cars')
    make_cars(src)
    spec = read_split('stanford_cars', src)
    assert spec.splits['train'][4] == (1, 'cars_train/00005.jpg')      # class 2 -> label 1
    src = str(tmp_path / 'cub')
    make_cub(src)
    spec = read_split('cub200', src)
    assert spec.splits['test'] == [(0, 'images/001.Black_footed_Albatross/Black_footed_Albatross_0001.jpg'),
                                   (1, 'images/002.Laysan_Albatross/Laysan_Albatross_0001.jpg')]
    src = str(tmp_path / 'dtd')
    make_dtd(src)
    with pytest.raises(DataError, match=r'labels/val2\.txt not found'):
        read_split('dtd', src, split=2)       # only train2.txt exists
    with pytest.raises(ConfigError, match='DTD split must be 1..10'):
        read_split('dtd', src, split=11)
    with pytest.raises(ConfigError, match='option split does not apply to cub200'):
        read_split('cub200', str(tmp_path / 'cub'), split=2)
    with pytest.raises(ConfigError, match="unknown dataset preparer 'cub"):
        read_split('cub', src)


def test_caltech_protocol(tmp_path):
    src = str(tmp_path / 'src')
    classes, _ = make_caltech(src)
    # small fake classes: the reader with 2 or 3 train images per class
    from gluon_transfer.data.transfer_sets import read_caltech256
    s2 = read_caltech256(src, 2, seed=0)
    assert s2.classes == classes                             # 257.clutter excluded, number order
    s3 = read_caltech256(src, 3, seed=0)
    per = collections.Counter(lab for lab, _ in s2.splits['train'])
    assert per == {0: 2, 1: 2, 2: 2}
    assert collections.Counter(lab for lab, _ in s2.splits['test']) == {0: 3, 1: 4, 2: 5}
    assert set(s2.splits['train']) <= set(s3.splits['train'])        # 30 in 60
    assert not set(s2.splits['train']) & set(s2.splits['test'])
    assert all('greg' not in r and 'RENAME' not in r for _, r in s2.splits['test'])
    again = read_caltech256(src, 2, seed=0)
    other = read_caltech256(src, 2, seed=1)
    assert again.splits == s2.splits and other.splits != s2.splits
    t2 = read_caltech256(src, 2, seed=0, test_per_class=2)
    t3 = read_caltech256(src, 3, seed=0, test_per_class=2)
    assert t2.splits['test'] == t3.splits['test']                    # one shared test set
    assert collections.Counter(lab for lab, _ in t2.splits['test']) == {0: 2, 1: 2, 2: 2}
    clutter = read_caltech256(src, 2, with_clutter=True)
    assert clutter.classes[-1] == '257.clutter'
    with pytest.raises(DataError, match=r'001\.ak47: 5 images, the protocol needs at least 31'):
        read_caltech256(src, 30)


@pytest.mark.parametrize('name,remove,missing', [
    ('stanford_dogs', 'test_list.mat', 'test_list.mat'),
    ('mit_indoor67', 'TestImages.txt', 'TestImages.txt'),
    ('cub200', 'CUB_200_2011/train_test_split.txt', 'train_test_split.txt'),
    ('food101', 'food-101/meta/test.txt', 'meta/test.txt'),
    ('stanford_cars', 'cars_test_annos_withlabels.mat', 'cars_test_annos_withlabels.mat'),
    ('fgvc_aircraft', 'fgvc-aircraft-2013b/data/images_variant_test.txt', 'images_variant_test.txt'),
    ('dtd', 'dtd/labels/val1.txt', 'labels/val1.txt'),
])
def test_incomplete_tree(tmp_path, name, remove, missing):
    src = str(tmp_path / 'src')
    MAKERS[name](src)
    os.remove(os.path.join(src, remove))
    with pytest.raises(DataError) as e:
        prepare_dataset(name, src, str(tmp_path / 'out'), resize=0, workers=1)
    msg = str(e.value)
    assert '\n' not in msg and missing in msg and 'not found (expected' in msg and 'layout' in msg


def test_missing_image_and_source(tmp_path):
    src = str(tmp_path / 'src')
    make_cub(src)
    gone = os.path.join(src, 'CUB_200_2011', 'images', '002.Laysan_Albatross', 'Laysan_Albatross_0002.jpg')
    os.remove(gone)
    with pytest.raises(DataError, match=r'Laysan_Albatross_0002\.jpg not found: train split lists it'):
        prepare_dataset('cub200', src, str(tmp_path / 'out'), resize=0, workers=1, check_counts=False)
    with pytest.raises(DataError, match='nope: source dir not found'):
        prepare_dataset('cub200', str(tmp_path / 'nope'), str(tmp_path / 'out'))
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(DataError, match=r'empty/256_ObjectCategories not found \(expected Caltech-256'):
        read_split('caltech256_60', str(tmp_path / 'empty'))


def test_val_fraction_subsets_and_resize(tmp_path):
    src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
    root = os.path.join(src, 'food-101')
    classes = ['a', 'b']
    tr, te = [], []
    for c, name in enumerate(classes):
        for k in range(10 + 10 * c):
            _jpg(os.path.join(root, 'images', name, '%d.jpg' % k), c)
            (te if k < 2 else tr).append('%s/%d' % (name, k))
    _write(os.path.join(root, 'meta', 'classes.txt'), classes)
    _write(os.path.join(root, 'meta', 'train.txt'), tr)
    _write(os.path.join(root, 'meta', 'test.txt'), te)
    man = prepare_dataset('food101', src, out, resize=12, workers=1, val_fraction=0.25, fractions=(0.15, 0.5),
                          check_counts=False)
    # train per class: 8 and 18; val floor(0.25 n + 1/2): 2 and 5 (4.5 rounds up)
    assert {k: v['records'] for k, v in man['splits'].items()} == {'train': 19, 'val': 7, 'test': 4}
    assert '0.25 of each class, at least 1, seed 0' in man['splits']['val']['source']
    assert not man['official_counts']['checked']
    val = _rec_rows(os.path.join(out, 'val'))
    train = _rec_rows(os.path.join(out, 'train'))
    assert collections.Counter(val.values()) == {0: 2, 1: 5} and not set(val) & set(train)
    # fractions of the written train (6 and 13 per class): 15 % -> 1 and 2, 50 % -> 3 and 7
    assert man['fractions']['train_15']['records'] == 3 and man['fractions']['train_50']['records'] == 10
    full = inspect_recordio(os.path.join(out, 'train.rec'))
    f15 = inspect_recordio(os.path.join(out, 'train_15.rec'))
    f50 = inspect_recordio(os.path.join(out, 'train_50.rec'))
    assert set(f15.keys) <= set(f50.keys) <= set(full.keys)
    assert collections.Counter(f50.labels.tolist()) == {0: 3, 1: 7}
    # build_data(train_fraction) picks the same records as prepare --fraction
    d = build_data('food101', data_dir=out, batch_size=2, input_size=8, train_fraction=0.15,
                   subset_dir=str(tmp_path / 'cache'))
    assert sorted(d.train.info.keys) == sorted(f15.keys) and d.num_train == 3
    import mxnet as mx
    r = mx.recordio.MXIndexedRecordIO(os.path.join(out, 'val.idx'), os.path.join(out, 'val.rec'), 'r')
    img = mx.recordio.unpack_img(r.read_idx(0))[1]
    r.close()
    assert min(img.shape[:2]) == 12 and max(img.shape[:2]) == 14  # --resize 12: 6 x 7 -> 12 x 14
    make_dtd(str(tmp_path / 'd'))
    with pytest.raises(ConfigError, match='has an official val split'):
        prepare_dataset('dtd', str(tmp_path / 'd'), str(tmp_path / 'o2'), val_fraction=0.2, check_counts=False)
    assert not os.path.exists(tmp_path / 'o2')


def test_subset_counts_rule_and_determinism():
    assert [subset_count(n, 0.15) for n in (1, 3, 10, 20, 30, 60)] == [1, 1, 2, 3, 5, 9]
    assert [subset_count(n, 0.3) for n in (1, 5, 10, 30)] == [1, 2, 3, 9]
    assert [subset_count(n, 0.5) for n in (1, 3, 7, 30)] == [1, 2, 4, 15]
    assert [subset_count(n, 1.0) for n in (1, 7)] == [1, 7]
    labels = np.repeat(np.arange(4), [10, 7, 3, 1]).astype(np.float32)
    keys = np.random.RandomState(0).permutation(len(labels)) + 100
    for frac, want in ((0.15, [2, 1, 1, 1]), (0.3, [3, 2, 1, 1]), (0.5, [5, 4, 2, 1]), (1.0, [10, 7, 3, 1])):
        pos = class_balanced_subset(labels, keys, frac, seed=3)
        assert np.bincount(labels[pos].astype(int), minlength=4).tolist() == want
        assert np.array_equal(pos, np.sort(pos)) and len(set(pos.tolist())) == len(pos)
        assert np.array_equal(pos, class_balanced_subset(labels, keys, frac, seed=3))
    s15, s30, s50 = (set(class_balanced_subset(labels, keys, f, seed=3).tolist()) for f in (0.15, 0.3, 0.5))
    assert s15 <= s30 <= s50 <= set(range(len(labels)))
    # a different seed draws another subset; record order does not matter (keys do)
    assert set(class_balanced_subset(labels, keys, 0.5, seed=4).tolist()) != s50
    perm = np.random.RandomState(1).permutation(len(labels))
    moved = class_balanced_subset(labels[perm], keys[perm], 0.5, seed=3)
    assert set(keys[perm][moved].tolist()) == set(keys[sorted(s50)].tolist())
    with pytest.raises(ConfigError, match=r'fraction must be in \(0, 1\]'):
        class_balanced_subset(labels, keys, 0.0)


def test_train_fraction_cache(tmp_path, monkeypatch):
    from data_helpers import write_rec
    d = str(tmp_path / 'd')
    os.makedirs(d)
    write_rec(os.path.join(d, 'train'), 20, label_of=lambda i: i % 2)
    write_rec(os.path.join(d, 'val'), 4, label_of=lambda i: i % 2)
    listing = sorted(os.listdir(d))
    cache = str(tmp_path / 'cache')
    monkeypatch.setenv('GLUON_TRANSFER_CACHE', cache)
    a = build_data('transfer', data_dir=d, batch_size=2, input_size=8, train_fraction=0.3, fraction_seed=1)
    tag = hashlib.sha1(os.path.join(d, 'train.rec').encode()).hexdigest()[:12]
    assert a.num_train == 6 and a.train.rec == os.path.join(cache, 'subsets', tag, 'train_f0.3_s1.rec')
    assert sorted(os.listdir(d)) == listing                  # nothing written into the data folder
    mtime = os.path.getmtime(a.train.rec)
    b = build_data('transfer', data_dir=d, batch_size=2, input_size=8, train_fraction=0.3, fraction_seed=1)
    assert os.path.getmtime(b.train.rec) == mtime and list(b.train.info.keys) == list(a.train.info.keys)
    labels = [int(x) for x in a.train.info.labels]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    # a changed source (other size/mtime) rebuilds the cached subset: 30 records, 9 of them kept
    write_rec(os.path.join(d, 'train'), 30, label_of=lambda i: i % 2)
    c = build_data('transfer', data_dir=d, batch_size=2, input_size=8, train_fraction=0.3, fraction_seed=1)
    assert c.train.rec == a.train.rec and c.num_train == 10
    assert sorted(c.train.info.labels.tolist()) == [0] * 5 + [1] * 5
    # without GLUON_TRANSFER_CACHE: ~/.cache/gluon_transfer/subsets
    monkeypatch.delenv('GLUON_TRANSFER_CACHE')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    e = build_data('transfer', data_dir=d, batch_size=2, input_size=8, train_fraction=0.5)
    assert e.train.rec == os.path.join(str(tmp_path / 'home'), '.cache', 'gluon_transfer', 'subsets', tag,
                                       'train_f0.5_s0.rec')
    assert sorted(os.listdir(d)) == listing
    with pytest.raises(ConfigError, match=r'train_fraction must be in \(0, 1\]'):
        build_data('transfer', data_dir=d, train_fraction=1.5)


def _tool():
    return load_tool('prepare_dataset')


def test_cli(tmp_path, capsys, monkeypatch):
    mod = _tool()
    src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
    classes, official = make_dtd(src)
    _official(monkeypatch, 'dtd', classes, official)
    assert mod.main(['dtd', src, out, '--resize', '0', '-j', '1', '-q', '--fraction', '0.5']) == 0
    text = capsys.readouterr().out
    assert 'train: 6 records' in text and 'train_50: 3 records' in text and '3 classes' in text
    assert mod.main(['cub200', src, out, '-q']) == 2
    assert 'error: ' in capsys.readouterr().err
    assert mod.main(['dtd', src, out, '-q', '--with-clutter']) == 2
    assert 'with_clutter does not apply to dtd' in capsys.readouterr().err
    assert sorted(PREPARERS.names()) == sorted(TRANSFER_DATASETS)


def test_carve_validation_rule():
    # class sizes 10, 20, 5, 2, 15; 10 %: floor(0.1 n + 1/2), at least 1 -> 1, 2, 1, 1, 2
    sizes = [10, 20, 5, 2, 15]
    rows = [(c, 'c%d/%d.jpg' % (c, k)) for k in range(20) for c in range(5) if k < sizes[c]]   # classes interleaved
    classes = ['a', 'b', 'c', 'd', 'e']
    train, val = carve_validation(rows, classes, seed=3)
    assert collections.Counter(lab for lab, _ in val) == {0: 1, 1: 2, 2: 1, 3: 1, 4: 2}
    assert sorted(train + val) == sorted(rows) and not set(train) & set(val)
    assert [r for r in rows if r in set(val)] == val and [r for r in rows if r in set(train)] == train  # official order
    assert carve_validation(rows, classes, seed=3) == (train, val)
    assert carve_validation(rows, classes, seed=4)[1] != val
    # 0.3: 3, 6, 2 (1.5 rounds up), 1, 5 (4.5 rounds up)
    _, v30 = carve_validation(rows, classes, fraction=0.3, seed=3)
    assert collections.Counter(lab for lab, _ in v30) == {0: 3, 1: 6, 2: 2, 3: 1, 4: 5}
    # a count per class; class 'd' (2 images) would keep none for training
    with pytest.raises(DataError, match=r"class 'd' has 2 training image\(s\): a validation split of 2 leaves none"):
        carve_validation(rows, classes, per_class=2)
    _, v1 = carve_validation(rows, classes, per_class=1, seed=0)
    assert collections.Counter(lab for lab, _ in v1) == {c: 1 for c in range(5)}
    with pytest.raises(DataError, match="class 'x' has 1 training image"):
        carve_validation([(0, 'x/1.jpg')], ['x'])
    for kw, msg in ((dict(fraction=1.0), r'fraction must be in \(0, 1\)'), (dict(fraction=0.0), 'fraction'),
                    (dict(per_class=0), 'positive integer'), (dict(fraction=0.1, per_class=1), 'not both')):
        with pytest.raises(ConfigError, match=msg):
            carve_validation(rows, classes, **kw)


def test_official_counts_are_checked(tmp_path, monkeypatch, capsys):
    src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
    make_cub(src)
    with pytest.raises(DataError) as e:       # the fake tree against the published CUB-200-2011 numbers
        prepare_dataset('cub200', src, out, resize=0, workers=1)
    msg = str(e.value)
    assert '2 classes, expected 200' in msg and 'train split lists 4 images, expected 5994' in msg
    assert 'test split lists 2 images, expected 5794' in msg and '--no-count-check' in msg and '\n' not in msg
    assert not os.path.exists(out)                                   # refused before anything was written
    man = prepare_dataset('cub200', src, out, resize=0, workers=1, check_counts=False)
    assert not man['official_counts']['checked'] and man['official_counts']['published']['train'] == 5994
    # an edited split file: one line dropped from Food-101's meta/test.txt
    src2 = str(tmp_path / 'food')
    classes, official = make_food(src2)
    _official(monkeypatch, 'food101', classes, official)
    test_txt = os.path.join(src2, 'food-101', 'meta', 'test.txt')
    with open(test_txt) as f:
        lines = f.readlines()
    with open(test_txt, 'w') as f:
        f.writelines(lines[:-1])
    mod = _tool()
    assert mod.main(['food101', src2, str(tmp_path / 'o2'), '-q', '-j', '1', '--resize', '0']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: food101 in ') and 'the official test split lists 2 images, expected 3' in err
    assert mod.main(['food101', src2, str(tmp_path / 'o2'), '-q', '-j', '1', '--resize', '0',
                     '--no-count-check']) == 0
    # Caltech-256: the class count (256, or 257 with the clutter class)
    from gluon_transfer.data.transfer_sets import read_caltech256, check_official_counts
    make_caltech(str(tmp_path / 'cal'))
    monkeypatch.setitem(OFFICIAL_COUNTS, 'caltech256_2', {'classes': 3})
    check_official_counts(read_caltech256(str(tmp_path / 'cal'), 2))
    check_official_counts(read_caltech256(str(tmp_path / 'cal'), 2, with_clutter=True))
    with pytest.raises(DataError, match='caltech256_2 in .*: 4 classes, expected 3'):
        check_official_counts(_renamed(read_caltech256(str(tmp_path / 'cal'), 2, with_clutter=True)))
    # the published table itself: 256 object categories for both Caltech-256 protocols
    assert OFFICIAL_COUNTS['caltech256_30'] == OFFICIAL_COUNTS['caltech256_60'] == {'classes': 256}


def _renamed(spec):
    """The same spec without the reader's clutter adjustment (expected from the table)."""
    from gluon_transfer.data.transfer_sets import SplitSpec
    return SplitSpec(spec.name, spec.root, spec.classes, spec.splits, [], spec.protocol)


def test_corrupt_images_are_listed_and_stop_the_tool(tmp_path, monkeypatch, capsys):
    src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
    classes, official = make_food(src)
    _official(monkeypatch, 'food101', classes, official)
    bad = ['images/churros/1001.jpg', 'images/tacos/1002.jpg']        # one official train, one test image
    for rel in bad:
        with open(os.path.join(src, 'food-101', rel), 'wb') as f:
            f.write(b'\xff\xd8\xff\xe0 truncated')
    with pytest.raises(CorruptImagesError) as e:
        prepare_dataset('food101', src, out, resize=0, workers=1)
    assert sorted(r for r, _, _ in e.value.images) == bad and e.value.images[-1][2] == 'test'
    assert '2 image(s) cannot be read or decoded' in str(e.value) and '--skip-corrupt' in str(e.value)
    assert not os.path.exists(os.path.join(out, 'test.rec'))
    mod = _tool()
    argv = ['food101', src, out, '-q', '-j', '1', '--resize', '0']
    assert mod.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert sorted(ln.split()[1] for ln in err if ln.startswith('corrupt ')) == bad
    assert err[-1].startswith('error: ') and len(err) == 3
    # the interrupted output is this set's own: --skip-corrupt finishes it without --force
    assert mod.main(argv + ['--skip-corrupt']) == 0
    with open(os.path.join(out, 'dataset.json')) as f:
        man = json.load(f)
    skipped = [s[0] for split in man['splits'].values() for s in split['skipped']]
    assert sorted(skipped) == bad and man['splits']['test']['records'] == 2 and man['complete']
    assert mod.main(argv) == 2                  # the outputs lack them: a strict run still refuses


def test_out_dir_of_another_set_is_not_overwritten(tmp_path, monkeypatch):
    from data_helpers import write_rec
    for name, maker in (('cub200', make_cub), ('food101', make_food)):
        _official(monkeypatch, name, *maker(str(tmp_path / name)))
    out = str(tmp_path / 'out')
    prepare_dataset('cub200', str(tmp_path / 'cub200'), out, resize=0, workers=1)
    before = {n: _sha1(os.path.join(out, n)) for n in os.listdir(out) if os.path.isfile(os.path.join(out, n))}
    with pytest.raises(DataError, match=r'dataset\.json describes cub200 prepared from .*; refusing to overwrite'):
        prepare_dataset('food101', str(tmp_path / 'food101'), out, resize=0, workers=1)
    assert {n: _sha1(os.path.join(out, n)) for n in before} == before
    again = prepare_dataset('cub200', str(tmp_path / 'cub200'), out, resize=0, workers=1)     # its own: fine
    assert again['splits']['train']['records'] == 2
    man = prepare_dataset('food101', str(tmp_path / 'food101'), out, resize=0, workers=1, force=True)
    assert man['name'] == 'food101'
    assert read_classes(os.path.join(out, 'classes.txt')) == ['churros', 'apple_pie', 'tacos']
    # a folder with a .rec or a classes.txt that no preparation wrote
    other = tmp_path / 'other'
    other.mkdir()
    write_rec(str(other / 'val'), 3)
    with pytest.raises(DataError, match=r'other/val\.rec exists and was not written by this packer'):
        prepare_dataset('cub200', str(tmp_path / 'cub200'), str(other), resize=0, workers=1)
    assert sorted(os.listdir(other)) == ['val.idx', 'val.rec']          # nothing written
    (other / 'val.rec').unlink()
    (other / 'val.idx').unlink()
    _write(str(other / 'classes.txt'), ['cat', 'dog'])
    with pytest.raises(DataError, match=r'classes\.txt exists with other class names'):
        prepare_dataset('cub200', str(tmp_path / 'cub200'), str(other), resize=0, workers=1)
    assert sorted(os.listdir(other)) == ['classes.txt']


def test_test_split_is_kept_for_the_final_evaluation(tmp_path, monkeypatch, capsys):
    import mxnet as mx
    from gluon_transfer import get_model
    from tools.evaluate import main as evaluate
    src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
    classes, official = make_food(src)
    _official(monkeypatch, 'food101', classes, official)
    assert _tool().main(['food101', src, out, '-q', '-j', '1', '--resize', '0']) == 0
    assert '--rec-val %s' % os.path.join(out, 'test.rec') in capsys.readouterr().out
    net = get_model('resnet18_v1b', classes=3)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 8, 8)))
    net.save_parameters(str(tmp_path / 'm.params'))
    assert evaluate(['--model', 'resnet18_v1b', '--params', str(tmp_path / 'm.params'), '--dataset', 'food101',
                     '--data-dir', out, '--rec-val', os.path.join(out, 'test.rec'), '--input-size', '8',
                     '--batch-size', '2', '-j', '1', '--json', str(tmp_path / 'r.json')]) == 0
    with open(tmp_path / 'r.json') as f:
        res = json.load(f)
    assert res['n'] == official['test'] == 3


def test_mat_readers_need_scipy_which_the_requirements_install(tmp_path, monkeypatch):
    root = os.path.join(os.path.dirname(__file__), '..')
    pins = {}
    for req in ('requirements.txt', 'requirements-gpu.txt'):
        with open(os.path.join(root, req)) as f:
            pins[req] = [ln.split('==')[1].strip() for ln in f if ln.startswith('scipy==')]
    assert pins['requirements.txt'] == pins['requirements-gpu.txt'] == [scipy.__version__]
    # without scipy: one line naming the file and what to install, not an ImportError
    src = str(tmp_path / 'cars')
    make_cars(src)
    import sys
    monkeypatch.setitem(sys.modules, 'scipy', None)
    monkeypatch.setitem(sys.modules, 'scipy.io', None)
    with pytest.raises(DataError, match=r'cars_meta\.mat: reading MATLAB files needs scipy \(pip install -r '
                                        r'requirements\.txt'):
        read_split('stanford_cars', src)
