"""Command-line options recorded when given.

A flag added with :func:`add_option` (or through an :class:`OwnedGroup`) stores
``{dest: (flag as typed, owner)}`` in ``args.given_options`` when argparse meets it on the
command line: a default never counts, an explicit value equal to the default does. Code
that only holds the parsed namespace (a method resolving its options, a driver refusing
an option that does not apply) can then tell given options from defaults and name them as
the user typed them (``--beta`` or ``--at-beta``). Giving one option under two of its
spellings (``--at-beta 1 --beta 2``) is an argparse error (exit status 2) instead of the
last one silently winning.

(The same could be had by parsing the command line a second time with every default set to
``argparse.SUPPRESS``, as ``cli.parse_args`` does for ``--demo``; recording while parsing
also works for a namespace handed on without its command line, records the spelling, and
sees duplicates.)
"""
import argparse

__all__ = ['add_option', 'record_option', 'OwnedGroup', 'given', 'given_flags', 'float_list', 'name_list', 'GIVEN']

GIVEN = 'given_options'


def float_list(text):
    """argparse type: ``'0.1,0.01'`` -> ``(0.1, 0.01)``."""
    try:
        return tuple(float(t) for t in str(text).split(',') if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated numbers, got %r' % text) from None


def name_list(text):
    """argparse type: ``'a, b'`` -> ``('a', 'b')``."""
    return tuple(t.strip() for t in str(text).split(',') if t.strip())


_RECORDING = {}


def _recording(cls):
    """``cls`` (an argparse Action class) that also records its dest, the flag as typed and
    the action's ``owner`` in ``namespace.given_options``."""
    if cls not in _RECORDING:
        def __call__(self, parser, namespace, values, option_string=None):
            seen = dict(getattr(namespace, GIVEN, None) or {})
            prev = seen.get(self.dest)
            if prev is not None and prev[0] != option_string:
                raise argparse.ArgumentError(self, 'given twice, as %s and %s (two spellings of one option)'
                                             % (prev[0], option_string))
            cls.__call__(self, parser, namespace, values, option_string)
            seen[self.dest] = (option_string, self.owner)
            setattr(namespace, GIVEN, seen)
        _RECORDING[cls] = type('Recorded' + cls.__name__.lstrip('_'), (cls,), {'__call__': __call__})
    return _RECORDING[cls]


def add_option(group, owner, *flags, **kwargs):
    """``group.add_argument(*flags, **kwargs)`` whose use is recorded (module docstring);
    ``owner`` names what the option belongs to (a method name, or a tag)."""
    if kwargs.get('default') is None and kwargs.get('help'):
        # the help text states the default that applies; keep argparse from adding "(default: None)"
        kwargs['help'] += '%(default).0s'
    action = group.add_argument(*flags, **kwargs)
    action.__class__ = _recording(type(action))
    action.owner = owner
    return action


def record_option(action, owner):
    """Make an existing argparse ``action`` recorded (module docstring) under ``owner``."""
    action.__class__ = _recording(type(action))
    action.owner = owner
    return action


class OwnedGroup:
    """An argparse group whose ``add_argument`` records its options under ``owner``."""

    def __init__(self, group, owner):
        self.group, self.owner = group, owner

    def add_argument(self, *flags, **kwargs):
        return add_option(self.group, self.owner, *flags, **kwargs)


def given(args):
    """``{dest: (flag as typed, owner)}`` of the recorded options given on the command line."""
    return dict(getattr(args, GIVEN, None) or {})


def given_flags(args, dests):
    """The flags (as typed) of those ``dests`` that were given, in the order of ``dests``."""
    g = given(args)
    return [g[d][0] for d in dests if d in g]
