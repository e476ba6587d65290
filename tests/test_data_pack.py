import os
import time

import cv2
import numpy as np
import pytest

from gluon_transfer.data import pack, read_lst, inspect_recordio
from gluon_transfer.errors import DataError
from data_helpers import make_tree, read_all


def _lst_rows(path):
    with open(path) as f:
        return [ln.rstrip('\n').split('\t') for ln in f]


def test_pack_folder_round_trip_keeps_bytes(tmp_path):
    files = make_tree(str(tmp_path / 'imgs'))
    report = pack(str(tmp_path / 'imgs'), str(tmp_path / 'out' / 'train'), workers=1)
    assert report.written == 9 and report.skipped == []
    assert report.classes == ['ant', 'cat', 'dog']  # sorted folder names
    with open(tmp_path / 'out' / 'classes.txt') as f:
        assert f.read().split() == ['ant', 'cat', 'dog']
    recs = read_all(str(tmp_path / 'out' / 'train'))
    rows = _lst_rows(tmp_path / 'out' / 'train.lst')
    assert [int(r[0]) for r in rows] == list(range(9))
    assert sorted(r[2] for r in rows) == sorted(files)
    for key, label, rel in rows:
        h, body = recs[int(key)]
        want = ['ant', 'cat', 'dog'].index(rel.split('/')[0])
        assert h.label == want == float(label) and h.id == int(key) and h.flag == 0
        assert body == files[rel]  # original encoded bytes, no re-encode
    # no temporary files left, manifest written
    names = sorted(os.listdir(tmp_path / 'out'))
    assert names == ['classes.txt', 'train.idx', 'train.lst', 'train.pack.json', 'train.rec']
    assert inspect_recordio(str(tmp_path / 'out' / 'train.rec')).num_records == 9


def test_pack_resize_and_corrupt_image_skipped(tmp_path):
    make_tree(str(tmp_path / 'imgs'), size=(12, 20))
    with open(tmp_path / 'imgs' / 'cat' / 'broken.jpg', 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
    report = pack(str(tmp_path / 'imgs'), str(tmp_path / 'r'), resize=6, quality=90, workers=2)
    assert report.written == 9
    assert [s[0] for s in report.skipped] == ['cat/broken.jpg']
    assert 'decode' in report.skipped[0][1]
    rows = _lst_rows(tmp_path / 'r.lst')
    assert 'cat/broken.jpg' not in [r[2] for r in rows]
    for key, (h, body) in read_all(str(tmp_path / 'r')).items():
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert body[:2] == b'\xff\xd8'  # re-encoded as JPEG
        assert img.shape == (6, 10, 3)  # shorter side 12 -> 6, 20 -> 10


def test_pack_lst_input_keeps_keys_and_multi_labels(tmp_path):
    files = make_tree(str(tmp_path / 'imgs'), per_class=1)
    rels = sorted(files)
    with open(tmp_path / 'imgs' / 'my.lst', 'w') as f:
        for i, rel in enumerate(rels):
            f.write('%d\t%d\t%d\t%s\n' % (10 + i, i, 7, rel))
    report = pack(str(tmp_path / 'imgs' / 'my.lst'), str(tmp_path / 'l'), workers=1)
    assert report.written == 3 and report.classes is None
    recs = read_all(str(tmp_path / 'l'))
    assert sorted(recs) == [10, 11, 12]
    for i, rel in enumerate(rels):
        h, body = recs[10 + i]
        assert h.flag == 2 and list(h.label) == [i, 7] and body == files[rel]
    assert [r[0] for r in read_lst(str(tmp_path / 'l.lst'))] == [10, 11, 12]


def test_pack_reuses_complete_outputs_and_repacks_when_newer(tmp_path):
    make_tree(str(tmp_path / 'imgs'), per_class=1)
    first = pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), workers=1)
    assert not first.reused
    again = pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), workers=1)
    assert again.reused and again.written == 3
    # different options -> re-pack
    assert not pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), resize=4, workers=1).reused
    # an input newer than the outputs -> re-pack
    later = time.time() + 10
    os.utime(tmp_path / 'imgs' / 'cat' / '0.png', (later, later))
    assert not pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), resize=4, workers=1).reused


def test_pack_errors(tmp_path):
    with pytest.raises(DataError, match='not found'):
        pack(str(tmp_path / 'nope'), str(tmp_path / 'o'))
    os.makedirs(tmp_path / 'empty' / 'cls')
    with pytest.raises(DataError, match='no images'):
        pack(str(tmp_path / 'empty'), str(tmp_path / 'o'))
    with open(tmp_path / 'empty' / 'cls' / 'x.png', 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(DataError, match='none of the 1 images'):
        pack(str(tmp_path / 'empty'), str(tmp_path / 'o'), workers=1)
    assert not any(n.startswith('o.') for n in os.listdir(tmp_path))  # temp files removed


def test_pack_cli(tmp_path, capsys):
    from tools.pack import main
    make_tree(str(tmp_path / 'imgs'), per_class=2)
    assert main([str(tmp_path / 'imgs'), str(tmp_path / 'c' / 'val'), '--resize', '5', '-j', '1']) == 0
    out = capsys.readouterr()
    assert '6 records written, 0 skipped' in out.out and '6/6 (100%)' in out.err
    assert main([str(tmp_path / 'missing'), str(tmp_path / 'c' / 'x')]) == 2
    assert capsys.readouterr().err.startswith('error: ')
