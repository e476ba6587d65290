"""RandAugment and random erasing, with timm's semantics, on numpy arrays (OpenCV, no PIL).

What the non-binary transfer reference (Plested et al.'s released code) trains with:
``--aa rand-m9-mstd0.5[-inc1] --reprob 0.5 --remode pixel``. Both are data-layer options
of :func:`gluon_transfer.data.build_data` (``randaugment=``, ``random_erasing=``).

RandAugment (Cubuk et al. 2020, as timm's ``rand_augment_transform`` codes it)
------------------------------------------------------------------------------
Spec ``rand-<key><value>-...``: ``m`` magnitude (default 10), ``n`` ops per image
(default 2), ``mstd`` magnitude noise std (default 0), ``mmax`` magnitude clip (default
10), ``inc`` (1: the "increasing" op variants), ``p`` per-op probability (default 0.5).
``rand-m9-mstd0.5`` = 2 ops, magnitude 9 of 10, noise std 0.5.

Per image: draw ``n`` ops uniformly **with replacement** from the list; each op is applied
with probability ``p``; when applied, its magnitude is ``M = clip(N(m, mstd), 0, mmax)``
(``mstd = 0``: ``M = m``) and its argument is derived from ``M`` (``_L = M / 10``):

============== ========================================= ===================================
op             argument                                  effect on uint8 RGB image ``x``
============== ========================================= ===================================
AutoContrast   -                                         per channel ``floor((x-lo)*255/(hi-lo))``
                                                         (lo/hi: channel min/max; unchanged
                                                         when hi == lo)
Equalize       -                                         per channel, Pillow's algorithm
                                                         (:func:`equalize`)
Invert         -                                         ``255 - x``
Rotate         ``±30 _L`` degrees (random sign)          rotate counter-clockwise about the
                                                         image centre, bilinear, fill = mean
Posterize      ``b = int(4 _L)`` bits                    ``x & ~(2^(8-b) - 1)`` (b >= 8: x)
Solarize       ``t = int(256 _L)``                       ``x >= t ? 255 - x : x``
SolarizeAdd    ``a = int(110 _L)``                       ``x < 128 ? min(255, x + a) : x``
Color          ``f = 1.8 _L + 0.1``                      ``blend(gray(x), x, f)``
Contrast       ``f = 1.8 _L + 0.1``                      ``blend(round(mean gray(x)), x, f)``
Brightness     ``f = 1.8 _L + 0.1``                      ``blend(0, x, f)``
Sharpness      ``f = 1.8 _L + 0.1``                      ``blend(smooth(x), x, f)``
ShearX/Y       ``s = ±0.3 _L``                           out(x, y) = in(x + s y, y) / in(x, y + s x)
TranslateX/Y   ``±0.45 _L`` of the width/height          out(x, y) = in(x + d, y) / in(x, y + d):
                                                         positive d moves content left/up
============== ========================================= ===================================

With ``inc1`` Posterize/Solarize/Color/Contrast/Brightness/Sharpness are replaced by the
increasing variants: ``b = 4 - int(4 _L)``, ``t = 256 - int(256 _L)``,
``f = max(0.1, 1 ± 0.9 _L)``. ``blend(d, x, f) = floor(clip(d + f (x - d), 0, 255))``
(Pillow's ``Image.blend`` truncates); ``gray`` is Pillow's ``convert('L')``:
``(19595 R + 38470 G + 7471 B + 32768) >> 16``; ``smooth`` is the 3 x 3 kernel
``[[1,1,1],[1,5,1],[1,1,1]] / 13`` rounded, border pixels kept (Pillow's SMOOTH filter).
Geometric ops use OpenCV with pixel centres at integer coordinates (Pillow's affine
transform samples half a pixel apart, so shears differ from timm by a shift of ``s/2``);
they interpolate bilinearly (timm picks bilinear or bicubic at random) and fill with the
dataset mean rounded to integers (timm's ``img_mean``). Pixel-exact agreement with
timm/Pillow is not a goal; the op set, argument ranges and sampling are the same.

Random erasing (Zhong et al. 2020; timm ``RandomErasing``, mode 'pixel')
----------------------------------------------------------------------
Per sample, with probability ``p``: up to 10 attempts of area
``A ~ U(0.02, 1/3) * H * W``, aspect ``r = exp(U(log 0.3, log 1/0.3))``,
``h = round(sqrt(A r))``, ``w = round(sqrt(A / r))``; the first with ``h < H`` and
``w < W`` is placed at ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}`` and every value inside
(all channels) is replaced by ``N(0, 1)`` noise. It acts on the **normalised** tensor,
so the noise is unit-variance in normalised units, as in timm.
"""
import math

