"""ImageFolders packed in tar files, read with timm's tar reader (``ReaderImageInTar``) without unpacking them.

``--data-path`` is either one ``.tar`` of an ImageFolder root (``train/CLASS/IMAGE`` and ``val/CLASS/IMAGE``
inside), or a folder holding ``train.tar`` and ``val.tar`` (``CLASS/IMAGE`` inside each). Classes are the
folders under a split's root, sorted, as torchvision's ImageFolder names them (timm's reader would take the
innermost folder, in natural order). Only tar headers and image bytes are read: timm's tar-info cache, a pickle,
is never read or written.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np
from torch.utils.data import Dataset

from .factory import check_covers
from .folders import DataError, rgb_image


def tar_split(root: str, split: str) -> tuple[str, str | None] | None:
    """Where ``split`` of ``--data-path root`` is packed: (tar, folder inside it), or None for a plain folder."""
    if os.path.isfile(root):
        if not root.lower().endswith(".tar"):
            raise DataError(
                f"--data-path '{root}' is a file but not a .tar; pass a folder with train/ and val/, or a .tar of one"
            )
        return root, split
    packed, folder = os.path.join(root, f"{split}.tar"), os.path.join(root, split)
    if os.path.isfile(packed) and os.path.isdir(folder):
        raise DataError(f"'{root}' holds both {split}/ and {split}.tar; keep one of them")
    return (packed, None) if os.path.isfile(packed) else None


def check_tar(path: str) -> None:
    """A DataError unless ``path`` is an uncompressed tar whose first header reads."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            tar.next()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"cannot read '{path}' as a tar ({type(e).__name__}); pack the images with 'tar -cf' (uncompressed)"
        ) from None


def member_path(name: str) -> list[str]:
    """The folders and file name of a tar member, without a leading '/' or './'."""
    return [p for p in name.split("/") if p not in ("", ".")]


def tar_reader(path: str, folder: str | None, class_map: list[str] | None):
    """timm's ``ReaderImageInTar`` over the images at ``[folder/]CLASS/.../IMAGE`` of a tar, labelled as
    ImageFolder labels them (or by ``class_map``); ``classes`` holds the class names in label order."""
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    where = f"{path}:{folder}/" if folder else f"{path}:"
    check_tar(path)
    try:
        reader = ReaderImageInTar(path, cache_tarinfo=False)
    except ValueError:  # timm's reader found no image file at all
        raise DataError(f"'{path}' holds no images; expected {where}CLASS/IMAGE.jpg") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"cannot read '{path}' ({type(e).__name__}: a truncated or damaged tar?); pack it anew"
        ) from None
    keep, names = [], []
    for i, (info, _, child) in enumerate(reader.samples):
        if child is not None:
            raise DataError(f"'{path}' holds tar files inside it ({child.name}); pack the class folders themselves")
        parts = member_path(info.name)
        if folder is not None:
            if parts[:1] != [folder]:
                continue
            parts = parts[1:]
        if len(parts) >= 2:  # files beside the class folders are no class's, as in ImageFolder
            keep.append(i)
            names.append(parts[0])
    if not keep:
        if folder is not None and not any(member_path(s[0].name)[:1] == [folder] for s in reader.samples):
            raise DataError(
                f"'{path}' holds no {folder}/ folder; expected {where}CLASS/IMAGE.jpg (a tar of a folder with "
                "train/ and val/)"
            )
        raise DataError(f"'{path}' holds no class folders of images; expected {where}CLASS/IMAGE.jpg")
    found = sorted(set(names))
    if class_map:
        check_covers(class_map, found, f"'{path}'")
    classes = class_map or found
    index = {c: k for k, c in enumerate(classes)}
    order = sorted(range(len(keep)), key=lambda j: (index[names[j]], reader.samples[keep[j]][0].name))
    reader.samples = reader.samples[[keep[j] for j in order]]
    reader.targets = np.array([index[names[j]] for j in order], dtype=np.int64)
    reader.class_name_to_idx = index
    reader.class_idx_to_name = dict(enumerate(classes))
    reader.classes = list(classes)
    return reader


class TarImageFolder(Dataset):
    """One split of an ImageFolder packed in a tar: (transformed RGB image, label), as ImageFolder gives them.

    A loader worker opens the tar itself rather than share the file its parent may have opened.
    """

    def __init__(self, path: str, folder: str | None, transform, class_map: list[str] | None = None):
        self.reader = tar_reader(path, folder, class_map)
        self.path, self.transform = path, transform
        self.classes = self.reader.classes
        self.targets = [int(t) for t in self.reader.targets]
        self.pid = os.getpid()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        if self.pid != os.getpid():
            self.reader.tar_state.reset()
            self.pid = os.getpid()
        data, target = self.reader[index]
        image = rgb_image(data, f"{self.path}:{self.reader.samples[index][0].name}")
        return self.transform(image), int(target)
