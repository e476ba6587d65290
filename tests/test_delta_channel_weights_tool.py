"""tools/delta_channel_weights.py run as its docstring documents it (default --mode auto) on a
tiny generated dataset."""
import json
import os

import cv2
import mxnet as mx
import numpy as np

from gluon_transfer import get_model
from gluon_transfer.data import pack

CLASSES = ('red', 'green', 'blue')


def test_documented_command_runs_with_mode_auto(tmp_path):
    rng = np.random.RandomState(0)
    for split, n in (('train', 4), ('val', 2)):
        for ci, c in enumerate(CLASSES):
            d = tmp_path / 'img' / split / c
            d.mkdir(parents=True)
            for k in range(n):
                img = rng.randint(0, 256, (36, 40, 3)).astype(np.uint8)
                img[..., ci] = 255
                cv2.imwrite(str(d / ('%d.png' % k)), img)
        pack(str(tmp_path / 'img' / split), str(tmp_path / 'data' / split), workers=1, classes=list(CLASSES))
    mx.random.seed(0)
    src = get_model('resnet18_v1b', classes=5)
    src.initialize(mx.init.Xavier())
    src(mx.nd.zeros((1, 3, 32, 32)))
    src.save_parameters(str(tmp_path / 'R18.params'))

    from tools.delta_channel_weights import main
    out = str(tmp_path / 'w.json')
    # the documented command (--model --source-params --data-dir --batch-size), scaled down;
    # --mode is left at its default, auto
    argv = ['--model', 'resnet18_v1b', '--source-params', str(tmp_path / 'R18.params'),
            '--data-dir', str(tmp_path / 'data'), '--batch-size', '4',
            '--input-size', '32', '--head-epochs', '1', '--num-batches', '1', '-j', '1',
            '--taps', 'layer1.1.conv2', '--out', out, '--save-dir', str(tmp_path / 'log')]
    assert main(argv) == 0
    with open(out) as f:
        saved = json.load(f)
    # one raw importance per output filter of the tapped convolution (64 in resnet18's layer1)
    assert saved['model'] == 'resnet18_v1b' and saved['taps'] == ['layer1.1.conv2']
    assert len(saved['raw_importance']) == 1 and len(saved['raw_importance'][0]) == 64
    assert np.all(np.isfinite(saved['raw_importance'][0]))
    assert saved['procedure']['head_epochs'] == 1 and saved['procedure']['num_batches'] == 1
    assert main(argv) == 0                                   # the JSON exists: reused
