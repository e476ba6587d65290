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


def _bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def test_pack_refuses_to_overwrite_unrelated_outputs(tmp_path, capsys):
    from data_helpers import write_rec
    from tools.pack import main
    make_tree(str(tmp_path / 'imgs'), per_class=1)
    out = tmp_path / 'out'
    out.mkdir()
    # a .rec that pack did not write (no manifest): refused, untouched, the file named
    write_rec(str(out / 'train'), 5)
    before = _bytes(out / 'train.rec')
    with pytest.raises(DataError, match=r'train\.rec exists and was not written by this packer'):
        pack(str(tmp_path / 'imgs'), str(out / 'train'), workers=1)
    assert _bytes(out / 'train.rec') == before
    assert main([str(tmp_path / 'imgs'), str(out / 'train'), '-j', '1', '-q']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'train.rec' in err and '--force' in err
    assert _bytes(out / 'train.rec') == before and not os.path.exists(out / 'classes.txt')
    # --force overwrites it
    assert main([str(tmp_path / 'imgs'), str(out / 'train'), '-j', '1', '-q', '--force']) == 0
    assert inspect_recordio(str(out / 'train.rec')).num_records == 3
    # another source packed into the same prefix: refused, naming where the outputs came from
    make_tree(str(tmp_path / 'other'), classes=('ant', 'cat', 'dog'), per_class=2)
    mine = _bytes(out / 'train.rec')
    with pytest.raises(DataError, match=r'train\.rec exists and was packed from .*imgs'):
        pack(str(tmp_path / 'other'), str(out / 'train'), workers=1)
    assert _bytes(out / 'train.rec') == mine


def test_pack_refuses_to_overwrite_another_classes_txt(tmp_path):
    make_tree(str(tmp_path / 'imgs'), per_class=1)
    out = tmp_path / 'out'
    out.mkdir()
    with open(out / 'classes.txt', 'w') as f:
        f.write('zebra\nyak\n')
    with pytest.raises(DataError, match=r'classes\.txt exists with other class names \(2 classes'):
        pack(str(tmp_path / 'imgs'), str(out / 'val'), workers=1)
    assert _bytes(out / 'classes.txt') == b'zebra\nyak\n' and not os.path.exists(out / 'val.rec')
    # the same names (e.g. a val folder packed beside its train folder) are fine
    with open(out / 'classes.txt', 'w') as f:
        f.write('ant\ncat\ndog\n')
    assert pack(str(tmp_path / 'imgs'), str(out / 'val'), workers=1).written == 3
    # a re-pack of the same source after a class was added rewrites its own classes.txt
    make_tree(str(tmp_path / 'imgs'), classes=('bee',), per_class=1)
    assert pack(str(tmp_path / 'imgs'), str(out / 'val'), workers=1).classes == ['ant', 'bee', 'cat', 'dog']
    assert _bytes(out / 'classes.txt') == b'ant\nbee\ncat\ndog\n'


def test_pack_resumes_its_own_output_interrupted_while_renaming(tmp_path, monkeypatch):
    make_tree(str(tmp_path / 'imgs'), per_class=2)
    real = os.replace

    def killed(src, dst):
        if dst.endswith('.idx'):
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(os, 'replace', killed)
    with pytest.raises(KeyboardInterrupt):
        pack(str(tmp_path / 'imgs'), str(tmp_path / 'o' / 'train'), workers=1)
    monkeypatch.setattr(os, 'replace', real)
    assert os.path.exists(tmp_path / 'o' / 'train.rec') and not os.path.exists(tmp_path / 'o' / 'train.idx')
    again = pack(str(tmp_path / 'imgs'), str(tmp_path / 'o' / 'train'), workers=1)   # no --force needed
    assert not again.reused and again.written == 6
    assert inspect_recordio(str(tmp_path / 'o' / 'train.rec')).num_records == 6
    assert pack(str(tmp_path / 'imgs'), str(tmp_path / 'o' / 'train'), workers=1).reused


def test_pack_strict_mode_lists_corrupt_images_and_writes_nothing(tmp_path):
    from gluon_transfer.data import CorruptImagesError
    make_tree(str(tmp_path / 'imgs'), per_class=2)
    first = pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), workers=1)
    before = _bytes(tmp_path / 'o.rec')
    for name in ('cat/bad.jpg', 'dog/empty.png'):
        with open(tmp_path / 'imgs' / name, 'wb') as f:
            f.write(b'' if name.endswith('png') else b'\xff\xd8 broken')
    with pytest.raises(CorruptImagesError) as e:
        pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), workers=2, skip_corrupt=False)
    assert sorted(r for r, _ in e.value.images) == ['cat/bad.jpg', 'dog/empty.png']
    assert '2 of 8 images cannot be read or decoded' in str(e.value) and '\n' not in str(e.value)
    assert _bytes(tmp_path / 'o.rec') == before and first.written == 6          # the earlier output is kept
    assert not [n for n in os.listdir(tmp_path) if '.part' in n]
    loose = pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), workers=1)
    assert loose.written == 6 and len(loose.skipped) == 2
    with pytest.raises(CorruptImagesError, match='the existing .*o.rec was packed without them'):
        pack(str(tmp_path / 'imgs'), str(tmp_path / 'o'), workers=1, skip_corrupt=False)


def test_pack_keeps_an_input_list_named_like_its_output(tmp_path):
    # im2rec's convention: PREFIX.lst is the input and PREFIX.rec/.idx go beside it
    files = make_tree(str(tmp_path / 'imgs'), per_class=1)
    lst = tmp_path / 'imgs' / 'train.lst'
    with open(lst, 'w') as f:
        for i, rel in enumerate(sorted(files)):
            f.write('%d\t%d\t%s\n' % (5 + i, i, rel))
    before = _bytes(lst)
    rep = pack(str(lst), str(tmp_path / 'imgs' / 'train'), workers=1)      # no force needed
    assert rep.written == 3 and _bytes(lst) == before
    assert sorted(read_all(str(tmp_path / 'imgs' / 'train'))) == [5, 6, 7]
    assert pack(str(lst), str(tmp_path / 'imgs' / 'train'), workers=1).reused
