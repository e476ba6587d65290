"""The picture tools (tools/visualize_fusion.py, tools/visualize_attention.py and its ``ast``
subcommand, tools/visualize_ast.py) on the bundled CIFAR-10 sample with tiny networks: each
writes a PNG into the run folder of its weights by default, titles every panel, draws its
colour bars with the label that says what the colour means, and refuses random weights or
missing images unless ``--random``. The drawn values are checked against properties of the
math (at(x) has unit L2 norm, MS-CAM weights lie in (0, 1), AST weights average to 1), not
against the tools' own code."""
import json
import os
import struct

import numpy as np
import pytest
import mxnet as mx

import gluon_transfer as gt
from tool_helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_VAL = os.path.join(ROOT, 'data', 'cifar10_sample', 'val.rec')


def png_size(path):
    """(width, height) from the PNG header; fails unless the file is a PNG."""
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n', path
    return struct.unpack('>II', head[16:24])


def save_net(path, name, **kw):
    net = gt.get_model(name, **kw)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    net.save_parameters(path)
    return path


def panel_axes(fig):
    """Axes that show an image (not colour bars)."""
    return [ax for ax in fig.axes if ax.images and ax.get_label() != '<colorbar>']


def colorbar_labels(fig):
    return [ax.get_xlabel() or ax.get_ylabel() for ax in fig.axes if ax.get_label() == '<colorbar>']


def close(fig):
    import matplotlib.pyplot as plt
    plt.close(fig)


# ----------------------------------------------------------------------- fusion
AFF_TINY = ['--model', 'cifar_aff_resnet', '--blocks', '1', '--channel-times', '1', '--classes', '10']


def test_fusion_figure_panels_and_png(tmp_path, capsys):
    tool = load_tool('visualize_fusion')
    params = save_net(str(tmp_path / 'run' / 'best.params'), 'cifar_aff_resnet', blocks=1, channel_times=1,
                      fusion='iaff', classes=10)
    argv = AFF_TINY + ['--fusion', 'iaff', '--params', params, '--rec', SAMPLE_VAL, '--num-images', '2']
    fig, out, panels = tool.build_figure(argv)
    assert out == os.path.join(str(tmp_path / 'run'), 'vis', 'fusion.png')
    # iAFF: w1 and w2 of the first and the last fusion block
    assert [p.split()[-1] for p in panels] == ['w1', 'w2', 'w1', 'w2']
    axes = panel_axes(fig)
    assert len(axes) == 2 * (1 + 4)
    titles = [ax.get_title() for ax in axes]
    assert all(titles), titles                                    # every panel has a title
    assert titles[0] == 'val.rec #0' and titles[5] == 'val.rec #1'
    assert titles[1].endswith('iAFF w1 (32x32)') and titles[4].endswith('iAFF w2 (8x8)')
    labels = colorbar_labels(fig)
    assert len(labels) == 1
    assert 'weight of x (residual branch)' in labels[0] and '1 - w goes to y (shortcut)' in labels[0]
    assert 'RANDOM' not in fig._suptitle.get_text()
    for ax in axes[1:5]:
        data = np.asarray(ax.images[0].get_array())
        assert ((data > 0) & (data < 1)).all()                    # sigmoid outputs, averaged over channels
        assert ax.images[0].get_clim() == (0, 1)
    close(fig)
    assert tool.main(argv) == 0
    assert 'wrote %s' % out in capsys.readouterr().out
    w, h = png_size(out)
    assert w > 600 and h > 300 and 10000 < os.path.getsize(out) < 2000000


def test_fusion_refusals(tmp_path, capsys):
    tool = load_tool('visualize_fusion')
    assert tool.main(AFF_TINY + ['--rec', SAMPLE_VAL]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --params not given') and '--random' in err and len(err.splitlines()) == 1
    params = save_net(str(tmp_path / 'best.params'), 'cifar_aff_resnet', blocks=1, channel_times=1, classes=10)
    assert tool.main(AFF_TINY + ['--params', params]) == 2                      # no images
    assert 'no images' in capsys.readouterr().err
    assert tool.main(AFF_TINY + ['--params', params, '--rec', str(tmp_path / 'missing.rec')]) == 2
    assert 'missing.rec' in capsys.readouterr().err
    assert tool.main(AFF_TINY + ['--fusion', 'add', '--random']) == 2
    assert 'no AFF/iAFF block' in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / 'vis'))


