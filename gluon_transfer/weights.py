"""Loading parameter files into networks with key, shape and dtype checks.

``load_params`` is the one place where a ``.params`` file (``save_parameters`` layout,
structural keys such as ``layer3.0.conv1.weight``) meets a network. It never trusts the
file: every key is compared with the network's before anything is assigned, and the
first problem is reported by name in a one-line :class:`CheckpointError`.
"""
import os

import numpy as np
import mxnet as mx

from .errors import CheckpointError

__all__ = ['load_params', 'read_params', 'net_param_shapes', 'describe_load', 'resolve_pretrained',
           'published_params', 'params_roots']


def read_params(path):
    """Read a ``.params`` file into ``{key: NDArray}``; a clear error if it is not one."""
    if not os.path.isfile(path):
        raise CheckpointError('params file not found: %s' % path)
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError:
        raise CheckpointError('cannot read %s: not an MXNet .params file (or truncated)' % path) from None
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError('%s holds no named arrays; expected a save_parameters() file' % path)
    if any(k.startswith(('arg:', 'aux:')) for k in loaded):
        raise CheckpointError('%s is an exported symbol params file (arg:/aux: keys); '
                              'load it with mx.gluon.SymbolBlock.imports, not into a Gluon network' % path)
    return loaded


def net_param_shapes(net):
    """``{structural key: shape}`` of a network, as ``save_parameters`` would write them."""
    return {k: p.shape for k, p in net._collect_params_with_prefix().items()}


def _shape_fits(model_shape, file_shape):
    if model_shape is None or len(model_shape) == 0:
        return True
    if len(model_shape) != len(file_shape):
        return False
    return all(m in (0, -1, f) for m, f in zip(model_shape, file_shape))


def load_params(net, path, ctx=None, strict=True, allow_missing=False, ignore_extra=False,
                cast_dtype=True, report=None):
    """Load ``path`` into ``net`` after checking every key, shape and dtype.

    Parameters
    ----------
    net : mx.gluon.Block
    path : str
        A file written by ``save_parameters`` (structural keys, no net prefix).
    ctx : Context or list of Context, optional
        Where to put the arrays (defaults to each parameter's current context or cpu).
    strict : bool
        Shorthand for ``allow_missing=False, ignore_extra=False``.
    allow_missing, ignore_extra : bool
        Tolerate network keys absent from the file / file keys absent from the network.
    cast_dtype : bool
        Cast arrays whose dtype differs from the network's (e.g. the float16 open-aff
        ImageNet files into a float32 network); the casts are counted in the report.

    Returns
    -------
    dict with ``loaded`` (count), ``missing`` and ``unexpected`` (key lists) and
    ``cast`` (``{'float16->float32': n}``).

    Raises
    ------
    CheckpointError naming the file and the first bad key (missing, unexpected, shape or
    dtype), so a user can tell at once which model the file belongs to.
    """
    if strict:
        allow_missing = allow_missing and not strict
        ignore_extra = ignore_extra and not strict
    loaded = read_params(path)
    params = net._collect_params_with_prefix()
    missing = [k for k in params if k not in loaded]
    unexpected = [k for k in loaded if k not in params]
    name = os.path.basename(path)
    if missing and not allow_missing:
        raise CheckpointError('%s does not fit %s: missing key %r (%d missing, %d unexpected in total)'
                              % (name, type(net).__name__, missing[0], len(missing), len(unexpected)))
    if unexpected and not ignore_extra:
        raise CheckpointError('%s does not fit %s: unexpected key %r (%d unexpected, %d missing in total)'
                              % (name, type(net).__name__, unexpected[0], len(unexpected), len(missing)))
    for key, param in params.items():
        if key in loaded and not _shape_fits(param.shape, loaded[key].shape):
            raise CheckpointError('%s does not fit %s: parameter %r has shape %s in the model but %s in the file'
                                  % (name, type(net).__name__, key, tuple(param.shape), tuple(loaded[key].shape)))
    cast = {}
    for key, param in params.items():
        if key not in loaded:
            continue
        arr = loaded[key]
        have = np.dtype(arr.dtype)
        want = np.dtype(param.dtype) if param.dtype is not None else have
        if have != want:
            if not cast_dtype:
                raise CheckpointError('%s: parameter %r is %s in the file but %s in the model (pass cast_dtype=True)'
                                      % (name, key, have.name, want.name))
            tag = '%s->%s' % (have.name, want.name)
            cast[tag] = cast.get(tag, 0) + 1
        target = ctx
        if target is None:
            try:
                target = param.list_ctx()
            except RuntimeError:
                target = [mx.cpu()]
        param._load_init(arr, target, cast_dtype=True, dtype_source='current')
    result = {'loaded': len(params) - len(missing), 'missing': missing, 'unexpected': unexpected, 'cast': cast}
    if report is not None:
        report(result)
    return result


def describe_load(result):
    """A one-line summary of :func:`load_params`' result for logs."""
    parts = ['loaded %d arrays' % result['loaded']]
    if result['missing']:
        parts.append('%d missing (kept initialised values)' % len(result['missing']))
    if result['unexpected']:
        parts.append('%d unexpected (ignored)' % len(result['unexpected']))
    for tag, n in sorted(result['cast'].items()):
        parts.append('cast %d arrays %s' % (n, tag))
    return ', '.join(parts)


# ---------------------------------------------------------------------------------------
# Published params (params/manifest.json): where a pretrained=True file is looked up.

MANIFEST_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'params', 'manifest.json')
PARAMS_ENV = 'GLUON_TRANSFER_PARAMS'


