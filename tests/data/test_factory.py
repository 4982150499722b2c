"""timm's dataset sources (hfds/, wds/, torch/), each built here from generated images, trained and evaluated;
docs/data.md's commands."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fails_in_one_line, make_image_folder, read_log
from doc_commands import page_commands, run_command

from convit.data import DataError, build_datasets, build_loaders
from convit.training.config import Config, ConfigError, validate

CLASSES = ["class_0", "class_1", "class_2"]


def folder_items(root: Path, split: str):
    """(jpeg bytes, label) of every image of an ImageFolder split, in sorted order."""
    items = []
    for k, name in enumerate(CLASSES):
        for f in sorted((root / split / name).glob("*.jpg")):
            items.append((f.read_bytes(), k))
    return items


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 3-class images as an ImageFolder, a saved Hugging Face dataset, webdataset shards and MNIST files."""
    import datasets
    import webdataset as wds

    root = tmp_path_factory.mktemp("sources")
    images = make_image_folder(root / "folder", n_train=8, n_val=7)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        items = folder_items(images, split)
        splits[name] = datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b, _ in items], "label": [k for _, k in items]}, features=features
        )
    datasets.DatasetDict(splits).save_to_disk(str(root / "hf" / "colors"))
    shards = root / "shards"
    shards.mkdir()
    info = {"name": "colors", "splits": {}}
    for split, name, n_shards in (("train", "train", 2), ("val", "validation", 3)):
        items = folder_items(images, split)
        files, lengths = [], []
        for s in range(n_shards):
            part = items[s::n_shards]
            files.append(f"{name}-{s:03d}.tar")
            lengths.append(len(part))
            with wds.TarWriter(str(shards / files[-1])) as sink:
                for i, (jpg, k) in enumerate(part):
                    sink.write({"__key__": f"{name}{s}_{i:04d}", "jpg": jpg, "cls": k})
        info["splits"][name] = {"name": name, "num_samples": sum(lengths), "filenames": files, "shard_lengths": lengths}
    (shards / "_info.json").write_text(json.dumps(info))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    mnist = root / "mnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        labels = np.arange(n, dtype=np.uint8) % 10
        pixels = (rng.random((n, 16, 16)) * 50 + labels[:, None, None] * 20).astype(np.uint8)
        header = np.array([2051, n, 16, 16], dtype=">i4").tobytes()
        (mnist / f"{prefix}-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
        (mnist / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], ">i4").tobytes() + labels.tobytes())
    return root


def config(**kw):
    return validate(Config(img_size=16, batch_size=4, num_workers=0, aa=None, **kw))


def labels_of(dataset):
    return sorted(int(y) for _, y in dataset)


def test_each_source_reads_the_same_images_as_the_folder(sources):
    _, folder_val, folder_names = build_datasets(config(data="imagefolder", data_path=str(sources / "folder")), False)
    hf_train, hf_val, hf_names = build_datasets(config(data="hfds/colors", data_path=str(sources / "hf")))
    wds_cfg = config(data="wds/colors", data_path=str(sources / "shards"), class_map=str(sources / "classes.txt"))
    wds_train, wds_val, wds_names = build_datasets(wds_cfg)
    assert folder_names == hf_names == wds_names == CLASSES
    assert len(hf_train) == 24 and len(hf_val) == 21
    assert labels_of(hf_val) == labels_of(wds_val) == labels_of(folder_val)
    x_hf, x_folder = hf_val[0][0], folder_val[0][0]
    assert x_hf.shape == x_folder.shape == (3, 16, 16)
    torch.testing.assert_close(x_hf, x_folder)  # the same bytes, the same transform
    # a class map reorders the labels
    (sources / "reversed.txt").write_text("\n".join(reversed(CLASSES)))
    _, rev_val, rev_names = build_datasets(
        config(data="hfds/colors", data_path=str(sources / "hf"), class_map=str(sources / "reversed.txt")), False
    )
    assert rev_names == CLASSES[::-1]
    assert [int(y) for _, y in rev_val] == [2 - int(y) for _, y in hf_val]
    _, mnist_val, mnist_names = build_datasets(
        config(data="torch/mnist", data_path=str(sources / "mnist"), val_split="test"), False
    )
    assert len(mnist_names) == 10 and len(mnist_val) == 10 and mnist_val[3][0].shape == (3, 16, 16)


