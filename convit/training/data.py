"""Datasets and loaders: ImageNet-style ImageFolders, the scikit-learn digits, class-balanced subsets.

Training batches come from a repeated-augmentation or plain distributed sampler; validation is
sharded without padding (rank r takes images r, r + world, ...), so that summing per-rank counts
gives each image exactly once.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision.datasets import ImageFolder

from ..errors import UserError
from .config import Config

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class DataError(UserError):
    """A data problem the user can fix (missing folder, unreadable image)."""


def pil_rgb_loader(path: str) -> Image.Image:
    """Open an image as RGB, or raise DataError naming the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}' ({type(e).__name__}); delete or replace the file") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"image '{path}' has more pixels than PIL opens safely ({Image.MAX_IMAGE_PIXELS} x 2, a decompression "
            "bomb?); delete the file, or shrink it if it is a real image"
        ) from None


class UniqueImageFolder(ImageFolder):
    """torchvision's ImageFolder, in which every image file counts once.

    Symbolic links are followed as in torchvision, but a folder reached twice (a link loop) is walked once
    and a file reached twice (a link, a hard link) is kept at its first place in sorted order.
    """

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        from torchvision.datasets.folder import has_file_allowed_extension

        def valid(path: str) -> bool:
            return is_valid_file(path) if is_valid_file is not None else has_file_allowed_extension(path, extensions)

        seen_dirs, seen_files, instances, found = set(), set(), [], set()
        for name in sorted(class_to_idx):
            for root, dirs, files in os.walk(os.path.join(directory, name), followlinks=True):
                key = _file_key(root)
                if key in seen_dirs:
                    dirs[:] = []
                    continue
                seen_dirs.add(key)
                dirs.sort()
                for fname in sorted(files):
                    path = os.path.join(root, fname)
                    key = _file_key(path)
                    if key is None or key in seen_files or not valid(path):
                        continue
                    seen_files.add(key)
                    instances.append((path, class_to_idx[name]))
                    found.add(name)
        empty = sorted(set(class_to_idx) - found)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return instances


def _file_key(path: str):
    """(device, inode) of what ``path`` leads to, or None for a dangling link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def image_folder(root: str, split: str, transform) -> ImageFolder:
    """`root/split` as a torchvision ImageFolder, with a clear error when it is missing or empty."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(
            f"data folder '{path}' not found; --data-path must hold train/ and val/ "
            "folders with one sub-folder of images per class"
        )
    try:
        return UniqueImageFolder(path, transform=transform, loader=pil_rgb_loader)
    except FileNotFoundError as e:  # no class folders, or no images in them
        raise DataError(f"no images under '{path}' ({e}); expected {path}/CLASS/IMAGE.jpg") from None


def class_balanced_subset(targets, ratio: float, seed: int) -> list[int]:
    """Indices keeping a seeded random `ratio` of each class (at least one image per class)."""
    targets = np.asarray(targets)
    if ratio >= 1.0:
        return list(range(len(targets)))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        n = max(1, int(round(ratio * len(idx))))
        keep.append(rng.permutation(idx)[:n])
    return sorted(np.concatenate(keep).tolist())


class DigitsDataset(Dataset):
    """The 8x8 scikit-learn digits, scaled to [-1, 1] and resized to `img_size`, one channel.

    Training images get a random shift of up to one original pixel.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, img_size: int, in_chans: int, train: bool):
        x = images.float().view(-1, 1, 8, 8) / 8.0 - 1.0
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.images = x.expand(-1, in_chans, -1, -1).contiguous()
        self.targets = targets.long().tolist()
        self.train = train
        self.shift = max(1, img_size // 8)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = self.images[i]
        if self.train:
            dx, dy = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, self.targets[i]


def digits_split():
    """The fixed, class-balanced train/val split of the digits: ((X, y) train, (X, y) val)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(
        X, y, test_size=DIGITS_VAL_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return (torch.from_numpy(Xtr), torch.from_numpy(ytr)), (torch.from_numpy(Xva), torch.from_numpy(yva))


def imagenet_transforms(cfg: Config, train: bool):
    """timm's training (RandAugment, random erasing, ...) or evaluation (resize, center crop) transform."""
    from timm.data import create_transform

    if train:
        return create_transform(
            cfg.img_size,
            is_training=True,
            scale=cfg.scale,
            ratio=cfg.ratio,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            auto_augment=cfg.aa or None,
            interpolation=cfg.interpolation,
            re_prob=cfg.reprob,
            re_mode=cfg.remode,
            re_count=cfg.recount,
        )
    return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)


