"""Datasets and loaders of a run: the digits, ImageFolders (folders or tar files), transfer sets, samplers,
sharded validation.

Training batches come from a repeated-augmentation or plain distributed sampler; validation is
sharded without padding (rank r takes images r, r + world, ...), so that summing per-rank counts
gives each image exactly once. ``cfg`` is a run's settings (``convit.training.Config`` or any object
with the same fields).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from .cluttered import cluttered_datasets
from .digits import DIGITS_CLASSES, DigitsDataset, digits_split, digits_subset
from .factory import RankStride, is_iterable, is_timm_source, read_class_map, timm_datasets
from .folders import DataError, class_balanced_subset, image_folder
from .tars import TarImageFolder, tar_split
from .transfer import transfer_datasets
from .transforms import imagenet_transforms


def input_channels(cfg) -> int:
    """The number of image channels the run's model takes (its ``in_chans``, 3 unless the recipe says)."""
    return int(cfg.model_kwargs.get("in_chans", 3))


def build_datasets(cfg, need_train: bool = True):
    """(train dataset or None, val dataset, class names) for ``cfg.data``."""
    in_chans = input_channels(cfg)
    if cfg.data == "cluttered":
        train, val, class_names = cluttered_datasets(cfg.img_size, in_chans, need_train)
    elif cfg.data == "digits":
        (Xtr, ytr), (Xva, yva) = digits_split()
        class_names = DIGITS_CLASSES
        if cfg.digits_classes is not None:
            (Xtr, ytr), (Xva, yva) = (digits_subset(X, y, cfg.digits_classes) for X, y in ((Xtr, ytr), (Xva, yva)))
            class_names = [DIGITS_CLASSES[d] for d in cfg.digits_classes]
        val = DigitsDataset(Xva, yva, cfg.img_size, in_chans, train=False)
        train = DigitsDataset(Xtr, ytr, cfg.img_size, in_chans, train=True) if need_train else None
    else:
        if in_chans != 3:
            raise DataError(
                f"ImageFolder images are RGB (3 channels) but the model takes in_chans={in_chans}; "
                "use a recipe for RGB data (e.g. --config in1k) or --in-chans 3"
            )
    if is_timm_source(cfg.data):
        train, val, class_names = timm_datasets(cfg, need_train)
    elif cfg.data not in ("digits", "imagefolder", "cluttered"):
        train, val, class_names = transfer_datasets(cfg, need_train)
    elif cfg.data == "imagefolder":
        if not os.path.exists(cfg.data_path):
            raise DataError(
                f"data folder '{cfg.data_path}' not found; pass --data-path DIR with train/ and val/ ImageFolders "
                "(or train.tar and val.tar), or a .tar of such a folder"
            )
        class_map = read_class_map(cfg.class_map) if cfg.class_map else None
        val = folder_split(cfg, "val", False, class_map)
        train = folder_split(cfg, "train", True, class_map) if need_train else None
        class_names = list(val.classes)
        if train is not None and list(train.classes) != list(val.classes):
            raise DataError(f"train and val of '{cfg.data_path}' have different class folders")
    if train is not None and cfg.sampling_ratio < 1.0:
        if is_iterable(train):
            raise DataError(f"sampling_ratio < 1 needs indexed data; {cfg.data} is a stream of shards")
        targets = train.targets
        train = Subset(train, class_balanced_subset(targets, cfg.sampling_ratio, cfg.seed))
        train.targets = [targets[i] for i in train.indices]
    return train, val, class_names


def folder_split(cfg, split: str, train: bool, class_map):
    """``split`` of an ImageFolder ``--data-path``: a folder, or packed in a tar (``split.tar``, or a .tar root)."""
    transform = imagenet_transforms(cfg, train=train)
    packed = tar_split(cfg.data_path, split)
    if packed is not None:
        return TarImageFolder(*packed, transform, class_map)
    if class_map:
        raise DataError(
            f"--class-map orders the classes of tar files and timm datasets; '{cfg.data_path}' holds {split}/ "
            "as a folder, whose classes are its sorted sub-folders: drop --class-map"
        )
    return image_folder(cfg.data_path, split, transform)


