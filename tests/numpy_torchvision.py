"""Independent numpy forwards of torchvision's ResNet / MobileNetV2 / Inception-v3 and timm's
Inception-v4 (eval mode, float64, NCHW), and random state dicts in their key layouts.

Written from the architectures' definitions, not from the Gluon code under test:

* BatchNorm (eval): ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` with
  eps 1e-5 (torchvision ResNet, MobileNetV2) or 1e-3 (the Inception basic convs);
* max pooling pads with -inf and rounds the output size down; average pooling divides by
  the window area (``count_include_pad=True``, torchvision's Inception-v3) or by the number
  of in-image elements (``count_include_pad=False``, timm's Inception-v4);
* the classifier sees the spatial mean (adaptive average pooling to 1x1).

State dicts: conv weights ~ N(0, 2 / fan_in), BatchNorm weight U(0.5, 1.5), bias N(0, 0.1),
running_mean N(0, 0.1), running_var U(0.5, 1.5) (non-trivial statistics, so a swapped or
ignored statistic shows), ``num_batches_tracked`` an int64 scalar, classifiers N(0, 0.01)
with N(0, 0.1) biases.
"""
import collections

import numpy as np


# ----------------------------------------------------------------- operators
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x, w, b=None, stride=1, padding=0, groups=1):
    """Cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C / groups, kh, kw)."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    kh, kw = w.shape[2:]
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    n, c, ho, wo = win.shape[:4]
    o = w.shape[0]
    win = win.reshape(n, groups, c // groups, ho, wo, kh, kw)
    wg = w.reshape(groups, o // groups, c // groups, kh, kw)
    out = np.einsum('ngchwij,gocij->ngohw', win, wg, optimize=True).reshape(n, o, ho, wo)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def batch_norm(x, sd, prefix, eps):
    g = lambda k: sd[prefix + '.' + k].reshape(1, -1, 1, 1)  # noqa: E731
    return (x - g('running_mean')) / np.sqrt(g('running_var') + eps) * g('weight') + g('bias')


def relu(x):
    return np.maximum(x, 0.0)


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def max_pool(x, k, s, p=0):
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return win.max(axis=(4, 5))


def avg_pool(x, k, s, p, count_include_pad):
    pad = ((0, 0), (0, 0), (p, p), (p, p))
    total = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad), (k, k), axis=(2, 3))[:, :, ::s, ::s].sum((4, 5))
    if count_include_pad:
        return total / (k * k)
    ones = np.pad(np.ones(x.shape[2:]), pad[2:])
    count = np.lib.stride_tricks.sliding_window_view(ones, (k, k))[::s, ::s].sum((2, 3))
    return total / count


def linear(x, sd, prefix):
    return x @ sd[prefix + '.weight'].T + sd[prefix + '.bias']


def _f64(sd):
    return {k: np.asarray(v, np.float64) for k, v in sd.items()}


# ----------------------------------------------------------------- random state dicts
class StateMaker:
    """Fills an OrderedDict with random parameters under torchvision's key names."""

    def __init__(self, rng):
        self.rng, self.sd = rng, collections.OrderedDict()

    def conv(self, name, o, i, k, groups=1, bias=False):
        kh, kw = _pair(k)
        fan_in = i // groups * kh * kw
        self.sd[name + '.weight'] = (self.rng.standard_normal((o, i // groups, kh, kw))
                                     * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if bias:
            self.sd[name + '.bias'] = self.rng.normal(0, 0.1, o).astype(np.float32)

    def bn(self, name, c):
        r = self.rng
        self.sd[name + '.weight'] = r.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[name + '.bias'] = r.normal(0, 0.1, c).astype(np.float32)
        self.sd[name + '.running_mean'] = r.normal(0, 0.1, c).astype(np.float32)
        self.sd[name + '.running_var'] = r.uniform(0.5, 1.5, c).astype(np.float32)
        self.sd[name + '.num_batches_tracked'] = np.array(int(r.integers(1, 10 ** 6)), np.int64)

    def linear(self, name, o, i, bias=True):
        self.sd[name + '.weight'] = self.rng.normal(0, 0.01, (o, i)).astype(np.float32)
        if bias:
            self.sd[name + '.bias'] = self.rng.normal(0, 0.1, o).astype(np.float32)

    def basic(self, name, o, i, k):
        """Inception's BasicConv2d: ``name.conv`` (no bias) + ``name.bn``."""
        self.conv(name + '.conv', o, i, k)
        self.bn(name + '.bn', o)


# ----------------------------------------------------------------- torchvision ResNet
RESNET_BLOCKS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
                 101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def resnet_state(rng, depth, classes=1000):
    blocks, bottleneck = RESNET_BLOCKS[depth]
    m = StateMaker(rng)
    m.conv('conv1', 64, 3, 7)
    m.bn('bn1', 64)
    cin, exp = 64, (4 if bottleneck else 1)
    for li, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
        for i in range(n):
            p = 'layer%d.%d.' % (li, i)
            stride = 2 if (i == 0 and li > 1) else 1
            if bottleneck:
                m.conv(p + 'conv1', width, cin, 1)
                m.bn(p + 'bn1', width)
                m.conv(p + 'conv2', width, width, 3)
                m.bn(p + 'bn2', width)
                m.conv(p + 'conv3', width * exp, width, 1)
                m.bn(p + 'bn3', width * exp)
            else:
                m.conv(p + 'conv1', width, cin, 3)
                m.bn(p + 'bn1', width)
                m.conv(p + 'conv2', width, width, 3)
                m.bn(p + 'bn2', width)
            if stride != 1 or cin != width * exp:
                m.conv(p + 'downsample.0', width * exp, cin, 1)
                m.bn(p + 'downsample.1', width * exp)
            cin = width * exp
    m.linear('fc', classes, cin)
    return m.sd


def resnet_forward(sd, x, depth):
    """torchvision ResNet (v1.5: the stride on the 3x3 conv of a bottleneck)."""
    f = _f64(sd)
    blocks, bottleneck = RESNET_BLOCKS[depth]
    bn = lambda y, p: batch_norm(y, f, p, 1e-5)  # noqa: E731
    o = max_pool(relu(bn(conv2d(x, f['conv1.weight'], stride=2, padding=3), 'bn1')), 3, 2, 1)
    for li, n in enumerate(blocks, 1):
        for i in range(n):
            p = 'layer%d.%d.' % (li, i)
            stride = 2 if (i == 0 and li > 1) else 1
            if bottleneck:
                y = relu(bn(conv2d(o, f[p + 'conv1.weight']), p + 'bn1'))
                y = relu(bn(conv2d(y, f[p + 'conv2.weight'], stride=stride, padding=1), p + 'bn2'))
                y = bn(conv2d(y, f[p + 'conv3.weight']), p + 'bn3')
            else:
                y = relu(bn(conv2d(o, f[p + 'conv1.weight'], stride=stride, padding=1), p + 'bn1'))
                y = bn(conv2d(y, f[p + 'conv2.weight'], padding=1), p + 'bn2')
            if p + 'downsample.0.weight' in f:
                short = bn(conv2d(o, f[p + 'downsample.0.weight'], stride=stride), p + 'downsample.1')
            else:
                short = o
            o = relu(y + short)
    return linear(o.mean(axis=(2, 3)), f, 'fc')


# ----------------------------------------------------------------- torchvision MobileNetV2
# (expansion t, output channels c, repeats n, first stride s), the paper's table 2
MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1))


def _mnv2_blocks():
    cin, out = 32, []
    for t, c, n, s in MOBILENETV2_SETTINGS:
        for i in range(n):
            out.append((cin, c, t, s if i == 0 else 1))
            cin = c
    return out


def mobilenet_v2_state(rng, classes=1000):
    m = StateMaker(rng)
    m.conv('features.0.0', 32, 3, 3)
    m.bn('features.0.1', 32)
    for j, (cin, c, t, _) in enumerate(_mnv2_blocks(), 1):
        p, hidden = 'features.%d.conv.' % j, cin * t
        if t == 1:
            m.conv(p + '0.0', hidden, hidden, 3, groups=hidden)
            m.bn(p + '0.1', hidden)
            m.conv(p + '1', c, hidden, 1)
            m.bn(p + '2', c)
        else:
            m.conv(p + '0.0', hidden, cin, 1)
            m.bn(p + '0.1', hidden)
            m.conv(p + '1.0', hidden, hidden, 3, groups=hidden)
            m.bn(p + '1.1', hidden)
            m.conv(p + '2', c, hidden, 1)
            m.bn(p + '3', c)
    m.conv('features.18.0', 1280, 320, 1)
    m.bn('features.18.1', 1280)
    m.linear('classifier.1', classes, 1280)
    return m.sd


def mobilenet_v2_features(sd, x):
    """The pooled 1280-d features of torchvision's MobileNetV2 (before dropout + classifier)."""
    f = _f64(sd)
    bn = lambda y, p: batch_norm(y, f, p, 1e-5)  # noqa: E731
    o = relu6(bn(conv2d(x, f['features.0.0.weight'], stride=2, padding=1), 'features.0.1'))
    for j, (cin, c, t, s) in enumerate(_mnv2_blocks(), 1):
        p, hidden = 'features.%d.conv.' % j, cin * t
        y = o
        if t != 1:
            y = relu6(bn(conv2d(y, f[p + '0.0.weight']), p + '0.1'))
            dw, proj, pbn = p + '1.0', p + '2', p + '3'
            dbn = p + '1.1'
        else:
            dw, dbn, proj, pbn = p + '0.0', p + '0.1', p + '1', p + '2'
        y = relu6(bn(conv2d(y, f[dw + '.weight'], stride=s, padding=1, groups=hidden), dbn))
        y = bn(conv2d(y, f[proj + '.weight']), pbn)
        o = o + y if (s == 1 and cin == c) else y
    o = relu6(bn(conv2d(o, f['features.18.0.weight']), 'features.18.1'))
    return o.mean(axis=(2, 3))


def mobilenet_v2_forward(sd, x):
    return linear(mobilenet_v2_features(sd, x), _f64(sd), 'classifier.1')


# ----------------------------------------------------------------- Inception basic conv
def _basic(f, x, name, stride=1, padding=0, eps=1e-3):
    return relu(batch_norm(conv2d(x, f[name + '.conv.weight'], stride=stride, padding=padding), f, name + '.bn', eps))


# ----------------------------------------------------------------- torchvision Inception-v3
def inception_v3_state(rng, classes=1000, aux=True):
    m = StateMaker(rng)
    for name, o, i, k in (('Conv2d_1a_3x3', 32, 3, 3), ('Conv2d_2a_3x3', 32, 32, 3), ('Conv2d_2b_3x3', 64, 32, 3),
                          ('Conv2d_3b_1x1', 80, 64, 1), ('Conv2d_4a_3x3', 192, 80, 3)):
        m.basic(name, o, i, k)
    for name, cin, pool in (('Mixed_5b', 192, 32), ('Mixed_5c', 256, 64), ('Mixed_5d', 288, 64)):
        for b, o, i, k in (('branch1x1', 64, cin, 1), ('branch5x5_1', 48, cin, 1), ('branch5x5_2', 64, 48, 5),
                           ('branch3x3dbl_1', 64, cin, 1), ('branch3x3dbl_2', 96, 64, 3),
                           ('branch3x3dbl_3', 96, 96, 3), ('branch_pool', pool, cin, 1)):
            m.basic(name + '.' + b, o, i, k)
    for b, o, i, k in (('branch3x3', 384, 288, 3), ('branch3x3dbl_1', 64, 288, 1), ('branch3x3dbl_2', 96, 64, 3),
                       ('branch3x3dbl_3', 96, 96, 3)):
        m.basic('Mixed_6a.' + b, o, i, k)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
        for b, o, i, k in (('branch1x1', 192, 768, 1), ('branch7x7_1', c7, 768, 1), ('branch7x7_2', c7, c7, (1, 7)),
                           ('branch7x7_3', 192, c7, (7, 1)), ('branch7x7dbl_1', c7, 768, 1),
                           ('branch7x7dbl_2', c7, c7, (7, 1)), ('branch7x7dbl_3', c7, c7, (1, 7)),
                           ('branch7x7dbl_4', c7, c7, (7, 1)), ('branch7x7dbl_5', 192, c7, (1, 7)),
                           ('branch_pool', 192, 768, 1)):
            m.basic(name + '.' + b, o, i, k)
    if aux:
        m.basic('AuxLogits.conv0', 128, 768, 1)
        m.basic('AuxLogits.conv1', 768, 128, 5)
        m.linear('AuxLogits.fc', classes, 768)
    for b, o, i, k in (('branch3x3_1', 192, 768, 1), ('branch3x3_2', 320, 192, 3), ('branch7x7x3_1', 192, 768, 1),
                       ('branch7x7x3_2', 192, 192, (1, 7)), ('branch7x7x3_3', 192, 192, (7, 1)),
                       ('branch7x7x3_4', 192, 192, 3)):
        m.basic('Mixed_7a.' + b, o, i, k)
    for name, cin in (('Mixed_7b', 1280), ('Mixed_7c', 2048)):
        for b, o, i, k in (('branch1x1', 320, cin, 1), ('branch3x3_1', 384, cin, 1), ('branch3x3_2a', 384, 384, (1, 3)),
                           ('branch3x3_2b', 384, 384, (3, 1)), ('branch3x3dbl_1', 448, cin, 1),
                           ('branch3x3dbl_2', 384, 448, 3), ('branch3x3dbl_3a', 384, 384, (1, 3)),
                           ('branch3x3dbl_3b', 384, 384, (3, 1)), ('branch_pool', 192, cin, 1)):
            m.basic(name + '.' + b, o, i, k)
    m.linear('fc', classes, 2048)
    return m.sd


def inception_v3_features(sd, x, transform_input=True):
    """The pooled 2048-d features of torchvision's Inception-v3 in eval mode (no auxiliary
    output). ``transform_input``: first map ImageNet-normalised input to (x - 0.5) / 0.5."""
    f = _f64(sd)
    if transform_input:
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        x = x * (std / 0.5).reshape(1, 3, 1, 1) + ((mean - 0.5) / 0.5).reshape(1, 3, 1, 1)
    B = lambda y, name, **kw: _basic(f, y, name, **kw)  # noqa: E731
    x = B(x, 'Conv2d_1a_3x3', stride=2)
    x = B(x, 'Conv2d_2a_3x3')
    x = max_pool(B(x, 'Conv2d_2b_3x3', padding=1), 3, 2)
    x = B(x, 'Conv2d_3b_1x1')
    x = max_pool(B(x, 'Conv2d_4a_3x3'), 3, 2)
    for m in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
        p = m + '.'
        x = np.concatenate([
            B(x, p + 'branch1x1'),
            B(B(x, p + 'branch5x5_1'), p + 'branch5x5_2', padding=2),
            B(B(B(x, p + 'branch3x3dbl_1'), p + 'branch3x3dbl_2', padding=1), p + 'branch3x3dbl_3', padding=1),
            B(avg_pool(x, 3, 1, 1, True), p + 'branch_pool')], axis=1)
    p = 'Mixed_6a.'
    x = np.concatenate([
        B(x, p + 'branch3x3', stride=2),
        B(B(B(x, p + 'branch3x3dbl_1'), p + 'branch3x3dbl_2', padding=1), p + 'branch3x3dbl_3', stride=2),
        max_pool(x, 3, 2)], axis=1)
    for m in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
        p = m + '.'
        b7 = B(B(B(x, p + 'branch7x7_1'), p + 'branch7x7_2', padding=(0, 3)), p + 'branch7x7_3', padding=(3, 0))
        d = B(x, p + 'branch7x7dbl_1')
        for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
            d = B(d, p + 'branch7x7dbl_%d' % i, padding=pad)
        x = np.concatenate([B(x, p + 'branch1x1'), b7, d, B(avg_pool(x, 3, 1, 1, True), p + 'branch_pool')], axis=1)
    p = 'Mixed_7a.'
    b3 = B(B(x, p + 'branch3x3_1'), p + 'branch3x3_2', stride=2)
    b7 = B(B(B(B(x, p + 'branch7x7x3_1'), p + 'branch7x7x3_2', padding=(0, 3)), p + 'branch7x7x3_3',
             padding=(3, 0)), p + 'branch7x7x3_4', stride=2)
    x = np.concatenate([b3, b7, max_pool(x, 3, 2)], axis=1)
    for m in ('Mixed_7b', 'Mixed_7c'):
        p = m + '.'
        b3 = B(x, p + 'branch3x3_1')
        b3 = np.concatenate([B(b3, p + 'branch3x3_2a', padding=(0, 1)), B(b3, p + 'branch3x3_2b', padding=(1, 0))], 1)
        d = B(B(x, p + 'branch3x3dbl_1'), p + 'branch3x3dbl_2', padding=1)
        d = np.concatenate([B(d, p + 'branch3x3dbl_3a', padding=(0, 1)),
                            B(d, p + 'branch3x3dbl_3b', padding=(1, 0))], 1)
        x = np.concatenate([B(x, p + 'branch1x1'), b3, d, B(avg_pool(x, 3, 1, 1, True), p + 'branch_pool')], axis=1)
    return x.mean(axis=(2, 3))


def inception_v3_forward(sd, x, transform_input=True):
    return linear(inception_v3_features(sd, x, transform_input), _f64(sd), 'fc')


# ----------------------------------------------------------------- timm Inception-v4
def inception_v4_state(rng, classes=1000):
    m = StateMaker(rng)
    m.basic('features.0', 32, 3, 3)
    m.basic('features.1', 32, 32, 3)
    m.basic('features.2', 64, 32, 3)
    m.basic('features.3.conv', 96, 64, 3)
    for b, o, i, k in (('branch0.0', 64, 160, 1), ('branch0.1', 96, 64, 3), ('branch1.0', 64, 160, 1),
                       ('branch1.1', 64, 64, (1, 7)), ('branch1.2', 64, 64, (7, 1)), ('branch1.3', 96, 64, 3)):
        m.basic('features.4.' + b, o, i, k)
    m.basic('features.5.conv', 192, 192, 3)
    for j in range(6, 10):
        for b, o, i, k in (('branch0', 96, 384, 1), ('branch1.0', 64, 384, 1), ('branch1.1', 96, 64, 3),
                           ('branch2.0', 64, 384, 1), ('branch2.1', 96, 64, 3), ('branch2.2', 96, 96, 3),
                           ('branch3.1', 96, 384, 1)):
            m.basic('features.%d.%s' % (j, b), o, i, k)
    for b, o, i, k in (('branch0', 384, 384, 3), ('branch1.0', 192, 384, 1), ('branch1.1', 224, 192, 3),
                       ('branch1.2', 256, 224, 3)):
        m.basic('features.10.' + b, o, i, k)
    for j in range(11, 18):
        for b, o, i, k in (('branch0', 384, 1024, 1), ('branch1.0', 192, 1024, 1), ('branch1.1', 224, 192, (1, 7)),
                           ('branch1.2', 256, 224, (7, 1)), ('branch2.0', 192, 1024, 1),
                           ('branch2.1', 192, 192, (7, 1)), ('branch2.2', 224, 192, (1, 7)),
                           ('branch2.3', 224, 224, (7, 1)), ('branch2.4', 256, 224, (1, 7)),
                           ('branch3.1', 128, 1024, 1)):
            m.basic('features.%d.%s' % (j, b), o, i, k)
    for b, o, i, k in (('branch0.0', 192, 1024, 1), ('branch0.1', 192, 192, 3), ('branch1.0', 256, 1024, 1),
                       ('branch1.1', 256, 256, (1, 7)), ('branch1.2', 320, 256, (7, 1)), ('branch1.3', 320, 320, 3)):
        m.basic('features.18.' + b, o, i, k)
    for j in range(19, 22):
        for b, o, i, k in (('branch0', 256, 1536, 1), ('branch1_0', 384, 1536, 1), ('branch1_1a', 256, 384, (1, 3)),
                           ('branch1_1b', 256, 384, (3, 1)), ('branch2_0', 384, 1536, 1),
                           ('branch2_1', 448, 384, (3, 1)), ('branch2_2', 512, 448, (1, 3)),
                           ('branch2_3a', 256, 512, (1, 3)), ('branch2_3b', 256, 512, (3, 1)),
                           ('branch3.1', 256, 1536, 1)):
            m.basic('features.%d.%s' % (j, b), o, i, k)
    m.linear('last_linear', classes, 1536)
    return m.sd


def inception_v4_forward(sd, x):
    """timm's Inception-v4 in eval mode on a (x - 0.5) / 0.5 normalised input."""
    f = _f64(sd)
    B = lambda y, name, **kw: _basic(f, y, name, **kw)  # noqa: E731
    avg = lambda y: avg_pool(y, 3, 1, 1, False)  # noqa: E731
    x = B(B(B(x, 'features.0', stride=2), 'features.1'), 'features.2', padding=1)
    x = np.concatenate([max_pool(x, 3, 2), B(x, 'features.3.conv', stride=2)], axis=1)
    p = 'features.4.'
    a = B(B(x, p + 'branch0.0'), p + 'branch0.1')
    b = B(B(B(B(x, p + 'branch1.0'), p + 'branch1.1', padding=(0, 3)), p + 'branch1.2', padding=(3, 0)),
          p + 'branch1.3')
    x = np.concatenate([a, b], axis=1)
    x = np.concatenate([B(x, 'features.5.conv', stride=2), max_pool(x, 3, 2)], axis=1)
    for j in range(6, 10):
        p = 'features.%d.' % j
        x = np.concatenate([
            B(x, p + 'branch0'),
            B(B(x, p + 'branch1.0'), p + 'branch1.1', padding=1),
            B(B(B(x, p + 'branch2.0'), p + 'branch2.1', padding=1), p + 'branch2.2', padding=1),
            B(avg(x), p + 'branch3.1')], axis=1)
    p = 'features.10.'
    x = np.concatenate([
        B(x, p + 'branch0', stride=2),
        B(B(B(x, p + 'branch1.0'), p + 'branch1.1', padding=1), p + 'branch1.2', stride=2),
        max_pool(x, 3, 2)], axis=1)
    for j in range(11, 18):
        p = 'features.%d.' % j
        b1 = B(B(B(x, p + 'branch1.0'), p + 'branch1.1', padding=(0, 3)), p + 'branch1.2', padding=(3, 0))
        b2 = B(x, p + 'branch2.0')
        for i, pad in ((1, (3, 0)), (2, (0, 3)), (3, (3, 0)), (4, (0, 3))):
            b2 = B(b2, p + 'branch2.%d' % i, padding=pad)
        x = np.concatenate([B(x, p + 'branch0'), b1, b2, B(avg(x), p + 'branch3.1')], axis=1)
    p = 'features.18.'
    b0 = B(B(x, p + 'branch0.0'), p + 'branch0.1', stride=2)
    b1 = B(B(B(B(x, p + 'branch1.0'), p + 'branch1.1', padding=(0, 3)), p + 'branch1.2', padding=(3, 0)),
           p + 'branch1.3', stride=2)
    x = np.concatenate([b0, b1, max_pool(x, 3, 2)], axis=1)
    for j in range(19, 22):
        p = 'features.%d.' % j
        b1 = B(x, p + 'branch1_0')
        b2 = B(B(B(x, p + 'branch2_0'), p + 'branch2_1', padding=(1, 0)), p + 'branch2_2', padding=(0, 1))
        x = np.concatenate([
            B(x, p + 'branch0'),
            B(b1, p + 'branch1_1a', padding=(0, 1)), B(b1, p + 'branch1_1b', padding=(1, 0)),
            B(b2, p + 'branch2_3a', padding=(0, 1)), B(b2, p + 'branch2_3b', padding=(1, 0)),
            B(avg(x), p + 'branch3.1')], axis=1)
    return linear(x.mean(axis=(2, 3)), f, 'last_linear')
