"""Datasets named as timm's ``create_dataset`` names them: ``hfds/NAME``, ``wds/NAME``, ``torch/NAME``.

- ``hfds/NAME``: a Hugging Face dataset. A folder written by ``Dataset(Dict).save_to_disk`` (``--data-path``/NAME,
  or NAME itself) is read with ``datasets.load_from_disk``: timm's reader calls ``load_dataset``, which refuses such
  a folder. Any other NAME goes to timm's reader (``load_dataset(NAME, cache_dir=--data-path)``).
- ``wds/NAME``: webdataset tar shards under ``--data-path``, split by ``_info.json`` or a brace pattern with its
  sample count (``name-{000..003}.tar|4000``). Each sample holds an image and a ``.cls`` label; the shards carry
  no class names, so ``--class-map`` names labels 0..k-1.
- ``torch/NAME``: a torchvision dataset already in ``--data-path`` (nothing is downloaded).

``--class-map FILE`` (one class name per line): for named data it selects and orders the classes, and every class
of the data must be in it; for webdataset shards it names the labels in order.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

from torch.utils.data import IterableDataset

from .folders import DataError
from .transforms import imagenet_transforms

PREFIXES = ("hfds", "wds", "torch")
TORCH_NAMES = ("cifar10", "cifar100", "mnist", "kmnist", "fashion_mnist")  # timm's torchvision sets with train=


def is_timm_source(data: str | None) -> bool:
    """True for a name timm's dataset factory reads here (``hfds/...``, ``wds/...``, ``torch/...``)."""
    prefix, sep, rest = str(data).partition("/")
    return bool(sep and rest) and prefix.lower() in PREFIXES


def source_problem(data: str) -> str | None:
    """Why ``data`` is not a timm dataset name this package reads (None when it is)."""
    prefix, sep, rest = data.partition("/")
    if not sep or prefix.lower() not in PREFIXES or not rest:
        return f"'{data}' is not PREFIX/NAME with PREFIX one of {', '.join(PREFIXES)}"
    if prefix.lower() == "torch" and rest.lower() not in TORCH_NAMES:
        return f"torch/{rest} is not a torchvision dataset read here (one of {', '.join(TORCH_NAMES)})"
    return None


def read_class_map(path: str) -> list[str]:
    """The class names of a ``--class-map`` text file, one per line, in label order."""
    if not os.path.isfile(path):
        raise DataError(f"--class-map '{path}' not found; pass a text file with one class name per line")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f"--class-map '{path}' names no class; write one class name per line")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"--class-map '{path}' names {dup[0]!r} twice; each class once, in label order")
    return names


def check_covers(class_map: list[str], data_classes, what: str) -> None:
    """A DataError unless every class of the data is in the class map."""
    missing = [c for c in data_classes if c not in class_map]
    if missing:
        raise DataError(
            f"--class-map lacks {len(missing)} class(es) of {what}, e.g. {missing[0]!r}; add them to the file"
        )


# ---------------------------------------------------------------------------------------------- hfds
def saved_dataset_folder(name: str, root: str | None) -> str | None:
    """The ``save_to_disk`` folder ``hfds/NAME`` names (under ``root``, or NAME itself), or None."""
    for folder in ([os.path.join(root, name)] if root else []) + [name]:
        if os.path.isfile(os.path.join(folder, "dataset_dict.json")) or os.path.isfile(
            os.path.join(folder, "state.json")
        ):
            return folder
    if root and os.path.isfile(os.path.join(root, "dataset_dict.json")):
        return root
    return None


