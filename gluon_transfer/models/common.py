"""Pieces shared by our networks: the feature-tap API and preset factories.

Feature taps (our models own their features, see docs/architecture.md): a network built with
``features=('stage2', 'stage3')`` returns ``(logits, [stage2_map, stage3_map])`` from
``hybrid_forward`` (in the requested order); with ``features=()`` it returns ``logits``.
Taps are resolved once at construction, so hybridize/export see a fixed graph.
"""
import functools

from ..errors import ConfigError
from ..registry import MODELS

__all__ = ['TapMixin', 'register_preset', 'rebuild_without_taps']


class TapMixin:
    """Mixin for a HybridBlock with ``feature_info`` and ``features=()`` taps.

    Subclasses call ``self._init_taps(features, feature_info, config)`` in ``__init__``
    (``config`` = the constructor kwargs, kept so :func:`rebuild_without_taps` can build a
    tap-free twin for export) and finish ``hybrid_forward`` with ``self._tap_output``.
    """

    def _init_taps(self, features, feature_info, config):
        if features is None:
            features = ()
        if isinstance(features, str):
            features = (features,)
        features = tuple(features)
        valid = [f['name'] for f in feature_info]
        for name in features:
            if name not in valid:
                raise ConfigError('%s has no feature %r; valid: %s'
                                  % (type(self).__name__, name, ', '.join(valid)))
        self.feature_info = [dict(f) for f in feature_info]
        self.features_requested = features
        self._tap_set = frozenset(features)
        self._config = dict(config, features=features)

    def _want(self, name):
        return name in self._tap_set

    def _tap_output(self, logits, taps):
        if not self.features_requested:
            return logits
        return logits, [taps[name] for name in self.features_requested]

    def _forward_features(self, x):
        """Run ``self.features`` in order, then ``self.output``; collect the requested taps
        at the children named in ``self._stage_index`` (position -> tap name)."""
        taps = {}
        for i in range(len(self.features)):
            x = self.features[i](x)
            name = self._stage_index.get(i)
            if name is not None and self._want(name):
                taps[name] = x
        return self._tap_output(self.output(x), taps)


def rebuild_without_taps(net):
    """A twin of ``net`` built with ``features=()`` and sharing no parameters, holding a copy
    of every array (for exporting the student alone). Networks without taps are returned as is."""
    config = getattr(net, '_config', None)
    if config is None or not config.get('features'):
        return net
    twin = type(net)(**dict(config, features=()))
    src = net._collect_params_with_prefix()
    dst = twin._collect_params_with_prefix()
    if set(src) != set(dst):
        raise ConfigError('cannot rebuild %s without taps: parameter keys differ' % type(net).__name__)
    for key, param in dst.items():
        data = src[key].data()
        param.cast(data.dtype)
        param.initialize(ctx=data.context, force_reinit=True)
        param.set_data(data.copy())
    return twin


def register_preset(name, factory, doc, defaults=None, **fixed):
    """Register ``name`` = ``factory(**defaults, **fixed, **kwargs)``; kwargs may override
    ``defaults`` (e.g. ``classes``) but not contradict ``fixed`` (e.g. ``fusion='add'`` for
    ``aff_resnet50`` is a ConfigError: use the generic name)."""
    defaults = dict(defaults or {})
    generic = factory.__name__

    def preset(**kwargs):
        for key, value in fixed.items():
            given = kwargs.get(key, value)
            if key == 'fusion':
                from ..nn.fusion import canonical_fusion
                given = canonical_fusion(given)
            if given != value:
                raise ConfigError('%s fixes %s=%r; use %s(%s=...) for other values'
                                  % (name, key, value, generic, key))
        return factory(**dict(defaults, **dict(fixed, **kwargs)))

    functools.update_wrapper(preset, factory, assigned=('__module__',))
    preset.__name__ = name
    preset.__qualname__ = name
    preset.__doc__ = '%s: ``%s(%s)``.' % (doc, generic, ', '.join(
        '%s=%r' % kv for kv in sorted(dict(defaults, **fixed).items())))
    preset.preset_of = (generic, dict(fixed), defaults)
    MODELS.register(name, obj=preset)
    return preset
