"""Exceptions that carry a one-line, user-facing message.

Scripts catch :class:`GluonTransferError` at the top level, print ``error: <message>``
on stderr and exit with status 2, so a user never sees a traceback for bad input.
Anything else is a bug and keeps its traceback.
"""


class GluonTransferError(Exception):
    """Base class: the message names the problem (file, key, value) in one line."""


class DataError(GluonTransferError):
    """Missing, unreadable, corrupt or inconsistent data files."""


class ConfigError(GluonTransferError):
    """Bad option values or combinations (unknown names, impossible settings)."""


class CheckpointError(GluonTransferError):
    """A parameter or checkpoint file that does not fit the model."""


class TrainingDiverged(GluonTransferError):
    """The loss became NaN or infinite."""