class SavedHfdsReader:
    """timm's ``Reader`` protocol over a ``save_to_disk`` folder: (file-like image, label) by index."""

    def __init__(self, folder: str, split: str, class_map: list[str] | None, image_key="image", label_key="label"):
        import datasets

        saved = datasets.load_from_disk(folder)
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DataError(
                    f"split '{split}' not in the dataset saved at '{folder}' (it has {', '.join(saved)}); "
                    "pass --train-split/--val-split"
                )
            saved = saved[split]
        for key in (image_key, label_key):
            if key not in saved.features:
                raise DataError(f"the dataset at '{folder}' has no '{key}' column (it has {', '.join(saved.features)})")
        feature = saved.features[label_key]
        if not isinstance(feature, datasets.ClassLabel):
            raise DataError(f"the '{label_key}' column at '{folder}' is not a ClassLabel, so it names no classes")
        self.source_names = list(feature.names)
        self.dataset = saved.cast_column(image_key, datasets.Image(decode=False))
        self.image_key, self.label_key = image_key, label_key
        self.classes = class_map or self.source_names
        self.remap = None
        if class_map:
            check_covers(class_map, self.source_names, f"the dataset at '{folder}'")
            self.remap = [class_map.index(n) for n in self.source_names]
        self.targets = [self.target(t) for t in self.dataset[label_key]]

    def target(self, label: int) -> int:
        return self.remap[label] if self.remap else int(label)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        image = item[self.image_key]
        data = io.BytesIO(image["bytes"]) if image.get("bytes") else open(image["path"], "rb")
        return data, self.target(item[self.label_key])

    def filename(self, index, basename=False, absolute=False):
        return self.dataset[index][self.image_key].get("path") or str(index)

    def filenames(self, basename=False, absolute=False):
        return [self.filename(i) for i in range(len(self))]


def hfds_dataset(cfg, name: str, split: str, train: bool, class_map):
    from timm.data import ImageDataset, create_dataset

    transform = imagenet_transforms(cfg, train=train)
    folder = saved_dataset_folder(name, cfg.data_path)
    if folder is not None:
        reader = SavedHfdsReader(folder, split, class_map)
        ds = ImageDataset(None, reader=reader, transform=transform)
        ds.classes, ds.targets = reader.classes, reader.targets
        return ds
    try:
        ds = create_dataset(
            f"hfds/{name}", root=cfg.data_path, split=split, transform=transform,
            class_map={n: i for i, n in enumerate(class_map)} if class_map else None,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, OSError, ConnectionError) as e:
        from ..errors import first_line

        raise DataError(f"cannot read hfds/{name} split '{split}' ({first_line(e, 200)})") from None
    reader = ds.reader
    if class_map:
        check_covers(class_map, [reader._source_names[i] for i in sorted(reader._source_names)], f"hfds/{name}")
    ds.classes = class_map or [n for n, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])]
    ds.targets = list(reader.iter_targets())
    return ds


# ---------------------------------------------------------------------------------------------- wds
def wds_shards(root: str, split: str) -> list[str]:
    """The shard files of ``split`` (a name in ``_info.json`` or a brace pattern), checked to exist."""
    from braceexpand import braceexpand

    pattern = split.split("|")[0]
    if "tar" in pattern or ".." in pattern:
        files = list(braceexpand(pattern))
    else:
        info = os.path.join(root, "_info.json")
        if not os.path.isfile(info):
            raise DataError(
                f"no _info.json under '{root}' to name split '{split}'; pass the split as a shard pattern with its "
                "sample count, e.g. --val-split 'val-{000..003}.tar|4000'"
            )
        with open(info) as f:
            splits = json.load(f).get("splits", {})
        if split not in splits:
            raise DataError(f"split '{split}' not in '{info}' (it has {', '.join(splits) or 'none'})")
        files = list(splits[split]["filenames"])
    paths = [os.path.join(root, f) for f in files]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"shard '{missing[0]}' of split '{split}' not found")
    return paths


def check_shard_labels(path: str) -> None:
    """A DataError unless every sample of the tar shard has an image and a ``.cls`` label (headers only)."""
    samples: dict[str, set] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                base = os.path.basename(member.name)
                key, _, ext = base.partition(".")
                samples.setdefault(os.path.join(os.path.dirname(member.name), key), set()).add(ext.lower())
    for key, exts in samples.items():
        if "cls" not in exts:
            raise DataError(
                f"sample '{key}' in shard '{path}' has no .cls label; every sample needs one (an integer class index)"
            )
        if not exts & {"jpg", "jpeg", "png", "webp"}:
            raise DataError(f"sample '{key}' in shard '{path}' has no .jpg, .png or .webp image")


