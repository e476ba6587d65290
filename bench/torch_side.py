"""The PyTorch half of ``bench/bench_torch.py``: run by a *separate* Python that has PyTorch
(never the project's .venv: with torch >= 2 importable, ``import gluoncv`` fails).

    /path/to/torch-venv/bin/python bench/torch_side.py --model cifar_resnet56_v1 --batch 32 \\
        --what train --layout nchw --dtype float32 --iters 10 --warmup 3

Prints one JSON object: images/s (the median over ``--iters`` timed steps after ``--warmup``
untimed ones), the torch version and its thread count. The two networks are written here
from their definitions, so that the comparison uses the same architectures as GluonCV's
``cifar_resnet56_v1`` and ``resnet50_v1b`` without torchvision:

* CIFAR ResNet-56 v1: 3x3 conv (16) + BN + ReLU, three stages of nine basic blocks (16, 32,
  64 channels; stride 2 and a 1x1 conv + BN shortcut at the start of stages 2 and 3),
  global average pooling, a 10-way linear layer;
* ResNet-50 v1b (torchvision's ResNet-50 "v1.5"): 7x7/2 conv + BN + ReLU + 3x3/2 max pool,
  bottleneck stages of 3, 4, 6, 3 blocks (stride on the 3x3 conv), 1000-way linear layer.

``--profile`` times the ``--iters`` steps under ``torch.profiler`` instead and prints, in the
same JSON, the operators' self CPU time per step grouped into the categories of
``bench/profile_ops.py`` (which prints both frameworks side by side with ``--torch-python``).

A training step is forward, cross-entropy, backward and an SGD update (momentum 0.9, weight
decay 1e-4), on a fixed random batch, like ``bench.common.train_step_fn`` on the MXNet side.
``--dtype bfloat16`` runs the forward under CPU autocast (bf16 matmuls/convolutions, fp32
master weights), PyTorch's usual CPU mixed precision.
"""
import argparse
import json
import os
import re
import sys
import time


# (category, predicate on a lower-cased aten/autograd event name), tried in order; the names
# match bench/profile_ops.py's MXNet categories
CATEGORIES = [
    ('engine bookkeeping', lambda n: n.startswith('autograd::engine') or n.startswith('torch::autograd')),
    ('optimizer update', lambda n: '_foreach_' in n or 'optimizer' in n or 'sgd' in n),
    ('convolution', lambda n: 'conv' in n or n in ('aten::addmm', 'aten::mm', 'aten::linear', 'addmmbackward0',
                                                    'aten::matmul', 'aten::t')),
    ('BatchNorm', lambda n: 'batch_norm' in n or 'batchnorm' in n),
    ('pooling / reductions', lambda n: 'pool' in n or n in ('aten::mean', 'aten::sum', 'meanbackward1',
                                                             'aten::sum_to_size')),
    ('loss / softmax', lambda n: any(k in n for k in ('softmax', 'nll', 'cross_entropy'))),
    ('reorders / copies', lambda n: any(k in n for k in ('copy', 'reorder', 'to_dense', 'to_mkldnn', 'contiguous',
                                                          'reshape', 'view', 'transpose', 'expand', 'clone',
                                                          'as_strided'))),
    ('activation / elementwise', lambda n: any(k in n for k in ('relu', 'clamp', 'threshold', 'add', 'mul', 'div',
                                                                 'sub', 'neg', 'fill', 'zero'))),
]


def category(name):
    n = name.lower()
    for cat, pred in CATEGORIES:
        if pred(n):
            return cat
    return 'other'


def profile_steps(step, steps):
    """(wall ms per step, {operator: [self CPU ms per step, calls per step]}) of ``steps`` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t) / steps * 1e3
    ops = {}
    for e in prof.key_averages():
        if e.key.startswith('ProfilerStep'):
            continue
        o = ops.setdefault(e.key, [0.0, 0.0])
        o[0] += e.self_cpu_time_total / 1e3 / steps
        o[1] += e.count / steps
    del torch
    return wall, ops


KNOWN = 'cifar_resnet<6n+2>_v1 and resnet50_v1b'


def knows(name):
    """Whether :func:`build` defines the network ``name`` (see ``KNOWN``)."""
    return bool(re.match(r'^cifar_resnet\d+_v1$', name)) or name == 'resnet50_v1b'


def build(name):
    import torch.nn as nn

    class Residual(nn.Module):
        """relu(body(x) + shortcut(x)); the shortcut is a 1x1 conv + BN where the shape changes."""

        def __init__(self, body, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*body)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            r = x if self.down is None else self.down(x)
            return self.relu(self.body(x) + r)

    def Basic(cin, cout, stride):
        return Residual([nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)], cin, cout, stride)

    def Bottleneck(cin, mid, stride):
        cout = mid * 4
        return Residual([nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)], cin, cout, stride)

    if name.startswith('cifar_resnet') and name.endswith('_v1'):
        depth = int(name[len('cifar_resnet'):-len('_v1')])
        n = (depth - 2) // 6
        layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)], 16
        for i, c in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(Basic(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
        return nn.Sequential(*layers), 32, 10
    if name == 'resnet50_v1b':
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, (mid, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for j in range(blocks):
                layers.append(Bottleneck(cin, mid, 2 if (i > 0 and j == 0) else 1))
                cin = mid * 4
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
        return nn.Sequential(*layers), 224, 1000
    raise SystemExit('error: torch_side.py knows %s, not %r' % (KNOWN, name))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='cifar_resnet56_v1')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--what', choices=('train', 'infer'), default='train')
    p.add_argument('--layout', choices=('nchw', 'channels_last'), default='nchw')
    p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--profile', action='store_true',
                   help='profile the --iters steps: self CPU ms per step of every operator and category')
    a = p.parse_args(argv)
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get('BENCH_THREADS', os.cpu_count() or 1)))
    net, size, classes = build(a.model)
    fmt = torch.channels_last if a.layout == 'channels_last' else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.rand(a.batch, 3, size, size).to(memory_format=fmt)
    y = torch.randint(0, classes, (a.batch,))
    autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.dtype == 'bfloat16')
    if a.what == 'train':
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
    else:
        net.eval()

        def step():
            with torch.inference_mode(), autocast:
                net(x)
    for _ in range(a.warmup):
        step()
    if a.profile:
        wall, ops = profile_steps(step, a.iters)
        cats = {}
        for name, (ms, cnt) in ops.items():
            c = cats.setdefault(category(name), [0.0, 0.0])
            c[0] += ms
            c[1] += cnt
        print(json.dumps({'framework': 'pytorch', 'version': torch.__version__, 'threads': torch.get_num_threads(),
                          'wall_ms': wall, 'operators': ops, 'categories': cats}))
        return 0
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({'framework': 'pytorch', 'version': torch.__version__, 'threads': torch.get_num_threads(),
                      'images_per_sec': a.batch / times[len(times) // 2]}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
