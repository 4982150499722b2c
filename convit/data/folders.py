"""Image folders: torchvision's ImageFolder with each file counted once, a safe RGB reader, class-balanced subsets."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

from ..errors import UserError


class DataError(UserError):
    """A data problem the user can fix (missing folder, unreadable image)."""


def pil_rgb_loader(path: str) -> Image.Image:
    """Open an image as RGB, or raise DataError naming the file."""
    try:
        with open(path, "rb") as f:
            return rgb_image(f, path)
    except OSError as e:
        raise DataError(f"cannot read image '{path}' ({type(e).__name__}); delete or replace the file") from None


def rgb_image(file, name: str) -> Image.Image:
    """The image in an open binary file as RGB, or a DataError naming it (``name``)."""
    try:
        return Image.open(file).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"cannot read image '{name}' ({type(e).__name__}); delete or replace the file") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"image '{name}' has more pixels than PIL opens safely ({Image.MAX_IMAGE_PIXELS} x 2, a decompression "
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
            "folders with one sub-folder of images per class (or train.tar and val.tar of them)"
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


def class_difference(stored: list[str], data: list[str]) -> str:
    """One line saying how the checkpoint's class names differ from the data's."""
    if len(stored) != len(data):
        return f"the checkpoint has {len(stored)} classes, the data {len(data)}"
    diff = [(a, b) for a, b in zip(stored, data) if a != b]
    a, b = diff[0]
    return f"the checkpoint's classes differ from the data's at {len(diff)} place(s), e.g. '{a}' vs '{b}'"
