"""Transfer datasets read from local files in torchvision's (or, for iNaturalist, the authors') layout; never downloaded."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import first_line
from .folders import DataError, pil_rgb_loader
from .transforms import imagenet_transforms

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


def transfer_datasets(cfg, need_train: bool):
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
        first = first_line(e, 400).split(" You can use download")[0][:120]
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
