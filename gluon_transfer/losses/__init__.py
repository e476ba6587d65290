"""Losses and regularizers; each module registers its public losses in ``LOSSES`` (math in
each module's docstring)."""
from .at import attention_map, at_loss, grad_at_param_grads, input_gradient  # noqa: F401
from .kd import kd_loss, kd_per_sample, kl_per_sample  # noqa: F401