def train_sampler(dataset, cfg, rank: int, world_size: int):
    """Repeated-augmentation or plain shuffling sampler; either is seeded by `set_epoch`.

    timm's RepeatAugSampler with selected_round=0 keeps the whole epoch (ceil(len / world) images
    per rank); its default rounds each epoch down to a multiple of 256 images.
    """
    if cfg.repeated_aug:
        from timm.data.distributed_sampler import RepeatAugSampler

        return RepeatAugSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=cfg.num_repeats, selected_round=0
        )
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed)


class EpochSeededSampler(Sampler):
    """A training sampler whose items are ``(seed, index)``: the seed depends on (run seed, epoch, rank, index).

    With persistent loader workers (built once, kept across epochs) a worker's random state runs on from
    epoch to epoch; keyed by these seeds, each image's augmentation depends only on the run's seed, the
    epoch and the image, so a resumed run replays an epoch exactly, whatever the number of workers.
    """

    def __init__(self, sampler, seed: int, rank: int):
        self.sampler, self.seed, self.rank, self.epoch = sampler, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch * 7_919 + self.rank) * 2_147_483_647
        for position, index in enumerate(self.sampler):
            yield (base + position) % 2**63, index


class EpochSeeded(Dataset):
    """``dataset[index]`` with Python's, NumPy's and torch's random state seeded first from an
    ``EpochSeededSampler`` item ``(seed, index)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # targets, classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item):
        seed, index = item
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return self.dataset[index]


def shard(dataset, rank: int, world_size: int):
    """Images rank, rank + world_size, ...: every image on exactly one rank, no padding (streams too)."""
    if is_iterable(dataset):
        return RankStride(dataset, rank, world_size)
    return Subset(dataset, range(rank, len(dataset), world_size))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Seed the epoch's order: the sampler's, or a stream's shard shuffle."""
    target = loader.dataset if is_iterable(loader.dataset) else loader.sampler
    target.set_epoch(epoch)


def first_images(dataset, count: int) -> list:
    """The first ``count`` (image, label) pairs of an indexed dataset or a stream (fewer if it is shorter)."""
    if is_iterable(dataset):
        items = []
        for item in dataset:
            if len(items) == count:
                break
            items.append(item)
        return items
    return [dataset[i] for i in range(min(count, len(dataset)))]


@dataclass
class Loaders:
    train: DataLoader | None
    val: DataLoader
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def build_loaders(
    cfg, rank: int = 0, world_size: int = 1, need_train: bool = True, pin_memory: bool = False
) -> Loaders:
    """Train loader (sampled, whole batches only) and sharded val loader for this rank.

    Built once per run: with loader workers, they persist across epochs (as timm's do), so that no
    epoch pays for starting processes; the training images are then seeded per epoch and image
    (``EpochSeededSampler``).
    """
    train, val, class_names = build_datasets(cfg, need_train)
    workers = cfg.num_workers > 0
    common = dict(num_workers=cfg.num_workers, pin_memory=pin_memory, persistent_workers=workers)
    train_loader = None
    if train is not None and is_iterable(train):  # shards: split by rank and worker, shuffled per epoch by timm
        train_loader = DataLoader(train, batch_size=cfg.batch_size, drop_last=True, **common)
    elif train is not None:
        sampler = train_sampler(train, cfg, rank, world_size)
        n_per_rank = len(sampler)
        if n_per_rank < cfg.batch_size:
            raise DataError(
                f"only {n_per_rank} training images per process, fewer than --batch-size "
                f"{cfg.batch_size}; lower the batch size"
            )
        if workers:
            train, sampler = EpochSeeded(train), EpochSeededSampler(sampler, cfg.seed, rank)
        train_loader = DataLoader(train, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(shard(val, rank, world_size), batch_size=cfg.batch_size, shuffle=False, **common)
    return Loaders(train_loader, val_loader, class_names)
