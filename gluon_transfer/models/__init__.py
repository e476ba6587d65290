"""Networks; importing this package registers every model name in MODELS."""
from . import cifar_aff, imagenet_aff  # noqa: F401,E402
from . import wrn  # noqa: F401
from . import afs_resnet  # noqa: F401
from . import inception_v4  # noqa: F401