@pytest.mark.parametrize("workers", [0, 2])
def test_sharded_evaluation_counts_each_image_once(sources, workers):
    cfg = config(data="wds/colors", data_path=str(sources / "shards"), class_map=str(sources / "classes.txt"))
    cfg.num_workers = workers
    seen = []
    for rank in range(2):
        loader = build_loaders(cfg, rank, 2, need_train=False).val
        seen += [bytes(x.numpy().tobytes()) for images, _ in loader for x in images]
    assert len(seen) == 21 and len(set(seen)) == 21
    hf = config(data="hfds/colors", data_path=str(sources / "hf"))
    counts = [sum(len(y) for _, y in build_loaders(hf, rank, 2, need_train=False).val) for rank in range(2)]
    assert counts == [11, 10]


def test_bad_sources_fail_in_one_line(sources, tmp_path):
    import webdataset as wds

    with pytest.raises(ConfigError, match="torchvision dataset read here"):
        config(data="torch/notaset", data_path=str(sources))
    with pytest.raises(ConfigError, match="unknown data"):
        config(data="imagefoldr")
    with pytest.raises(DataError, match="split 'nope' not in"):
        build_datasets(config(data="hfds/colors", data_path=str(sources / "hf"), val_split="nope"), False)
    with pytest.raises(DataError, match="carry no class names"):
        build_datasets(config(data="wds/colors", data_path=str(sources / "shards")), False)
    (tmp_path / "short.txt").write_text("class_0\nclass_1\n")
    with pytest.raises(DataError, match="lacks 1 class.*class_2"):
        build_datasets(config(data="hfds/colors", data_path=str(sources / "hf"), class_map=str(tmp_path / "short.txt")))
    unlabelled = tmp_path / "shards"
    unlabelled.mkdir()
    with wds.TarWriter(str(unlabelled / "val-000.tar")) as sink:
        sink.write({"__key__": "a", "jpg": (sources / "folder/val/class_0/000.jpg").read_bytes()})
    with pytest.raises(DataError, match="no .cls label"):
        build_datasets(
            config(
                data="wds/x",
                data_path=str(unlabelled),
                val_split="val-000.tar|1",
                class_map=str(tmp_path / "short.txt"),
            ),
            False,
        )


def test_the_data_page_commands(sources, tmp_path, monkeypatch, capsys):
    """docs/data.md, run as written from a folder holding its data: each source trains and evaluates."""
    from convit.training.evaluate import main, parse_args

    (tmp_path / "data").mkdir()
    for name in ("hf", "shards", "mnist", "classes.txt"):
        (tmp_path / "data" / name).symlink_to(sources / name)
    (tmp_path / "data" / "images").symlink_to(sources / "folder")
    monkeypatch.chdir(tmp_path)
    commands = page_commands("data.md")
    assert len(commands) == 8
    results = {}
    for command in commands:
        results[command] = run_command(command, tmp_path)
    hf = results["python eval.py --checkpoint out/hf/best.pth"]
    assert hf["data"] == "hfds/colors" and hf["split"] == "validation" and hf["val_images"] == 21
    tar = results["python eval.py --checkpoint out/tar/best.pth"]
    assert tar["data"] == "imagefolder" and tar["data_path"] == "data/colors.tar" and tar["val_images"] == 21
    for run, n in (("hf", 21), ("wds", 21), ("tar", 21), ("mnist", 10)):
        (row,) = read_log(tmp_path / "out" / run)
        assert row["val_images"] == n
    # two processes read every webdataset image once: the same numbers as one process
    single = main(parse_args(["--checkpoint", "out/wds/best.pth"]))
    ddp = results[commands[3]].stdout
    assert (
        f"({single['val_images']} images)" in ddp
        and "data wds/colors" in ddp
        and f"top-1 {single['val_acc1']:.2f}%" in ddp
    )
    fails_in_one_line(capsys, "eval.py", main, parse_args(["--checkpoint", "out/wds/best.pth", "--val-split", "no"]))
