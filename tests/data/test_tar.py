"""ImageFolders packed in tar files: built here with the tarfile module, read, trained and evaluated."""

import os
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import NO_AUG, TINY_MODEL, fails_in_one_line, make_image_folder, read_log

from convit.data import DataError, build_datasets, build_loaders
from convit.training.config import Config, validate

CLASSES = ["class_0", "class_1", "class_2"]


def pack(tar_path: Path, folder: Path, names) -> Path:
    """A tar of ``folder``'s entries ``names`` (their paths inside start at the entry's name)."""
    with tarfile.open(tar_path, "w") as tar:
        for name in names:
            tar.add(folder / name, arcname=name)
    return tar_path


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The same 3-class ImageFolder as a folder, as one tar of its root, and as train.tar and val.tar."""
    root = tmp_path_factory.mktemp("tars")
    images = make_image_folder(root / "folder", n_train=8, n_val=7)
    pack(root / "colors.tar", images, ["train", "val"])
    (root / "split").mkdir()
    for split in ("train", "val"):
        pack(root / "split" / f"{split}.tar", images / split, CLASSES)
    return root


def config(**kw):
    return validate(Config(img_size=16, batch_size=4, num_workers=0, aa=None, **kw))


@pytest.mark.parametrize("shape", ["colors.tar", "split"])
def test_a_tar_reads_as_the_folder_does(packed, shape):
    folder_train, folder_val, folder_names = build_datasets(config(data_path=str(packed / "folder")))
    train, val, names = build_datasets(config(data_path=str(packed / shape)))
    assert names == folder_names == CLASSES
    assert len(train) == 24 and len(val) == 21
    assert train.targets == folder_train.targets and val.targets == folder_val.targets
    for i in range(len(val)):
        x, y = val[i]
        x_folder, y_folder = folder_val[i]
        assert y == y_folder
        torch.testing.assert_close(x, x_folder)  # the same image, the same transform


def test_a_class_map_orders_the_tar_classes(packed, tmp_path):
    (tmp_path / "reversed.txt").write_text("\n".join(reversed(CLASSES)) + "\n")
    _, base, _ = build_datasets(config(data_path=str(packed / "colors.tar")), False)
    _, val, names = build_datasets(
        config(data_path=str(packed / "colors.tar"), class_map=str(tmp_path / "reversed.txt")), False
    )
    assert names == CLASSES[::-1]
    assert sorted(val.targets) == val.targets  # grouped by class, in the map's order
    assert sorted(2 - y for y in base.targets) == val.targets


@pytest.mark.parametrize("workers", [0, 2])
def test_sharded_evaluation_counts_each_tar_image_once(packed, workers):
    cfg = config(data_path=str(packed / "split"))
    cfg.num_workers = workers
    _, folder_val, _ = build_datasets(config(data_path=str(packed / "folder")), False)
    expected = sorted(bytes(x.numpy().tobytes()) for x, _ in folder_val)
    seen = []
    for rank in range(2):
        loader = build_loaders(cfg, rank, 2, need_train=False).val
        seen += [bytes(x.numpy().tobytes()) for images, _ in loader for x in images]
    assert sorted(seen) == expected  # 21 images, each once, read right by loader workers too
    if workers:  # a loader worker forked after the parent read the tar opens it anew, rather than share its file
        val = build_datasets(cfg, False)[1]
        x0, _ = val[0]
        parent = val.reader.tar_state.tf
        val.pid = -1  # as in a forked worker
        x1, _ = val[1]
        assert val.reader.tar_state.tf is not parent and val.reader.tar_state.tf is not None
        torch.testing.assert_close(val[0][0], x0)


def test_train_and_evaluate_from_tar_files(packed, tmp_path):
    from convit.training import train
    from convit.training.evaluate import main, parse_args

    out = tmp_path / "run"
    small = [*TINY_MODEL, *NO_AUG, "--epochs", "1", "--batch-size", "4"]
    train.main([*small, "--data-path", str(packed / "split"), "--output-dir", str(out)])
    (row,) = read_log(out)
    assert row["val_images"] == 21
    checkpoint = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    assert checkpoint["class_names"] == CLASSES
    assert checkpoint["config"]["data"] == "imagefolder"
    assert checkpoint["config"]["data_path"] == str(packed / "split")
    # the data path is the checkpoint's, or another packing of the same images
    results = main(parse_args(["--checkpoint", str(out / "best.pth"), "--num-workers", "0"]))
    other = main(
        parse_args(
            ["--checkpoint", str(out / "best.pth"), "--data-path", str(packed / "colors.tar"), "--num-workers", "0"]
        )
    )
    assert results["data"] == other["data"] == "imagefolder" and results["split"] == "val"
    assert results["data_path"] == str(packed / "split") and other["data_path"] == str(packed / "colors.tar")
    assert results["val_images"] == other["val_images"] == 21
    assert results["val_acc1"] == other["val_acc1"]


def bad(tmp_path: Path, packed: Path):
    """(data path, the message's words) for each mistake."""
    images = packed / "folder"
    (tmp_path / "garbage.tar").write_bytes(b"not a tar at all " * 64)
    (tmp_path / "notes.txt").write_text("hello")
    loose = pack(tmp_path / "loose.tar", images / "val" / "class_0", ["000.jpg", "001.jpg"])
    no_val = pack(tmp_path / "no_val.tar", images, ["train"])
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    (tmp_path / "half").mkdir()
    pack(tmp_path / "half" / "train.tar", images / "train", CLASSES)
    (tmp_path / "both").mkdir()
    pack(tmp_path / "both" / "val.tar", images / "val", CLASSES)
    os.symlink(images / "val", tmp_path / "both" / "val")
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes((packed / "colors.tar").read_bytes()[:5000])
    return [
        (tmp_path / "garbage.tar", "cannot read '.*garbage.tar' as a tar"),
        (tmp_path / "notes.txt", "is a file but not a .tar"),
        (loose, "'.*loose.tar' holds no val/ folder"),
        (no_val, "'.*no_val.tar' holds no val/ folder; expected .*no_val.tar:val/CLASS/IMAGE.jpg"),
        (empty, "'.*empty.tar' holds no images"),
        (tmp_path / "half", "data folder '.*half/val' not found.*val.tar"),
        (tmp_path / "both", "holds both val/ and val.tar; keep one"),
        (truncated, "truncated.tar"),
    ]


def test_bad_tars_fail_in_one_line_before_anything_is_written(packed, tmp_path, capsys):
    from convit.training import train

    for path, words in bad(tmp_path, packed):
        with pytest.raises(DataError, match=words):
            build_datasets(config(data_path=str(path)))
        out = tmp_path / f"out_{path.name}"
        line = fails_in_one_line(
            capsys, "train.py", train.main, [*TINY_MODEL, "--data-path", str(path), "--output-dir", str(out)]
        )
        assert path.name in line and not out.exists()
    # images beside the class folders only: no class folder at all
    (tmp_path / "flat").mkdir()
    flat = pack(tmp_path / "flat" / "val.tar", packed / "folder" / "val" / "class_0", ["000.jpg"])
    pack(tmp_path / "flat" / "train.tar", packed / "folder" / "train", CLASSES)
    with pytest.raises(DataError, match="'.*flat/val.tar' holds no class folders of images; expected .*val.tar:CLASS"):
        build_datasets(config(data_path=str(flat.parent)))
    (tmp_path / "short.txt").write_text("class_0\nclass_1\n")
    with pytest.raises(DataError, match="lacks 1 class.*class_2"):
        build_datasets(config(data_path=str(packed / "colors.tar"), class_map=str(tmp_path / "short.txt")))
    with pytest.raises(DataError, match="drop --class-map"):
        build_datasets(config(data_path=str(packed / "folder"), class_map=str(tmp_path / "short.txt")))
