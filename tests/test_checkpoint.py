"""engine/checkpoint.py: file permissions, run folders (atomic creation, the ``latest``
link), best-file repair and metrics trimming. No training here (see test_engine.py)."""
import json
import os
import stat
import threading

import pytest

from gluon_transfer.engine import checkpoint as ck


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize('mask, mode', [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_get_normal_permissions(tmp_path, umask, mask, mode):
    """Like open(path, 'w'): 0666 minus the umask (mkstemp alone gives 0600)."""
    umask(mask)
    path = tmp_path / 'a.params'

    def write(p):
        with open(p, 'wb') as f:
            f.write(b'x')
    ck.atomic_write(str(path), write)
    ck.atomic_write_json(str(tmp_path / 'b.json'), {'k': 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / 'b.json').st_mode) == mode
    assert sorted(os.listdir(tmp_path)) == ['a.params', 'b.json']


def test_make_run_dir_never_shares_a_folder(tmp_path):
    """16 threads asking for the same name at once get 16 different, new folders."""
    got, barrier = [], threading.Barrier(16)

    def one():
        barrier.wait()
        got.append(ck.make_run_dir(str(tmp_path / 'runs'), 'm-20240101-120000'))
    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(os.path.basename(g) for g in got)
    assert len(set(got)) == 16
    assert names == sorted(['m-20240101-120000'] + ['m-20240101-120000-%d' % n for n in range(2, 17)])


def test_point_latest_replaces_the_link(tmp_path):
    a = ck.make_run_dir(str(tmp_path), 'a')
    b = ck.make_run_dir(str(tmp_path), 'b')
    link = ck.point_latest(str(tmp_path), a)
    assert os.readlink(link) == 'a'
    ck.point_latest(str(tmp_path), b)
    assert os.readlink(link) == 'b' and os.path.realpath(link) == os.path.realpath(b)
    assert sorted(os.listdir(tmp_path)) == ['a', 'b', 'latest']          # no temporary link left
    (tmp_path / 'other').mkdir()
    assert ck.point_latest(str(tmp_path), a, name='other') is None      # a real folder is left alone
    assert (tmp_path / 'other').is_dir() and not (tmp_path / 'other').is_symlink()


def test_holds_run(tmp_path):
    assert not ck.holds_run(str(tmp_path / 'missing'))
    assert not ck.holds_run(str(tmp_path))
    (tmp_path / 'train.log').write_text('x')
    assert not ck.holds_run(str(tmp_path))          # a log of a failed start is not a run
    for name in ('checkpoint.json', 'metrics.jsonl', 'x-0001.params'):
        d = tmp_path / name.replace('.', '_')
        d.mkdir()
        (d / name).write_text('x')
        assert ck.holds_run(str(d)), name


def _checkpoint(d, epoch, best_epoch, best_top1=0.5):
    """A checkpoint record (and its params file) of ``epoch`` in folder ``d``."""
    (d / ('toy-%04d.params' % epoch)).write_bytes(b'params of epoch %d' % epoch)
    return {'epoch': epoch, 'best_epoch': best_epoch, 'best_top1': best_top1,
            'files': {'params': 'toy-%04d.params' % epoch}}


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, fmt, *a):
        self.lines.append(fmt % a)

    info = warning


def test_repair_best_from_the_checkpoint_of_the_best_epoch(tmp_path):
    meta = _checkpoint(tmp_path, 3, best_epoch=3, best_top1=0.625)
    log = Log()
    assert ck.repair_best(str(tmp_path), meta, 'toy', log=log) == 'repaired'
    assert (tmp_path / 'best.params').read_bytes() == b'params of epoch 3'
    rec = json.loads((tmp_path / 'best.json').read_text())
    assert rec['epoch'] == 3 and rec['val_top1'] == 0.625 and 'rebuilt from' in log.lines[0]
    assert ck.repair_best(str(tmp_path), meta, 'toy') == 'ok'           # present now: nothing to do


def test_repair_best_from_a_gluoncv_named_file(tmp_path):
    meta = _checkpoint(tmp_path, 3, best_epoch=2, best_top1=0.625)
    (tmp_path / '0.6250-toy-2-best.params').write_bytes(b'best of epoch 2')
    (tmp_path / '0.5000-toy-1-best.params').write_bytes(b'older')
    assert ck.repair_best(str(tmp_path), meta, 'toy') == 'repaired'
    assert (tmp_path / 'best.params').read_bytes() == b'best of epoch 2'
    assert json.loads((tmp_path / 'best.json').read_text())['epoch'] == 2


def test_repair_best_copies_into_a_new_folder(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    src.mkdir()
    dst.mkdir()
    meta = _checkpoint(src, 3, best_epoch=2, best_top1=0.625)
    (src / 'best.params').write_bytes(b'best of epoch 2')
    ck.write_best_json(str(src), 2, 0.625, 'toy')
    assert ck.repair_best(str(src), meta, 'toy', dst_dir=str(dst)) == 'repaired'
    assert (dst / 'best.params').read_bytes() == b'best of epoch 2'
    assert json.loads((dst / 'best.json').read_text())['epoch'] == 2
    # resuming epoch 2 of a run whose best is now epoch 3: not that later best, the checkpoint itself
    later = tmp_path / 'later'
    later.mkdir()
    meta2 = _checkpoint(src, 2, best_epoch=2, best_top1=0.6)
    ck.write_best_json(str(src), 3, 0.7, 'toy')
    assert ck.repair_best(str(src), meta2, 'toy', dst_dir=str(later)) == 'repaired'
    assert (later / 'best.params').read_bytes() == b'params of epoch 2'
    assert json.loads((later / 'best.json').read_text())['epoch'] == 2


def test_repair_best_says_when_it_is_lost(tmp_path):
    meta = _checkpoint(tmp_path, 3, best_epoch=2, best_top1=0.625)
    log = Log()
    assert ck.repair_best(str(tmp_path), meta, 'toy', log=log) == 'lost'
    assert 'WARNING' in log.lines[0] and 'epoch 2' in log.lines[0] and not (tmp_path / 'best.params').exists()
    assert ck.repair_best(str(tmp_path), dict(meta, best_top1=-1.0), 'toy') == 'ok'   # no best yet: nothing lost


def test_trim_metrics(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    lines = [json.dumps({'epoch': e, 'val_top1': e / 10.0 + k}) for k, e in enumerate((1, 2, 3, 2))]
    path.write_text('\n'.join(lines) + '\n{"epoch": 4, "val_to')
    assert ck.trim_metrics(str(path), 2) == 3      # epoch 3, the torn line, the older line of epoch 2
    assert path.read_text().splitlines() == [lines[0], lines[3]]
    assert ck.trim_metrics(str(path), 2) == 0
    new = tmp_path / 'new' / 'metrics.jsonl'
    assert ck.trim_metrics(str(new), 1, source=str(path)) == 1      # the line of epoch 2 stays behind
    assert new.read_text().splitlines() == [lines[0]]
