"""Small generated image sets for the data-layer tests (written with mx.recordio directly,
independently of gluon_transfer.data.pack)."""
import os

import cv2
import numpy as np
import mxnet as mx


def solid_image(value, size=8):
    """An HxWx3 BGR uint8 image whose R channel is ``value`` (G = 1, B = 200)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 2] = value
    img[..., 1] = 1
    img[..., 0] = 200
    return img


def write_rec(prefix, n, label_of=lambda i: i % 4, size=8, fmt='.png', payload_of=None):
    """``prefix.rec/.idx`` with ``n`` records; record i has key i, id i, label ``label_of(i)``
    and an image whose red channel is ``i`` (lossless PNG), so a batch row names its record."""
    rec = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')
    for i in range(n):
        if payload_of is not None and payload_of(i) is not None:
            buf = payload_of(i)
        else:
            ok, enc = cv2.imencode(fmt, solid_image(i, size))
            buf = enc.tobytes()
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(label_of(i)), i, 0), buf))
    rec.close()
    return prefix + '.rec', prefix + '.idx'


def make_tree(root, classes=('cat', 'dog', 'ant'), per_class=3, size=(12, 10), rng=None):
    """ROOT/<class>/<k>.{png,jpg}; returns {relpath: bytes} of every file written."""
    rng = rng or np.random.RandomState(0)
    files = {}
    for ci, c in enumerate(classes):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for k in range(per_class):
            img = rng.randint(0, 256, size=(size[0], size[1], 3)).astype(np.uint8)
            ext = '.png' if k % 2 == 0 else '.jpg'
            ok, enc = cv2.imencode(ext, img)
            rel = '%s/%d%s' % (c, k, ext)
            with open(os.path.join(root, rel), 'wb') as f:
                f.write(enc.tobytes())
            files[rel] = enc.tobytes()
    return files


def read_all(prefix):
    """{key: (header, image bytes)} read back with mx.recordio."""
    r = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'r')
    out = {}
    for k in r.keys:
        h, b = mx.recordio.unpack(r.read_idx(k))
        out[k] = (h, b)
    r.close()
    return out
