"""AFDS (attentive feature distillation and selection, Wang et al., ICLR 2020), the
selection half: gate statistics on a held-out split of the TRAINING data, the threshold /
MACs-budget choice of the masks ``m`` and ``s``, the two-phase schedule and the per-run
report. One module per step: :mod:`.statistics` (1-2), :mod:`.selection` (3-4),
:mod:`.schedule`, :mod:`.report`; every public name is importable from this package. The
distillation half is the ``afd`` regularizer (:mod:`gluon_transfer.losses.afd`); the
``train_transfer.py`` plug-in that runs both is :mod:`gluon_transfer.methods.afds`.

Procedure (the paper's; the reproduction's ``update_afs`` fixed):

1. **Held-out training split.** :func:`split_train_holdout` takes a seeded class-balanced
   fraction of the training RecordIO (:func:`~gluon_transfer.data.datasets.class_balanced_subset`)
   as a :class:`TrainHoldout` and writes the rest as the training set; the statistics
   functions accept only a :class:`TrainHoldout` (the reproduction ran them on the test
   loader). :meth:`TrainHoldout.from_arrays` does the same for in-memory data.
2. **Statistics** (:func:`collect_gate_statistics`): with every mask temporarily 1, in
   inference mode, for every gate and channel ``c`` over the held-out samples ``x``::

       pi_c(x) = WTA_d( relu(W GAP(conv input) + b) )_c        (the gate value, before m)
       mean_c  = E_x[pi_c(x)]            var_c = E_x[pi_c(x)^2] - mean_c^2   (population)

   (The reproduction averaged per batch and took the variance over batch means; we use
   samples, which is what "varies across inputs" means for a per-sample gate.) Also
   ``act_c = E_x[mean_hw relu(pi_c(x) y_c(x))]`` (``|.|`` instead of ``relu`` after a block's
   last ConvBN, whose output goes to the residual add): the gated activation the next layer receives,
   the ranking of ``mask_stat='activation'``. Why offer it: the gates start at the
   identity (value 1) and at the network's learning rate move by about 1 % in phase 1
   (``train_transfer.py`` trains them at 10x, docs/afds.md), so ``pi`` can rank channels by
   near-ties; ``act`` ranks them by what pruning removes. ``h_mean``, the mean gate value
   before WTA, measures how far the gates moved (``afds_gate_stats.json``).
3. **Selection** (:func:`select_masks`): thresholds relative to the layer,
   ``m_c = [mean_c > thres_m * mean_l(mean)]``, ``s_c = m_c [var_c > thres_s * mean_l(var)]``
   (``mean_l``: the average over the layer's channels; defaults 0.5 / 0.5: a channel whose
   mean gate value is under half its layer's average is pruned, one whose gate varies less
   than half as much as the layer's average becomes static; ``thres_scale='absolute'``
   compares with the numbers themselves, as the reproduction did), or a **MACs budget**: for a shared quantile ``q`` the ``floor(q C)`` channels with the
   smallest means get ``m = 0`` and the ``floor(q C)`` with the smallest variances get
   ``s = 0`` (per layer with ``scope='layer'``, over all gated channels with
   ``scope='global'``; ties toward the lower index); ``q`` is found by bisection so that
   the expected MACs (:func:`gluon_transfer.macs.afs_macs`) are at most
   ``macs_budget * baseline`` (``0.1`` = a 10x reduction). Every gated conv keeps at least
   ``min_channels`` (1) channel with ``m = 1`` (the largest means). The MACs are not
   exactly monotone in ``q`` (a channel turning static raises ``ceil(d n)``), so the
   bisection returns *a* ``q`` meeting the budget, not always the smallest one; the
   achieved MACs are reported. ``channel_multiple`` rounds the kept counts after conv1
   and conv2 (the widths the pruned export really has) up to a multiple (CLI default 16,
   oneDNN's channel block) inside the search; ``static_only`` sets ``s = 0`` for every
   kept channel (no runtime gates in the export).
4. **Apply** (:func:`apply_masks`): write ``m``, ``s``; a channel turning static gets
   ``gamma_c = mean_c`` (``gamma_from_mean``) so its multiplier starts at its average gate
   value; ``gamma`` keeps training in phase 2. The random-mask control
   (:func:`random_masks`, ``update_masks(random=True)``) applies, instead of the chosen
   masks, masks with the same numbers of kept and dynamic channels per layer at random
   positions: the same MACs, no selection.

:func:`afds_schedule` drives phase 1 (fine-tune, gates on, masks 1), the mask update and
phase 2 (fine-tune with the masks fixed) through one :class:`~gluon_transfer.engine.Engine`
(same trainer, momentum and LR schedule, as the reproduction's ``train.py``).
"""
from .statistics import TrainHoldout, collect_gate_statistics, current_masks, split_train_holdout  # noqa: F401
from .selection import (MASK_STATS, THRES_SCALES, apply_masks, random_masks, removable, select_masks,  # noqa: F401
                        selection_summary)
from .schedule import afds_schedule, update_masks  # noqa: F401
from .report import (afds_report, format_afds_report, recorded_gate_options, recorded_phase,  # noqa: F401
                     write_afds_files)

__all__ = ['TrainHoldout', 'split_train_holdout', 'collect_gate_statistics', 'current_masks', 'select_masks',
           'random_masks', 'THRES_SCALES', 'apply_masks', 'update_masks', 'removable', 'selection_summary', 'afds_schedule', 'afds_report',
           'format_afds_report', 'write_afds_files', 'recorded_gate_options', 'recorded_phase', 'MASK_STATS']
