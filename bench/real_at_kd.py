#!/usr/bin/env python
"""A short real comparison of student alone, AT, KD and AT+KD on CIFAR-10 (CPU budget).

    .venv/bin/python bench/real_at_kd.py [--data-dir ~/.mxnet/datasets/cifar10] [--fraction 0.2] [--epochs 5]

Trains a WRN-16-2 teacher, then four WRN-16-1 students with the same schedule and seed:
alone, AT (beta 1e3), KD (alpha 0.9, T 4) and AT+KD, all through train_cifar.py, on a
seeded class-balanced fraction of the 45k training images, evaluated on the 5k val
split. Prints a Markdown table of final val top-1 (and writes bench/out/real_at_kd.md).
The reference's 200-epoch schedule is far out of reach on 2 cores: the point is that
the pipeline trains and the methods rank sensibly, not the paper's numbers.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def train(name, extra, args):
    save = os.path.join(args.out, name)
    if args.force and os.path.isfile(os.path.join(save, 'metrics.jsonl')):
        save += time.strftime('-%Y%m%d-%H%M%S')        # a run folder is never reused: train into a new one
    cmd = [sys.executable, os.path.join(ROOT, 'train_cifar.py'), '--data-dir', args.data_dir,
           '--train-fraction', str(args.fraction), '--num-epochs', str(args.epochs), '--batch-size', '128',
           '--lr', '0.1', '--lr-mode', 'cosine', '--optimizer', 'sgd', '--wd', '5e-4', '--seed', '1',
           '--save-dir', save, '--log-interval', '0', '-j', '1'] + extra
    if not os.path.isfile(os.path.join(save, 'metrics.jsonl')) or args.force:
        print('$ ' + ' '.join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(save, 'metrics.jsonl')) as f:
        last = [json.loads(line) for line in f][-1]
    return last, save


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument('--data-dir', default=os.path.expanduser('~/.mxnet/datasets/cifar10'),
                    help='the full CIFAR-10 RecordIO folder (45k/5k split; default %(default)s)')
    ap.add_argument('--fraction', type=float, default=0.2)
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--out', default=os.path.join(HERE, 'out', 'real_at_kd'))
    ap.add_argument('--force', action='store_true')
    args = ap.parse_args()
    teacher, tdir = train('teacher_wrn16_2', ['--model', 'wrn16_2'], args)
    tparams = os.path.join(tdir, 'cifar10-wrn16_2-%04d.params' % args.epochs)
    t = ['--teacher-model', 'wrn16_2', '--teacher-params', tparams]
    rows = [('WRN-16-2 teacher', teacher)]
    for label, name, extra in [('WRN-16-1 alone', 'student', []),
                               ('WRN-16-1 + AT (beta 1e3)', 'at', t + ['--at-beta', '1e3']),
                               ('WRN-16-1 + KD (alpha 0.9, T 4)', 'kd', t + ['--kd-alpha', '0.9']),
                               ('WRN-16-1 + AT + KD', 'atkd', t + ['--at-beta', '1e3', '--kd-alpha', '0.9'])]:
        rows.append((label, train(name, ['--model', 'wrn16_1'] + extra, args)[0]))
    table = ['| run (%d epochs, %d%% of CIFAR-10 train, val 5k) | val top-1 | val top-5 | train img/s |' % (
        args.epochs, round(100 * args.fraction)), '|---|---|---|---|']
    table += ['| %s | %.4f | %.4f | %.1f |' % (label, r['val_top1'], r['val_top5'], r['images_per_sec'])
              for label, r in rows]
    text = '\n'.join(table)
    print(text)
    with open(os.path.join(HERE, 'out', 'real_at_kd.md'), 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
