"""Networks; importing this package registers every model name in MODELS."""