DIGITS_CLASSES = [str(d) for d in range(10)]


def digits_subset(X: torch.Tensor, y: torch.Tensor, classes: list[int]):
    """The digits in ``classes``, relabelled 0..k-1 in the order given."""
    keep = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    relabel = {d: i for i, d in enumerate(classes)}
    return X[keep], torch.tensor([relabel[int(v)] for v in y[keep]], dtype=torch.long)


# What each transfer dataset expects under --data-path (torchvision's layouts, or the authors' for iNaturalist).
EXPECTED = {
    "cifar10": "cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta (CIFAR-10, python version)",
    "cifar100": "cifar-100-python/ with train, test and meta (CIFAR-100, python version)",
    "flowers102": "flowers-102/ with jpg/, imagelabels.mat and setid.mat (Oxford Flowers-102)",
    "stanford_cars": "stanford_cars/ with cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat",
    "inat2018": "train2018.json, val2018.json and the image folders they name (iNaturalist 2018, as DeiT reads it)",
    "inat2019": "train2019.json, val2019.json and the image folders they name (iNaturalist 2019, as DeiT reads it)",
}


class _ArrayUnpickler:
    """Unpickles CIFAR's python batches allowing only numpy arrays (a batch file carrying code is refused)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    @classmethod
    def load(cls, path: str):
        import importlib
        import pickle

        allowed = cls.ALLOWED

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in allowed:
                    raise DataError(f"'{path}' holds {module}.{name}, not only arrays; it will not be read")
                return getattr(importlib.import_module(module), name)

        try:
            with open(path, "rb") as f:
                return Restricted(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"'{path}' is not a CIFAR python batch ({type(e).__name__}: {e})") from None


class CIFARDataset(Dataset):
    """CIFAR-10/100 in torchvision's layout (the python-pickle batches), read from local files only.

    The file names come from torchvision's ``CIFAR10``/``CIFAR100``; the batches are read with an
    unpickler that allows numpy arrays alone, and without torchvision's md5 check (so that generated
    or re-packed batches in the same format load too).
    """

    def __init__(self, root: str, name: str, train: bool, transform):
        import torchvision.datasets as tvd

        ref = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        folder = os.path.join(root, ref.base_folder)
        files = [f for f, _ in (ref.train_list if train else ref.test_list)] + [ref.meta["filename"]]
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise DataError(f"{name}: '{folder}' lacks {', '.join(missing)}; expected {EXPECTED[name]}")
        data, targets = [], []
        for f in files[:-1]:
            entry = _ArrayUnpickler.load(os.path.join(folder, f))
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [int(t) for t in targets]
        self.classes = list(_ArrayUnpickler.load(os.path.join(folder, files[-1]))[ref.meta["key"]])
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


class INatDataset(Dataset):
    """iNaturalist 2018/2019 as the original authors (DeiT's ``INatDataset``) read it.

    ``root/{split}{year}.json`` in COCO form: ``images`` (``id``, ``file_name`` relative to root) and
    ``annotations`` (``image_id``, ``category_id``); classes are the training file's category ids, sorted.
    """

    def __init__(self, root: str, split: str, year: int, transform, classes: list[int] | None = None):
        import json

        path = os.path.join(root, f"{split}{year}.json")
        try:
            with open(path) as f:
                data = json.load(f)
            label = {a["image_id"]: a["category_id"] for a in data["annotations"]}
            files = [(os.path.join(root, im["file_name"]), label[im["id"]]) for im in data["images"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"cannot read iNaturalist annotations '{path}' ({type(e).__name__}); expected {EXPECTED[f'inat{year}']}"
            ) from None
        self.classes = classes if classes is not None else sorted({c for _, c in files})
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index[c]) for p, c in files if c in index]
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        img = pil_rgb_loader(path)
        return (self.transform(img) if self.transform else img), target


def transfer_datasets(cfg: Config, need_train: bool):
    """(train or None, val, class names) of a transfer dataset read from ``cfg.data_path``; never downloads."""
    import torchvision.datasets as tvd

    root, name = cfg.data_path, cfg.data
    if not os.path.isdir(root):
        raise DataError(f"{name}: folder '{root}' not found; --data-path must hold {EXPECTED[name]}")
    train_tf, val_tf = imagenet_transforms(cfg, train=True), imagenet_transforms(cfg, train=False)

    def make(split_train: bool):
        tf = train_tf if split_train else val_tf
        if name in ("cifar10", "cifar100"):
            return CIFARDataset(root, name, split_train, tf)
        if name == "flowers102":  # train split for training, test split for validation
            return tvd.Flowers102(root, split="train" if split_train else "test", transform=tf, download=False)
        if name == "stanford_cars":
            return tvd.StanfordCars(root, split="train" if split_train else "test", transform=tf, download=False)
        year = int(name[-4:])
        classes = None if split_train else make(True).classes
        return INatDataset(root, "train" if split_train else "val", year, tf, classes)

    try:
        val = make(False)
        train = make(True) if need_train else None
    except (RuntimeError, OSError, FileNotFoundError) as e:  # torchvision: "Dataset not found or corrupted"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(" You can use download")[0][:120]
        raise DataError(
            f"{name} not found or incomplete under '{root}' ({first}); expected {EXPECTED[name]}; nothing is downloaded"
        ) from None
    classes = getattr(val, "classes", None)
    if not classes:
        n = 1 + max(val._labels) if hasattr(val, "_labels") else len(set(val.targets))
        classes = [f"class_{i}" for i in range(n)]
    if train is not None and not hasattr(train, "targets"):
        train.targets = list(getattr(train, "_labels", None) or [t for _, t in train._samples])
    return train, val, [str(c) for c in classes]


def input_channels(cfg: Config) -> int:
    """The number of image channels the run's model takes (its ``in_chans``, 3 unless the recipe says)."""
    return int(cfg.model_kwargs.get("in_chans", 3))


def build_datasets(cfg: Config, need_train: bool = True):
    """(train dataset or None, val dataset, class names) for ``cfg.data``."""
    in_chans = input_channels(cfg)
    if cfg.data == "cluttered":  # hook: the cluttered digits (convit/data/cluttered.py)
        from ..data.cluttered import cluttered_datasets

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
    if cfg.data not in ("digits", "imagefolder", "cluttered"):
        train, val, class_names = transfer_datasets(cfg, need_train)
    elif cfg.data == "imagefolder":
        if not os.path.isdir(cfg.data_path):
            raise DataError(
                f"data folder '{cfg.data_path}' not found; pass --data-path DIR with train/ and val/ ImageFolders"
            )
        val = image_folder(cfg.data_path, "val", imagenet_transforms(cfg, train=False))
        train = image_folder(cfg.data_path, "train", imagenet_transforms(cfg, train=True)) if need_train else None
        class_names = list(val.classes)
        if train is not None and train.classes != val.classes:
            raise DataError(f"train/ and val/ under '{cfg.data_path}' have different class folders")
    if train is not None and cfg.sampling_ratio < 1.0:
        targets = train.targets
        train = Subset(train, class_balanced_subset(targets, cfg.sampling_ratio, cfg.seed))
        train.targets = [targets[i] for i in train.indices]
    return train, val, class_names


def train_sampler(dataset, cfg: Config, rank: int, world_size: int):
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


def shard(dataset, rank: int, world_size: int) -> Subset:
    """Images rank, rank + world_size, ...: every image on exactly one rank, no padding."""
    return Subset(dataset, range(rank, len(dataset), world_size))


@dataclass
class Loaders:
    train: DataLoader | None
    val: DataLoader
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def build_loaders(
    cfg: Config, rank: int = 0, world_size: int = 1, need_train: bool = True, pin_memory: bool = False
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
    if train is not None:
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
