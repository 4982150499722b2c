"""convit.data.folders: image folders read safely, each file once; class-balanced subsets."""

import os
from collections import Counter

import pytest
from conftest import make_image_folder

from convit.data import (
    DataError,
    build_datasets,
    class_balanced_subset,
    pil_rgb_loader,
)
from convit.training.config import parse_args


def test_class_balanced_subset_sizes_and_determinism():
    targets = [0] * 100 + [1] * 30 + [2] * 7
    keep = class_balanced_subset(targets, 0.1, seed=3)
    assert Counter(targets[i] for i in keep) == {0: 10, 1: 3, 2: 1}  # every class kept, in proportion
    assert keep == class_balanced_subset(targets, 0.1, seed=3)
    assert keep != class_balanced_subset(targets, 0.1, seed=4)
    assert len(set(keep)) == len(keep)
    assert class_balanced_subset(targets, 1.0, seed=0) == list(range(len(targets)))


def test_missing_folder_is_a_clear_error(tmp_path):
    cfg = parse_args(["--data-path", str(tmp_path / "nope")])
    with pytest.raises(DataError, match="not found"):
        build_datasets(cfg)
    (tmp_path / "only_val" / "val" / "a").mkdir(parents=True)
    cfg = parse_args(["--data-path", str(tmp_path / "only_val")])
    with pytest.raises(DataError, match=r"no images under '.*only_val/val'"):
        build_datasets(cfg)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot read image '.*broken.jpg'"):
        pil_rgb_loader(str(bad))


def test_an_image_reached_twice_counts_once(tmp_path):
    from convit.data import image_folder

    root = make_image_folder(tmp_path / "d", n_train=3, n_val=1)
    train = root / "train"
    (train / "class_0" / "loop").symlink_to(train / "class_0", target_is_directory=True)  # a link loop
    (train / "class_0" / "again.jpg").symlink_to(train / "class_0" / "000.jpg")  # a file linked twice
    (train / "class_1" / "other_class.jpg").symlink_to(train / "class_2" / "001.jpg")  # linked into a class
    (train / "class_2" / "hard.jpg").hardlink_to(train / "class_2" / "002.jpg")
    dataset = image_folder(str(root), "train", transform=None)
    assert len(dataset) == 9
    assert len({os.path.realpath(p) for p, _ in dataset.samples}) == 9


def test_a_decompression_bomb_is_named(tmp_path):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 M pixels in a small file
    with pytest.raises(DataError, match="image '.*bomb.png' has more pixels than PIL opens safely"):
        pil_rgb_loader(str(path))
