"""A few images for the picture tools (``tools/visualize_*.py``): read from a RecordIO file
or image files, or generated, as RGB ``uint8`` arrays of shape (size, size, 3).

Every reader fails with a one-line :class:`~gluon_transfer.errors.DataError` naming the file
(missing, empty, undecodable record) rather than a cv2 or MXNet traceback.
"""
import os

__all__ = ['read_record_images', 'read_image_files', 'generated_images', 'to_batch']


def _resize(img, size):
    import cv2
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def read_record_images(rec, count, size):
    """The first ``count`` images of the RecordIO file ``rec``, resized to ``size`` (area
    interpolation), RGB. Fewer when the file holds fewer; an error when it holds none."""
    import cv2
    import mxnet as mx
    from ..errors import DataError
    if not os.path.isfile(rec):
        raise DataError('RecordIO file not found: %s' % rec)
    reader = mx.recordio.MXRecordIO(rec, 'r')
    images = []
    try:
        while len(images) < count:
            item = reader.read()
            if item is None:
                break
            _, img = mx.recordio.unpack_img(item, cv2.IMREAD_COLOR)
            if img is None:
                raise DataError('%s: record %d is not a decodable image' % (rec, len(images)))
            images.append(_resize(img, size)[:, :, ::-1])
    finally:
        reader.close()
    if not images:
        raise DataError('%s holds no records' % rec)
    return images


def read_image_files(paths, size):
    """The image files ``paths`` (any format cv2 reads), resized to ``size``, RGB."""
    import cv2
    from ..errors import DataError
    images = []
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError('cannot read image %s' % path)
        images.append(_resize(img, size)[:, :, ::-1])
    return images


def generated_images(count, size, seed, smooth=True):
    """``count`` random images. ``smooth``: blurred noise plus a bright disc, so that
    attention maps have some structure; otherwise uniform noise."""
    import cv2
    import numpy as np
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        img = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
        if smooth:
            img = cv2.GaussianBlur(img, (0, 0), size / 16.0)
            cy, cx = rng.randint(size // 4, 3 * size // 4, 2)
            cv2.circle(img, (int(cx), int(cy)), size // 6, (255, 240, 200), -1)
        out.append(img)
    return out


def to_batch(images, mean, std, scale=1.0 / 255):
    """Stack RGB uint8 images into a normalised float32 NCHW numpy batch:
    ``(img * scale - mean) / std`` per channel."""
    import numpy as np
    x = np.stack(images).astype(np.float32) * np.float32(scale)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
