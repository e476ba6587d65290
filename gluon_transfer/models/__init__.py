"""Networks; importing this package registers every model name in MODELS."""
from . import wrn  # noqa: F401
