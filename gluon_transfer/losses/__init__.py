"""Losses and regularizers; each module registers its public losses in ``LOSSES`` (math in
each module's docstring). Transfer regularizers are in ``REGULARIZERS``.

This package imports only mxnet, numpy, the registry (and its errors) and its own
modules: what a loss needs from the engine or the data layer is passed in
(``tests/test_import_graph.py`` checks it)."""
from .ce import cross_entropy  # noqa: F401
from .at import (attention_map, at_loss, at_loss_from_maps, grad_at_param_grads,  # noqa: F401
                 input_gradient)
from .kd import kd_loss, kd_per_sample, kl_per_sample  # noqa: F401
from .l2sp import l2sp_penalty, L2, L2SP  # noqa: F401
from .feature_distance import feature_map_penalty, feature_map_per_sample, FeatureMap  # noqa: F401
from .delta import delta_channel_weights, delta_penalty, delta_per_sample, DELTA  # noqa: F401
from .taps import bottleneck_taps, stage_end_taps  # noqa: F401
from . import afd  # noqa: F401
from .afa import (SpatialAttention, ChannelAttention, afa_ast_loss, afa_act_loss,  # noqa: F401
                  afa_ast_per_sample, afa_act_per_sample, AFASpatial, AFAChannel)