def test_fusion_random_says_so_and_stays_out_of_the_cwd(tmp_path, monkeypatch):
    tool = load_tool('visualize_fusion')
    monkeypatch.chdir(tmp_path)
    fig, out, _ = tool.build_figure(AFF_TINY + ['--random', '--num-images', '1'])
    assert out == os.path.join('runs', 'vis', 'fusion.png')
    assert '[RANDOM WEIGHTS, generated images]' in fig._suptitle.get_text()
    close(fig)


# ----------------------------------------------------------------------- attention (AT)
def test_attention_figure_panels_and_png(tmp_path, capsys):
    tool = load_tool('visualize_attention')
    student = save_net(str(tmp_path / 'student' / 'best.params'), 'wrn16_1')
    teacher = save_net(str(tmp_path / 'teacher' / 'best.params'), 'wrn16_2')
    argv = ['--model', 'wrn16_1', '--params', student, '--teacher', 'wrn16_2', '--teacher-params', teacher,
            '--rec', SAMPLE_VAL, '--num-images', '2']
    fig, out, panels = tool.build_figure(argv)
    assert out == os.path.join(str(tmp_path / 'student'), 'vis', 'attention.png')
    assert panels == ['wrn16_1 stage1', 'teacher wrn16_2 stage1', 'wrn16_1 stage2', 'teacher wrn16_2 stage2',
                      'wrn16_1 stage3', 'teacher wrn16_2 stage3']
    axes = panel_axes(fig)
    assert len(axes) == 2 * 7
    titles = [ax.get_title() for ax in axes]
    assert all(titles) and 'val.rec #1' in titles
    assert 'wrn16_1 stage1 (32x32)' in titles and 'teacher wrn16_2 stage3 (8x8)' in titles
    labels = colorbar_labels(fig)
    assert len(labels) == 3 and all(lab.startswith('at(x) = mean_c |x|^p') and 'p=2' in lab for lab in labels)
    for ax in axes:
        if ax.get_title().startswith(('wrn16', 'teacher')):
            a = np.asarray(ax.images[0].get_array(), np.float64)
            assert (a >= 0).all() and np.isclose(np.sqrt((a ** 2).sum()), 1.0, rtol=1e-4)   # unit L2 norm
    # student and teacher of one stage share the colour scale
    by_title = {ax.get_title(): ax for ax in axes}
    assert by_title['wrn16_1 stage2 (16x16)'].images[0].get_clim() == \
        by_title['teacher wrn16_2 stage2 (16x16)'].images[0].get_clim()
    close(fig)
    assert tool.main(argv + ['--out', str(tmp_path / 'pics')]) == 0
    out = str(tmp_path / 'pics' / 'attention.png')
    w, h = png_size(out)
    assert w > h > 200 and os.path.getsize(out) > 10000
    assert 'wrote %s' % out in capsys.readouterr().out


def test_attention_reads_image_files_and_refuses(tmp_path, capsys):
    import cv2
    tool = load_tool('visualize_attention')
    img = str(tmp_path / 'a.png')
    cv2.imwrite(img, np.random.RandomState(0).randint(0, 256, (40, 36, 3)).astype(np.uint8))
    student = save_net(str(tmp_path / 'best.params'), 'wrn16_1')
    fig, _, panels = tool.build_figure(['--model', 'wrn16_1', '--params', student, '--images', img])
    assert panels == ['wrn16_1 stage1', 'wrn16_1 stage2', 'wrn16_1 stage3']
    assert panel_axes(fig)[0].get_title() == 'a.png'
    close(fig)
    assert tool.main(['--model', 'wrn16_1', '--images', img]) == 2
    assert 'error: --params not given' in capsys.readouterr().err
    assert tool.main(['--model', 'wrn16_1', '--params', student, '--teacher', 'wrn16_2', '--images', img]) == 2
    assert '--teacher-params not given' in capsys.readouterr().err
    assert tool.main(['--model', 'wrn16_1', '--params', student, '--rec', SAMPLE_VAL, '--images', img]) == 2
    assert 'not both' in capsys.readouterr().err
    assert tool.main(['--model', 'wrn16_1', '--params', student, '--taps', 'stage9', '--images', img]) == 2
    assert 'stage9' in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / 'vis'))


