"""Transfer datasets from local files (CIFAR-10 for real, the others' messages)."""

import json
import pickle

import numpy as np
import pytest
from conftest import NO_AUG, TINY_MODEL, read_log, run_script
from PIL import Image

import train as train_script
from convit.data import DataError, build_datasets
from convit.errors import run_entry_point
from convit.training.config import parse_args
from convit.weights import read_checkpoint

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(root, per_batch: int = 4, n_test: int = 6, seed: int = 0):
    """root/cifar-10-batches-py/ in torchvision's (and the original site's) python-pickle format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        labels = [(i * per_batch + j) % 3 for j in range(n)]  # 3 of the 10 classes occur
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"batch_label": name, "labels": labels, "data": data, "filenames": [f"{j}.png" for j in range(n)]}, f
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": LABELS, "num_cases_per_batch": per_batch}, f)
    return root


def test_cifar10_from_local_pickles_trains_one_epoch(tmp_path):
    root = make_cifar10(tmp_path / "cifar")
    out = tmp_path / "run"
    args = ["--data", "cifar10", "--data-path", root, *TINY_MODEL, *NO_AUG, "--batch-size", "4", "--epochs", "1"]
    run_script("train.py", [*args, "--locality-images", "0", "--output-dir", out])
    (row,) = read_log(out)
    assert row["val_images"] == 6
    best = read_checkpoint(out / "best.pth")
    assert best["class_names"] == LABELS and best["num_classes"] == 10 and best["model"]["head.weight"].shape[0] == 10
    train, val, names = build_datasets(parse_args([str(a) for a in args]))
    assert len(train) == 20 and len(val) == 6 and names == LABELS
    image, target = val[0]
    assert tuple(image.shape) == (3, 16, 16) and target == (5 * 4) % 3  # test_batch, first image


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_cifar_batch_carrying_code_is_refused(tmp_path):
    root = make_cifar10(tmp_path / "cifar")
    marker = tmp_path / "ran"
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"labels": [0], "data": _Payload(marker)}, f)
    with pytest.raises(DataError, match="not only arrays"):
        build_datasets(parse_args(["--data", "cifar10", "--data-path", str(root), *TINY_MODEL]))
    assert not marker.exists()


@pytest.mark.parametrize(
    "data, expected",
    [
        ("cifar10", "cifar-10-batches-py/ with data_batch_1..5"),
        ("cifar100", "cifar-100-python/ with train, test and meta"),
        ("flowers102", "flowers-102/ with jpg/, imagelabels.mat and setid.mat"),
        ("stanford_cars", "stanford_cars/ with cars_train/"),
        ("inat2018", "train2018.json, val2018.json"),
        ("inat2019", "train2019.json, val2019.json"),
    ],
)
def test_a_missing_or_empty_dataset_folder_is_one_line(tmp_path, capsys, data, expected):
    out = tmp_path / "out"
    for path in (tmp_path / "missing", tmp_path):  # no folder; a folder without the files
        argv = ["--data", data, "--data-path", str(path), *TINY_MODEL, "--output-dir", str(out)]
        with pytest.raises(SystemExit) as exit_info:
            run_entry_point("train.py", train_script.main, argv)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("train.py: error: "), lines
        assert str(path) in lines[0] and (expected in lines[0] or f"{data[-4:]}.json" in lines[0]), lines[0]
    assert not out.exists()


def test_inaturalist_in_the_authors_json_format(tmp_path):
    root = tmp_path / "inat"
    images, annotations = {"train": [], "val": []}, {"train": [], "val": []}
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            name = f"train_val2018/Plantae/{100 + i % 2}/{split}_{i}.jpg"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(root / name)
            images[split].append({"id": i, "file_name": name})
            annotations[split].append({"id": i, "image_id": i, "category_id": 100 + i % 2})
        (root / f"{split}2018.json").write_text(
            json.dumps({"images": images[split], "annotations": annotations[split]})
        )
    train, val, names = build_datasets(parse_args(["--data", "inat2018", "--data-path", str(root), *TINY_MODEL]))
    assert names == ["100", "101"] and len(train) == 4 and len(val) == 2 and train.targets == [0, 1, 0, 1]
    assert tuple(val[1][0].shape) == (3, 16, 16) and val[1][1] == 1
