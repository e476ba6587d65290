"""One small name -> factory registry, used for models, fusions, losses, regularizers,
datasets and fine-tuning methods. Unknown names raise :class:`~gluon_transfer.errors.ConfigError` listing
the closest registered names."""
import difflib

from .errors import ConfigError


class Registry:
    """A named dict of factories with a decorator for registration.

    >>> MODELS = Registry('model')
    >>> @MODELS.register('tiny')            # or @MODELS.register() to use __name__
    ... def tiny(**kw): ...
    >>> MODELS.get('tiny')
    """

    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name=None, obj=None):
        """Register ``obj`` under ``name``; used bare as ``@R.register()`` or ``@R.register('n')``."""
        def _add(o):
            key = name or o.__name__
            if key in self._items and self._items[key] is not o:
                raise ValueError('%s %r registered twice' % (self.kind, key))
            self._items[key] = o
            return o
        return _add(obj) if obj is not None else _add

    def __contains__(self, name):
        return name in self._items

    def __iter__(self):
        return iter(sorted(self._items))

    def __len__(self):
        return len(self._items)

    def names(self):
        return sorted(self._items)

    def get(self, name):
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, self._items)) from None

    def build(self, name, **kwargs):
        return self.get(name)(**kwargs)


def unknown_name_message(kind, name, choices, extra=''):
    """One line: ``unknown model 'resnt18'; did you mean: resnet18_v1, ...?``"""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=5, cutoff=0.5)
    if close:
        hint = 'did you mean: %s?' % ', '.join(close)
    elif len(choices) <= 12:
        hint = 'valid: %s' % ', '.join(choices)
    else:
        hint = '%d names are registered; list them with gluon_transfer.list_models()' % len(choices)
    return 'unknown %s %r; %s%s' % (kind, name, hint, extra)


MODELS = Registry('model')
FUSIONS = Registry('fusion')
LOSSES = Registry('loss')
REGULARIZERS = Registry('regularizer')
DATASETS = Registry('dataset')
METHODS = Registry('method')
