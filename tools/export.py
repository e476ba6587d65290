#!/usr/bin/env python
"""Export a network for deployment: hybridized symbol + params, re-import check, optional ONNX.

    python tools/export.py --model cifar_aff_resnet32 --params best.params \
        --input-shape 1,3,32,32 --out exported/aff32 [--onnx] [--no-optimize]

Writes ``<out>-symbol.json`` and ``<out>-0000.params`` (and ``<out>.onnx`` with --onnx), and
prints what it did. By default the graph is partitioned for the oneDNN (``MKLDNN``) CPU backend
(``optimize_for``: conv+BN+ReLU+add fused; the fastest CPU inference path, see docs/benchmarks.md)
and kept only if its outputs match the plain graph; ``--no-optimize`` exports the plain graph
(needed to load it in an MXNet build without MKLDNN). The ONNX file is always converted from the
plain graph (the fused operators have no ONNX equivalent). ``--prune`` (AFS networks, AFDS):
statically pruned channels are removed and static channels folded into BN first
(gluon_transfer/prune.py; checked equal to the gated network), and the pruned Gluon network is
also written as ``<out>-pruned.params`` plus ``<out>-pruned.json`` (its constructor arguments).
Errors are one line (``error: ...``, exit status 2).
"""
import argparse
import ast
import os
import shutil
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_kwargs(args):
    """Model options from the named flags plus repeated ``--kw key=value`` (Python literals)."""
    from gluon_transfer import cli
    from gluon_transfer.errors import ConfigError
    kwargs = cli.model_kwargs(args)
    if args.classes is not None:
        kwargs['classes'] = args.classes
    for item in args.kw or []:
        if '=' not in item:
            raise ConfigError('--kw takes key=value; got %r' % item)
        key, text = item.split('=', 1)
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True, help='a name from gluon_transfer.list_models()')
    p.add_argument('--params', help='a save_parameters file to load (key/shape checked)')
    p.add_argument('--random-init', action='store_true', help='export random weights (no --params; for testing)')
    p.add_argument('--input-shape', default='1,3,224,224', help='N,C,H,W used to trace and check (default %(default)s)')
    p.add_argument('--out', required=True, help='output prefix')
    p.add_argument('--onnx', action='store_true', help='also write <out>.onnx (needs onnx<1.19)')
    p.add_argument('--no-optimize', dest='optimize', action='store_false',
                   help='export the plain graph; by default it is partitioned for the oneDNN/MKLDNN CPU backend '
                        '(fused conv+BN+ReLU+add, kept only if outputs stay equal)')
    p.add_argument('--optimize', dest='optimize', action='store_true', help=argparse.SUPPRESS)  # the old flag
    p.add_argument('--no-check', action='store_true', help='skip the re-import comparisons')
    p.add_argument('--prune', action='store_true',
                   help='AFS networks: remove statically pruned channels (m=0), fold static ones into BN')
    from gluon_transfer import cli
    g = p.add_argument_group('model options')
    cli.add_model_options(g)
    g.add_argument('--classes', type=int)
    g.add_argument('--kw', action='append', metavar='KEY=VALUE', help='any other model option (repeatable)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        import mxnet as mx
        import gluon_transfer as gt
        from gluon_transfer.errors import ConfigError, GluonTransferError
        from gluon_transfer.export import export_onnx, export_symbol, parse_shape
        from gluon_transfer.weights import describe_load, load_params
    try:
        shape = parse_shape(args.input_shape)
        if not args.params and not args.random_init:
            raise ConfigError('pass --params FILE (or --random-init to export untrained weights)')
        kwargs = model_kwargs(args)
        if args.model.startswith('afs_') and args.params:
            from gluon_transfer.afds import recorded_gate_options
            recorded, where = recorded_gate_options(args.params)
            recorded = {k: v for k, v in recorded.items() if k not in kwargs}      # --kw wins
            if recorded:
                kwargs.update(recorded)
                print('%s as recorded in %s' % (', '.join('%s=%r' % kv for kv in sorted(recorded.items())), where))
        net = gt.get_model(args.model, **kwargs)
        net.initialize(mx.init.Xavier(), ctx=mx.cpu())
        print('built %s(%s)' % (args.model, ', '.join('%s=%r' % kv for kv in sorted(kwargs.items()))))
        if args.params:
            print('%s: %s' % (args.params, describe_load(load_params(net, args.params, ctx=mx.cpu()))))
        else:
            print('no --params: exporting randomly initialised weights')
        if args.prune:
            from gluon_transfer.prune import export_pruned, require_masks
            if args.params:
                from gluon_transfer.afds import recorded_phase
                phase, where = recorded_phase(args.params)
                if phase == 1:
                    raise ConfigError('%s is an AFDS phase-1 checkpoint (%s): its masks were not chosen yet; '
                                      '--prune needs a phase-2 checkpoint (a later epoch or the best file)'
                                      % (args.params, where))
            require_masks(net, args.params or 'the network')
            net = export_pruned(net, args.out, shape, check=not args.no_check, log=print)
        res = export_symbol(net, args.out, shape, check=not args.no_check, optimize=args.optimize, log=print)
        if args.onnx:
            src = res
            if res['optimized']:  # fused MKLDNN operators have no ONNX form: convert the plain graph
                tmp = tempfile.mkdtemp(prefix='gt_export_')
                src = export_symbol(net, os.path.join(tmp, 'plain'), shape, check=False, optimize=False)
            try:
                export_onnx(src['symbol'], src['params'], shape, args.out + '.onnx', check=not args.no_check,
                            log=print)
            finally:
                if src is not res:
                    shutil.rmtree(tmp, ignore_errors=True)
    except GluonTransferError as err:
        print('error: %s' % err, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
