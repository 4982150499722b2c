"""Data for training and analysis: the scikit-learn digits, image folders, transfer datasets, loaders.

Built on the zoo alone (never on ``convit.training`` or ``convit.locality``), so both can use it.
"""

from .digits import DIGITS_CLASSES, DigitsDataset, digits_split, digits_subset
from .factory import is_timm_source, read_class_map, source_problem
from .folders import DataError, UniqueImageFolder, class_balanced_subset, class_difference, image_folder, pil_rgb_loader
from .loaders import (
    Loaders,
    build_datasets,
    build_loaders,
    first_images,
    input_channels,
    set_epoch,
    shard,
    train_sampler,
)
from .transfer import EXPECTED, transfer_datasets
from .transforms import imagenet_transforms

__all__ = [
    "DIGITS_CLASSES",
    "EXPECTED",
    "DataError",
    "DigitsDataset",
    "Loaders",
    "UniqueImageFolder",
    "build_datasets",
    "build_loaders",
    "class_balanced_subset",
    "class_difference",
    "digits_split",
    "digits_subset",
    "first_images",
    "image_folder",
    "imagenet_transforms",
    "input_channels",
    "is_timm_source",
    "pil_rgb_loader",
    "read_class_map",
    "set_epoch",
    "shard",
    "source_problem",
    "train_sampler",
    "transfer_datasets",
]
