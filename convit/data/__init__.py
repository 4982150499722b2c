"""Data for training and analysis: the scikit-learn digits, image folders, transfer datasets, loaders.

Built on the zoo alone (never on ``convit.training`` or ``convit.locality``), so both can use it.
"""

from .digits import DIGITS_CLASSES, DigitsDataset, digits_split, digits_subset
from .folders import DataError, UniqueImageFolder, class_balanced_subset, class_difference, image_folder, pil_rgb_loader
from .loaders import Loaders, build_datasets, build_loaders, input_channels, shard, train_sampler
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
    "image_folder",
    "imagenet_transforms",
    "input_channels",
    "pil_rgb_loader",
    "shard",
    "train_sampler",
    "transfer_datasets",
]