def params_roots():
    """Directories searched for published files, in order: each entry of
    ``$GLUON_TRANSFER_PARAMS`` (``os.pathsep``-separated), then ``~/.mxnet/gluon_transfer/params``."""
    roots = [p for p in os.environ.get(PARAMS_ENV, '').split(os.pathsep) if p]
    roots.append(os.path.join(os.path.expanduser('~'), '.mxnet', 'gluon_transfer', 'params'))
    return roots


def file_sha1(path, chunk=1 << 20):
    """SHA-1 hex digest of the file at ``path``."""
    import hashlib
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def project_networks(manifest=None):
    """The networks this project trained and ships in ``params/`` (the manifest's
    ``networks`` list): dicts with ``name`` (the ``get_model(name, pretrained=True)`` name),
    ``file`` (relative to the manifest's folder), ``model`` and ``kwargs`` (what it is built
    with), ``dataset``, ``classes`` (the CIFAR-10 class indices of the head, in order),
    ``sha1``, ``size_bytes``, ``val_top1``, ``val_set``, ``command``, ``cpu`` and ``date``."""
    import json
    path = manifest or MANIFEST_PATH
    try:
        with open(path) as f:
            return json.load(f).get('networks', [])
    except (OSError, ValueError) as err:
        raise CheckpointError('cannot read the published-params manifest %s: %s' % (path, err)) from None


def project_network(name, manifest=None):
    """The manifest entry of the shipped network ``name`` (its file is not read), or None."""
    return next((e for e in project_networks(manifest) if e['name'] == name), None)


def resolve_project_network(name, manifest=None):
    """``(entry, path)`` of the shipped network ``name``, its file checked against the
    manifest's SHA-1 (a changed, truncated or corrupt file is refused by name); ``(None,
    None)`` when ``name`` is not one of them."""
    path = manifest or MANIFEST_PATH
    entry = project_network(name, path)
    if entry is None:
        return None, None
    fpath = os.path.join(os.path.dirname(os.path.abspath(path)), *entry['file'].split('/'))
    if not os.path.isfile(fpath):
        raise CheckpointError('published network %r: %s is missing (a partial checkout?)' % (name, fpath))
    digest = file_sha1(fpath)
    if digest != entry['sha1']:
        raise CheckpointError('published network %r: %s has SHA-1 %s, the manifest says %s (corrupt or replaced '
                              'file)' % (name, fpath, digest, entry['sha1']))
    return entry, fpath


def published_params(manifest=None):
    """The manifest's entries (list of dicts: file, model, kwargs, fusion, dataset, labels, dtype,
    size_bytes, size_mb, reported, ...)."""
    import json
    path = manifest or MANIFEST_PATH
    try:
        with open(path) as f:
            return json.load(f)['files']
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError('cannot read the published-params manifest %s: %s' % (path, err)) from None


def resolve_pretrained(name, kwargs, manifest=None):
    """Path of the local copy of the published params for model ``name`` (never downloads).

    ``kwargs`` are the options the model will be built with. A ``labels`` key ('fine' or
    'coarse', for the CIFAR-100 files) selects between files and is *removed* from ``kwargs``
    because it is not a model option; without it the fine-label file is used, and a model
    whose only file is coarse-label needs ``labels='coarse'`` explicitly (those files were
    trained on the 20 superclasses with a 100-way head, a known property of those files). Options the file
    fixes (``classes``, ``start_layer``) must not contradict it.

    The file is looked up as ``<root>/<file>`` (the open-aff ``params/`` sub-path, e.g.
    ``imagenet/AFF-ResNet-50/0.2028-...params``) or ``<root>/<basename>`` for every root of
    :func:`params_roots`.

    Raises ConfigError (no published file for this name/labels/options) or CheckpointError
    (file absent -- the message says which file to put where -- or shorter than published).
    """
    from .errors import ConfigError
    entries = [e for e in published_params(manifest) if e['model'] == name]
    if not entries:
        known = sorted({e['model'] for e in published_params(manifest)})
        raise ConfigError('no published params for %r; published: %s (or pass params=FILE)' % (name, ', '.join(known)))
    labels = kwargs.pop('labels', None)
    if labels is not None:
        chosen = [e for e in entries if e['labels'] == labels]
        if not chosen:
            raise ConfigError('%r has no published params with labels=%r; available: %s'
                              % (name, labels, ', '.join(sorted(e['labels'] for e in entries))))
    else:
        chosen = [e for e in entries if e['labels'] in ('fine', 'imagenet1k')]
        if not chosen:
            raise ConfigError('%r has only %s-label params published (trained on the 20 CIFAR-100 superclasses); '
                              'pass labels=%r to use them' % (name, entries[0]['labels'], entries[0]['labels']))
    entry = chosen[0]
    for key, value in entry['kwargs'].items():
        if key in kwargs and kwargs[key] != value:
            raise ConfigError('published params %s need %s=%r; got %s=%r'
                              % (os.path.basename(entry['file']), key, value, key, kwargs[key]))
    tried = []
    for root in params_roots():
        for cand in (os.path.join(root, *entry['file'].split('/')), os.path.join(root, os.path.basename(entry['file']))):
            tried.append(cand)
            if os.path.isfile(cand):
                size = os.path.getsize(cand)
                if size < entry['size_bytes']:
                    raise CheckpointError('%s has %d bytes but the published file has %d: incomplete copy?'
                                          % (cand, size, entry['size_bytes']))
                return cand
    raise CheckpointError('pretrained %r needs %s (%.1f MB, open-aff params/%s); nothing is downloaded: put it at %s '
                          '(or set $%s to a folder mirroring open-aff params/), or pass params=FILE'
                          % (name, os.path.basename(entry['file']), entry['size_mb'], entry['file'], tried[0],
                             PARAMS_ENV))
