"""Losses and regularizers; each module registers its public terms (math in each module's
docstring). AFA's regularizers are ``afa-ast`` and ``afa-act`` in ``REGULARIZERS``."""
from .afa import (SpatialAttention, ChannelAttention, afa_ast_loss, afa_act_loss,  # noqa: F401
                  afa_ast_per_sample, afa_act_per_sample, AFASpatial, AFAChannel)
