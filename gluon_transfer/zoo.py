"""``get_model`` / ``list_models``: our registered networks first, then GluonCV's zoo."""
import warnings

from .errors import ConfigError
from .registry import MODELS, unknown_name_message

__all__ = ['get_model', 'list_models', 'gluoncv_model_names']


def _register_builtin():
    from . import models  # noqa: F401  (importing registers every network)


def gluoncv_model_names():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        from gluoncv.model_zoo import get_model_list
    return list(get_model_list())


def list_models(include_gluoncv=True):
    """Sorted names accepted by :func:`get_model` and every script's ``--model``."""
    _register_builtin()
    names = set(MODELS.names())
    if include_gluoncv:
        names.update(gluoncv_model_names())
    return sorted(names)


def _shipped_kwargs(name, entry, kwargs):
    """A shipped network's options with ``kwargs`` added; its architecture and head are fixed,
    so a different value of one of its own options is refused."""
    for key, value in kwargs.items():
        if key in entry['kwargs'] and entry['kwargs'][key] != value:
            raise ConfigError('published network %r has %s=%r; got %s=%r'
                              % (name, key, entry['kwargs'][key], key, value))
    return dict(entry['kwargs'], **kwargs)


def get_model(name, pretrained=False, params=None, ctx=None, **kwargs):
    """Build a network by name.

    Registered gluon_transfer models take precedence; any other name goes to
    ``gluoncv.model_zoo.get_model``. ``params=FILE`` loads a local ``.params`` file with
    key/shape checks (:func:`gluon_transfer.weights.load_params`). ``pretrained=True``
    never downloads: the networks this project ships (``params/manifest.json``, list
    ``networks``: e.g. ``cifar5_resnet20_v1``) load from ``params/`` after a SHA-1 check;
    registered models look their file up in the published-params manifest, GluonCV models
    need the exact zoo file already in ``$MXNET_HOME/models``.
    The name of a shipped network without ``pretrained`` builds its architecture (model and
    options from the manifest, so ``tools/evaluate.py --model cifar10_aff_resnet20 --params
    FILE`` needs no model options), with ``params=FILE`` loaded if given.
    Unknown names raise :class:`ConfigError` listing close matches.
    """
    _register_builtin()
    if pretrained:
        from .weights import resolve_project_network
        entry, path = resolve_project_network(name)
        if entry is not None:
            return get_model(entry['model'], params=params or path, ctx=ctx, **_shipped_kwargs(name, entry, kwargs))
    elif name not in MODELS:
        from .weights import project_network
        entry = project_network(name)
        if entry is not None:
            return get_model(entry['model'], params=params, ctx=ctx, **_shipped_kwargs(name, entry, kwargs))
    if name in MODELS:
        factory = MODELS.get(name)
        if pretrained:
            from . import weights
            if not hasattr(weights, 'resolve_pretrained'):
                raise ConfigError('no published params are known for %r; pass params=FILE' % name)
            params = params or weights.resolve_pretrained(name, kwargs)
        net = factory(**kwargs)
    else:
        gcv = gluoncv_model_names()
        if name not in gcv:
            raise ConfigError(unknown_name_message('model', name, set(gcv) | set(MODELS.names())))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            from gluoncv.model_zoo import get_model as gcv_get_model
        if pretrained:
            net = _gluoncv_pretrained(gcv_get_model, name, ctx, kwargs)
        else:
            try:
                net = gcv_get_model(name, pretrained=False, **kwargs)
            except TypeError as err:
                raise ConfigError('GluonCV model %r does not accept these options: %s' % (name, err)) from None
    if params is not None:
        from .weights import load_params
        import mxnet as mx
        net.initialize(ctx=ctx or mx.cpu())
        load_params(net, params, ctx=ctx)
    return net


def _gluoncv_pretrained(gcv_get_model, name, ctx, kwargs):
    """GluonCV's pretrained path without network access: only a pre-placed, hash-matching
    zoo file works; anything else is a one-line error instead of a download attempt."""
    import os
    import mxnet as mx
    from gluoncv.model_zoo.model_store import short_hash, _model_sha1
    root = os.path.join(os.environ.get('MXNET_HOME', os.path.join(os.path.expanduser('~'), '.mxnet')), 'models')
    if name not in _model_sha1:
        raise ConfigError('GluonCV publishes no pretrained weights for %r' % name)
    fname = os.path.join(root, '%s-%s.params' % (name, short_hash(name)))
    if not os.path.isfile(fname):
        raise ConfigError('pretrained %r needs %s (nothing is downloaded); place the GluonCV file there '
                          'or pass --params FILE' % (name, fname))
    return gcv_get_model(name, pretrained=True, root=root, ctx=ctx or mx.cpu(), **kwargs)