import numpy as np

from ..errors import ConfigError
from .base import Batch

__all__ = ['RAND_OPS', 'RAND_OPS_INCREASING', 'parse_randaugment', 'RandAugment', 'auto_contrast',
           'equalize', 'invert', 'posterize', 'solarize', 'solarize_add', 'color', 'contrast',
           'brightness', 'sharpness', 'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y',
           'random_erase', 'RandomErasing', 'ErasingIter']

LEVEL_DENOM = 10.0
RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
            'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX',
            'TranslateY')
RAND_OPS_INCREASING = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                       'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
                       'TranslateX', 'TranslateY')


# ---------------------------------------------------------------- pixel ops (uint8 HWC RGB)

def _lut(img, luts):
    """Apply one 256-entry table per channel."""
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        out[..., c] = luts[c][img[..., c]]
    return out


def auto_contrast(img):
    """Per channel ``floor((x - lo) * 255 / (hi - lo))``; a flat channel is unchanged."""
    luts = []
    i = np.arange(256, dtype=np.int64)
    for c in range(img.shape[2]):
        lo, hi = int(img[..., c].min()), int(img[..., c].max())
        if hi > lo:
            luts.append(np.clip((i - lo) * 255 // (hi - lo), 0, 255).astype(np.uint8))
        else:
            luts.append(i.astype(np.uint8))
    return _lut(img, luts)


def equalize(img):
    """Pillow's ``ImageOps.equalize`` per channel: with histogram ``h`` and
    ``step = (sum(h) - h[last non-empty bin]) // 255`` (identity when 0 or when one bin is
    used), ``lut[i] = (step // 2 + sum(h[:i])) // step`` clipped to 255."""
    luts = []
    for c in range(img.shape[2]):
        h = np.bincount(img[..., c].ravel(), minlength=256).astype(np.int64)
        nz = h[h > 0]
        step = (int(nz.sum()) - int(nz[-1])) // 255 if len(nz) > 1 else 0
        if step == 0:
            luts.append(np.arange(256, dtype=np.uint8))
            continue
        before = np.concatenate([[0], np.cumsum(h)[:-1]])
        luts.append(np.minimum((step // 2 + before) // step, 255).astype(np.uint8))
    return _lut(img, luts)


def invert(img):
    return 255 - img


def posterize(img, bits):
    """Keep the ``bits`` most significant bits (``bits >= 8``: unchanged; 0: black)."""
    bits = int(bits)
    if bits >= 8:
        return img.copy()
    mask = np.uint8((0xff << (8 - max(bits, 0))) & 0xff)
    return img & mask


_LEVELS = np.arange(256, dtype=np.int32)


def solarize(img, threshold):
    """``255 - x`` where ``x >= threshold`` (256: unchanged)."""
    lut = np.where(_LEVELS >= threshold, 255 - _LEVELS, _LEVELS).astype(np.uint8)
    return lut[img]


def solarize_add(img, add, threshold=128):
    """``min(255, x + add)`` where ``x < threshold``."""
    lut = np.where(_LEVELS < threshold, np.minimum(_LEVELS + int(add), 255), _LEVELS).astype(np.uint8)
    return lut[img]


def _blend(degenerate, img, factor):
    """``floor(clip(d + f (x - d), 0, 255))`` in float32; ``degenerate`` broadcasts."""
    out = img.astype(np.float32)
    out -= degenerate
    out *= np.float32(factor)
    out += degenerate
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)  # truncation = floor for values >= 0


def gray(img):
    """Pillow's RGB -> L: ``(19595 R + 38470 G + 7471 B + 32768) >> 16`` (uint8, HxW)."""
    r, g, b = (img[..., i].astype(np.int32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)


def color(img, factor):
    return _blend(gray(img).astype(np.float32)[..., None], img, factor)


def contrast(img, factor):
    mean = math.floor(float(gray(img).mean()) + 0.5)
    return _blend(np.float32(mean), img, factor)


def brightness(img, factor):
    return _blend(np.float32(0), img, factor)


def sharpness(img, factor):
    import cv2
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = img.astype(np.float32)
    if img.shape[0] > 2 and img.shape[1] > 2:
        filt = cv2.filter2D(smooth, -1, kernel, borderType=cv2.BORDER_REFLECT)
        smooth[1:-1, 1:-1] = np.floor(filt[1:-1, 1:-1] + 0.5)
    return _blend(smooth, img, factor)


def _warp(img, matrix, fill):
    """``out(x, y) = in(M @ (x, y, 1))`` (inverse map), bilinear, constant fill."""
    import cv2
    h, w = img.shape[:2]
    return cv2.warpAffine(img, np.asarray(matrix, np.float64), (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill))


def rotate(img, degrees, fill=(0, 0, 0)):
    """Counter-clockwise by ``degrees`` about ``((W-1)/2, (H-1)/2)``."""
    import cv2
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(degrees), 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=tuple(float(v) for v in fill))


def shear_x(img, s, fill=(0, 0, 0)):
    return _warp(img, [[1, s, 0], [0, 1, 0]], fill)


def shear_y(img, s, fill=(0, 0, 0)):
    return _warp(img, [[1, 0, 0], [s, 1, 0]], fill)


def translate_x(img, pixels, fill=(0, 0, 0)):
    """``out[:, x] = in[:, x + pixels]``: positive moves the content left."""
    return _warp(img, [[1, 0, pixels], [0, 1, 0]], fill)


def translate_y(img, pixels, fill=(0, 0, 0)):
    return _warp(img, [[1, 0, 0], [0, 1, pixels]], fill)


# ---------------------------------------------------------------- RandAugment

def _signed(v, rng):
    return -v if rng.random_sample() < 0.5 else v


def _apply(name, img, mag, rng, fill):
    """One op with magnitude ``mag`` (0..mmax); signs are drawn from ``rng``."""
    lv = mag / LEVEL_DENOM
    h, w = img.shape[:2]
    if name == 'AutoContrast':
        return auto_contrast(img)
    if name == 'Equalize':
        return equalize(img)
    if name == 'Invert':
        return invert(img)
    if name == 'Rotate':
        return rotate(img, _signed(30.0 * lv, rng), fill)
    if name == 'Posterize':
        return posterize(img, int(4 * lv))
    if name == 'PosterizeIncreasing':
        return posterize(img, 4 - int(4 * lv))
    if name == 'Solarize':
        return solarize(img, int(256 * lv))
    if name == 'SolarizeIncreasing':
        return solarize(img, 256 - int(256 * lv))
    if name == 'SolarizeAdd':
        return solarize_add(img, int(110 * lv))
    enhance = {'Color': color, 'Contrast': contrast, 'Brightness': brightness, 'Sharpness': sharpness}
    if name in enhance:
        return enhance[name](img, 1.8 * lv + 0.1)
    if name.endswith('Increasing') and name[:-len('Increasing')] in enhance:
        return enhance[name[:-len('Increasing')]](img, max(0.1, 1.0 + _signed(0.9 * lv, rng)))
    if name == 'ShearX':
        return shear_x(img, _signed(0.3 * lv, rng), fill)
    if name == 'ShearY':
        return shear_y(img, _signed(0.3 * lv, rng), fill)
    if name == 'TranslateX':
        return translate_x(img, _signed(0.45 * lv, rng) * w, fill)
    if name == 'TranslateY':
        return translate_y(img, _signed(0.45 * lv, rng) * h, fill)
    raise ConfigError('unknown RandAugment op %r' % name)


def parse_randaugment(spec):
    """``'rand-m9-mstd0.5'`` -> dict(magnitude, num_ops, magnitude_std, magnitude_max,
    increasing, prob); ConfigError naming the bad part."""
    parts = str(spec).split('-')
    if parts[0] != 'rand':
        raise ConfigError("RandAugment spec must start with 'rand', got %r" % spec)
    cfg = dict(magnitude=10.0, num_ops=2, magnitude_std=0.0, magnitude_max=LEVEL_DENOM,
               increasing=False, prob=0.5)
    keys = (('mstd', 'magnitude_std', float), ('mmax', 'magnitude_max', float),
            ('inc', 'increasing', lambda v: bool(int(v))), ('m', 'magnitude', float),
            ('n', 'num_ops', int), ('p', 'prob', float))
    for part in parts[1:]:
        for key, name, conv in keys:
            if part.startswith(key):
                try:
                    cfg[name] = conv(part[len(key):])
                except ValueError:
                    raise ConfigError('RandAugment spec %r: bad value in %r' % (spec, part)) from None
                break
        else:
            raise ConfigError('RandAugment spec %r: unknown part %r (m, n, mstd, mmax, inc, p)'
                              % (spec, part))
    if cfg['num_ops'] < 0 or not 0 <= cfg['prob'] <= 1 or cfg['magnitude_std'] < 0:
        raise ConfigError('RandAugment spec %r: n must be >= 0, p in [0, 1], mstd >= 0' % spec)
    return cfg


class RandAugment:
    """``RandAugment('rand-m9-mstd0.5', fill=(124, 117, 104))(img, rng)`` -> augmented copy.

    ``img``: uint8 (H, W, 3) RGB; ``rng``: ``np.random.RandomState`` (all randomness:
    op choice, application, magnitude noise and signs, comes from it, so a seeded
    generator reproduces the result). ``ops`` overrides the op list (names in
    :data:`RAND_OPS` / :data:`RAND_OPS_INCREASING`). Semantics: module docstring.
    """

    def __init__(self, spec='rand-m9-mstd0.5', fill=(128, 128, 128), ops=None):
        cfg = parse_randaugment(spec)
        self.spec = spec
        self.__dict__.update(cfg)
        self.fill = tuple(int(round(v)) for v in fill)
        self.ops = tuple(ops) if ops is not None else (
            RAND_OPS_INCREASING if self.increasing else RAND_OPS)

    def magnitude_sample(self, rng):
        m = self.magnitude
        if self.magnitude_std == float('inf'):
            m = rng.uniform(0, m)
        elif self.magnitude_std > 0:
            m = rng.normal(m, self.magnitude_std)
        return float(min(max(m, 0.0), self.magnitude_max))

    def __call__(self, img, rng):
        out = img
        for k in rng.randint(0, len(self.ops), size=self.num_ops):
            if self.prob < 1.0 and rng.random_sample() >= self.prob:
                continue
            out = _apply(self.ops[k], out, self.magnitude_sample(rng), rng, self.fill)
        return out if out is not img else img.copy()

    def __repr__(self):
        return 'RandAugment(%r, n=%d, m=%g, mstd=%g, p=%g)' % (
            self.spec, self.num_ops, self.magnitude, self.magnitude_std, self.prob)


# ---------------------------------------------------------------- random erasing

def random_erase(x, rng, prob=0.5, min_area=0.02, max_area=1.0 / 3, min_aspect=0.3,
                 max_aspect=None):
    """Erase one rectangle of the normalised (C, H, W) float array ``x`` in place (see the
    module docstring). Returns the box ``(top, left, h, w)`` or None when nothing was
    erased."""
    box = _erase_box(x.shape, rng, prob, min_area, max_area, min_aspect, max_aspect)
    if box is not None:
        top, left, h, w, noise = box
        x[:, top:top + h, left:left + w] = noise.astype(x.dtype)
        return top, left, h, w
    return None


def _erase_box(shape, rng, prob, min_area, max_area, min_aspect, max_aspect):
    """``(top, left, h, w, noise (C, h, w))`` or None, drawing from ``rng`` in timm's order."""
    if prob <= 0 or rng.random_sample() >= prob:
        return None
    c, H, W = shape
    max_aspect = max_aspect or 1.0 / min_aspect
    log_r = (math.log(min_aspect), math.log(max_aspect))
    for _ in range(10):
        area = rng.uniform(min_area, max_area) * H * W
        r = math.exp(rng.uniform(*log_r))
        h = int(round(math.sqrt(area * r)))
        w = int(round(math.sqrt(area / r)))
        if w < W and h < H:
            top = rng.randint(0, H - h + 1)
            left = rng.randint(0, W - w + 1)
            return top, left, h, w, rng.standard_normal((c, h, w)).astype(np.float32)
    return None


class RandomErasing:
    """Random erasing for a batch of normalised images (N, C, H, W): each row is treated
    independently as :func:`random_erase` does (same draws from ``rng``).
    ``__call__(batch, rng)`` changes a numpy or NDArray batch in place and returns it."""

    def __init__(self, prob=0.5, min_area=0.02, max_area=1.0 / 3, min_aspect=0.3, max_aspect=None,
                 mode='pixel'):
        if mode != 'pixel':
            raise ConfigError("random erasing mode %r is not supported (only 'pixel')" % mode)
        if not 0 <= prob <= 1:
            raise ConfigError('random erasing probability must be in [0, 1], got %r' % prob)
        if not 0 < min_area <= max_area <= 1:
            raise ConfigError('random erasing needs 0 < min_area <= max_area <= 1')
        self.prob, self.min_area, self.max_area = float(prob), float(min_area), float(max_area)
        self.min_aspect, self.max_aspect = float(min_aspect), max_aspect
        self.mode = mode

    def __call__(self, batch, rng):
        """Erase rows of ``batch`` (numpy array or NDArray, N x C x H x W) in place."""
        for i in range(batch.shape[0]):
            box = _erase_box(batch.shape[1:], rng, self.prob, self.min_area, self.max_area,
                             self.min_aspect, self.max_aspect)
            if box is not None:
                top, left, h, w, noise = box
                # NDArray: only the rectangle is written (no copy of the whole batch)
                batch[i, :, top:top + h, left:left + w] = noise
        return batch

    def __repr__(self):
        return 'RandomErasing(p=%g, area=%g-%g, aspect=%g-%g, pixel)' % (
            self.prob, self.min_area, self.max_area, self.min_aspect,
            self.max_aspect or 1.0 / self.min_aspect)


class ErasingIter:
    """Wraps any iterator of the :mod:`~gluon_transfer.data.base` contract and applies
    :class:`RandomErasing` to every batch's normalised data. The generator for batch
    ``b`` of epoch ``e`` is seeded from ``(seed, e, b)``, so ``set_epoch`` keeps resumed
    runs exact. Padding rows (``Batch.pad``) are erased too; training iterators have none."""

    def __init__(self, inner, erasing, seed=0):
        self.inner, self.erasing, self.seed = inner, erasing, int(seed)
        self.epoch = 0

    def __len__(self):
        return len(self.inner)

    @property
    def batch_size(self):
        return self.inner.batch_size

    @property
    def num_samples(self):
        return self.inner.num_samples

    def __getattr__(self, name):
        if name == 'inner':
            raise AttributeError(name)
        return getattr(self.inner, name)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.inner.set_epoch(epoch)

    def __iter__(self):
        for b, batch in enumerate(self.inner):
            ss = np.random.SeedSequence([self.seed & 0xffffffff, self.epoch, b, 0xe5a])
            rng = np.random.RandomState(ss.generate_state(4))
            yield Batch(self.erasing(batch.data, rng), batch.label, batch.pad)