# ----------------------------------------------------------------------- AFA spatial attention (ast)
@pytest.mark.slow
def test_ast_figure_from_a_stage1_run_folder(tmp_path, capsys):
    from gluon_transfer.losses.afa import AFASpatial, check_taps, default_taps
    tool = load_tool('visualize_ast')
    source = save_net(str(tmp_path / 'source.params'), 'resnet18_v1b', classes=10)
    # a stage-1 run folder: the attention modules of its latest checkpoint, found via checkpoint.json
    run = tmp_path / 'afa1'
    run.mkdir()
    net = gt.get_model('resnet18_v1b', classes=10)
    net.initialize()
    reg = AFASpatial(seed=3)
    reg.set_feature_shapes(check_taps(net, default_taps(net), 32))
    blocks = reg.blocks()
    blocks['afa_ast'].initialize(mx.init.Normal(0.5))
    mx.nd.save(str(run / 'r-0002.extra.params'),
               {'afa_ast.' + k: p.data() for k, p in blocks['afa_ast']._collect_params_with_prefix().items()})
    (run / 'r-0002.json').write_text(json.dumps({'epoch': 2, 'files': {'extra': 'r-0002.extra.params'}}))
    (run / 'checkpoint.json').write_text(json.dumps({'latest': 'r-0002.json'}))
    argv = ['--model', 'resnet18_v1b', '--params', source, '--afa-params', str(run), '--dataset', 'cifar10',
            '--input-size', '32', '--rec', SAMPLE_VAL, '--num-images', '2']
    fig, out, panels = tool.build_figure(argv)
    assert out == os.path.join(str(run), 'vis', 'ast.png')
    assert panels == ['layer1.1.conv2', 'layer2.1.conv2', 'layer3.1.conv2', 'layer4.1.conv2']
    axes = panel_axes(fig)
    assert len(axes) == 2 * 5 and all(ax.get_title() for ax in axes)
    assert axes[1].get_title() == 'layer1.1.conv2 (8x8)' and axes[4].get_title() == 'layer4.1.conv2 (1x1)'
    assert colorbar_labels(fig) == ['HW * a (1 = uniform)'] * 4                      # one per tap
    assert 'HW * a: spatial attention weight (1 = uniform)' in fig._suptitle.get_text()
    # HW * softmax over H*W averages to 1; the 1x1 map of layer 4 is exactly 1 (drawn upsampled)
    for ax in axes[1:5]:
        a = np.asarray(ax.images[1].get_array(), np.float64)
        assert a.shape == (32, 32) and (a > 0).all() and abs(a.mean() - 1) < 0.1
    np.testing.assert_allclose(np.asarray(axes[4].images[1].get_array()), 1.0, rtol=1e-5)
    close(fig)
    assert tool.main(argv) == 0
    w, h = png_size(out)
    assert w > h > 200
    assert 'wrote %s' % out in capsys.readouterr().out
    # through visualize_attention.py's ``ast`` subcommand, with the checkpoint file itself
    viz = load_tool('visualize_attention')
    assert viz.main(['ast', '--model', 'resnet18_v1b', '--params', source, '--rec', SAMPLE_VAL]) == 2
    assert 'error: --afa-params not given' in capsys.readouterr().err
    out2 = str(tmp_path / 'x' / 'ast2.png')
    assert viz.main(['ast'] + argv[:5] + [str(run / 'r-0002.extra.params')] + argv[6:] + ['--out', out2]) == 0
    png_size(out2)
