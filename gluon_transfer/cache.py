"""Where gluon_transfer keeps what it can rebuild: ``$GLUON_TRANSFER_CACHE``, by default
``~/.cache/gluon_transfer`` (the compiled fused AFF kernel, ``--train-fraction`` subsets of
RecordIO sets, the record of which large RecordIO files passed the decode check). Deleting
it loses nothing but time."""
import os

__all__ = ['cache_dir']


def cache_dir(*parts):
    """The cache directory (joined with ``parts``); not created here."""
    root = os.environ.get('GLUON_TRANSFER_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                                  'gluon_transfer')
    return os.path.join(root, *parts)
