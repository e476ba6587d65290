"""One data layer for ImageNet, CIFAR and the transfer sets.

* :func:`build_data` (``datasets``): train/val iterators from a preset + data dir;
* :class:`RecordIter`, :func:`inspect_recordio` (``recordio``): checked RecordIO reading;
* :func:`pack` (``pack``): folder or ``.lst`` -> ``.rec/.idx/.lst``;
* :func:`mixup_batch`, :func:`smooth_labels`, :class:`MixupSchedule` (``mixup``);
* :class:`Batch`, :class:`ArrayIter`, :func:`shard_indices` (``base``): the iterator contract;
* :class:`RandAugment`, :class:`RandomErasing`, :class:`ErasingIter` (``augment``);
* :class:`PyRecordIter` (``pyrecord``): Python-decoded RecordIO batches (for RandAugment);
* :data:`PREPARERS`, :func:`read_split` (``transfer_sets``): readers of the official
  layouts of the fine-grained transfer sets (``tools/prepare_dataset.py``).
"""
from .base import Batch, ArrayIter, shard_indices
from .recordio import RecordIter, RecordInfo, inspect_recordio, verify_decode, find_bad_record
from .datasets import (Preset, PRESETS, get_preset, DataBundle, build_data, record_iter_kwargs,
                       TRANSFER_DATASETS, class_balanced_subset, subset_count, subset_recordio)
from .mixup import mixup_batch, smooth_labels, MixupSchedule
from .pack import pack, PackReport, CorruptImagesError, list_image_folder, read_lst, read_classes
from .cifar import read_cifar_binary, pad_crop_flip
from .augment import RandAugment, RandomErasing, ErasingIter, parse_randaugment
from .pyrecord import PyRecordIter
from .transfer_sets import PREPARERS, SplitSpec, read_split

__all__ = ['Batch', 'ArrayIter', 'shard_indices', 'RecordIter', 'RecordInfo', 'inspect_recordio',
           'verify_decode', 'find_bad_record', 'Preset', 'PRESETS', 'get_preset', 'DataBundle',
           'build_data', 'record_iter_kwargs', 'mixup_batch', 'smooth_labels', 'MixupSchedule',
           'pack', 'PackReport', 'CorruptImagesError', 'list_image_folder', 'read_lst', 'read_classes',
           'read_cifar_binary', 'pad_crop_flip', 'TRANSFER_DATASETS', 'class_balanced_subset',
           'subset_count', 'subset_recordio', 'RandAugment', 'RandomErasing', 'ErasingIter',
           'parse_randaugment', 'PyRecordIter', 'PREPARERS', 'SplitSpec', 'read_split']
