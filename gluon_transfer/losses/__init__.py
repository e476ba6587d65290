"""Losses and regularizers; each module registers its public terms (math in each module's
docstring)."""
from . import afd  # noqa: F401