class RankStride(IterableDataset):
    """Items ``rank, rank + world, ...`` of each loader worker's stream: with the same workers on every rank, each
    image is kept by exactly one rank (every rank reads every shard; exact, no padding or duplicates)."""

    def __init__(self, dataset, rank: int, world_size: int):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __iter__(self):
        for i, item in enumerate(self.dataset):
            if i % self.world_size == self.rank:
                yield item

    def __getattr__(self, name):  # classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def wds_dataset(cfg, name: str, split: str, train: bool, class_map):
    from timm.data import create_dataset

    if class_map is None:
        raise DataError(
            f"webdataset shards carry no class names; pass --class-map FILE naming labels 0..k-1 (wds/{name})"
        )
    if not cfg.data_path or not os.path.isdir(cfg.data_path):
        raise DataError(f"wds/{name} needs --data-path DIR, the folder holding its shards")
    for shard in wds_shards(cfg.data_path, split):
        check_shard_labels(shard)
    ds = create_dataset(
        f"wds/{name}", root=cfg.data_path, split=split, is_training=train, batch_size=cfg.batch_size,
        seed=cfg.seed, transform=imagenet_transforms(cfg, train=train),
    )  # fmt: skip
    if not train:  # each rank reads every shard; RankStride keeps its share (timm's split would pad or drop)
        ds.reader.dist_rank, ds.reader.dist_num_replicas = 0, 1
    elif not ds.reader.num_samples:
        raise DataError(f"training on wds/{name} needs the split's sample count (in _info.json or 'PATTERN|N')")
    ds.set_loader_cfg(num_workers=cfg.num_workers)
    ds.classes = class_map
    return ds


# ---------------------------------------------------------------------------------------------- torch
class TorchvisionSet:
    """A torchvision dataset with RGB images, the run's transform and the class map's labels."""

    def __init__(self, base, transform, class_map):
        self.base, self.transform = base, transform
        source = list(base.classes)
        self.classes = class_map or source
        self.remap = [class_map.index(n) for n in source] if class_map else None
        targets = [int(t) for t in base.targets]
        self.targets = [self.remap[t] for t in targets] if self.remap else targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        image, _ = self.base[index]
        return self.transform(image.convert("RGB")), self.targets[index]


def torch_dataset(cfg, name: str, split: str, train: bool, class_map):
    from timm.data import create_dataset

    if not cfg.data_path or not os.path.isdir(cfg.data_path):
        raise DataError(f"torch/{name} needs --data-path DIR holding its files (nothing is downloaded)")
    if split.lower() not in ("train", "training", "val", "valid", "validation", "eval", "evaluation", "test"):
        raise DataError(f"torch/{name} has splits train and test (val), not '{split}'")
    try:
        base = create_dataset(f"torch/{name}", root=cfg.data_path, split=split.lower(), download=False)
    except RuntimeError as e:
        from ..errors import first_line

        raise DataError(f"cannot read torch/{name} under '{cfg.data_path}' ({first_line(e)})") from None
    if class_map:
        check_covers(class_map, base.classes, f"torch/{name}")
    return TorchvisionSet(base, imagenet_transforms(cfg, train=train), class_map)


def timm_datasets(cfg, need_train: bool = True):
    """(train dataset or None, val dataset, class names) for ``cfg.data`` naming a timm source."""
    prefix, _, name = cfg.data.partition("/")
    prefix = prefix.lower()
    class_map = read_class_map(cfg.class_map) if cfg.class_map else None

    def build(split, train):
        if prefix == "hfds":
            return hfds_dataset(cfg, name, split, train, class_map)
        if prefix == "wds":
            return wds_dataset(cfg, name, split, train, class_map)
        return torch_dataset(cfg, name.lower(), split, train, class_map)

    val = build(cfg.val_split, False)
    train = build(cfg.train_split, True) if need_train else None
    if train is not None and list(train.classes) != list(val.classes):
        raise DataError(f"splits '{cfg.train_split}' and '{cfg.val_split}' of {cfg.data} have different classes")
    return train, val, list(val.classes)


def is_iterable(dataset) -> bool:
    """True for a stream (webdataset shards): no length-indexed access, no sampler."""
    return isinstance(dataset, IterableDataset)
