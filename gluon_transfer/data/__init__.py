"""One data layer for ImageNet, CIFAR and the transfer sets.

* :func:`build_data` (``datasets``): train/val iterators from a preset + data dir;
* :class:`RecordIter`, :func:`inspect_recordio` (``recordio``): checked RecordIO reading;
* :func:`pack` (``pack``): folder or ``.lst`` -> ``.rec/.idx/.lst``;
* :func:`mixup_batch`, :func:`smooth_labels`, :class:`MixupSchedule` (``mixup``);
* :class:`Batch`, :class:`ArrayIter`, :func:`shard_indices` (``base``): the iterator contract.
"""
from .base import Batch, ArrayIter, shard_indices
from .recordio import RecordIter, RecordInfo, inspect_recordio, verify_decode, find_bad_record
from .datasets import Preset, PRESETS, get_preset, DataBundle, build_data, record_iter_kwargs
from .mixup import mixup_batch, smooth_labels, MixupSchedule
from .pack import pack, PackReport, list_image_folder, read_lst, read_classes
from .cifar import read_cifar_binary, pad_crop_flip

__all__ = ['Batch', 'ArrayIter', 'shard_indices', 'RecordIter', 'RecordInfo', 'inspect_recordio',
           'verify_decode', 'find_bad_record', 'Preset', 'PRESETS', 'get_preset', 'DataBundle',
           'build_data', 'record_iter_kwargs', 'mixup_batch', 'smooth_labels', 'MixupSchedule',
           'pack', 'PackReport', 'list_image_folder', 'read_lst', 'read_classes',
           'read_cifar_binary', 'pad_crop_flip']
