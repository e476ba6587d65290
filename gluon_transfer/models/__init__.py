"""Networks; importing this package registers every model name in MODELS."""
from . import afs_resnet, cifar_aff, imagenet_aff  # noqa: F401,E402
