"""predict.py: the model's own preprocessing, top-k names and probabilities, bad inputs before anything is written."""

import csv
import json

import pytest
import torch
from conftest import TINY_MODEL, fails_in_one_line

from convit.data import build_datasets
from convit.predict import main, parse_args
from convit.training.config import from_dict
from convit.weights import model_from_checkpoint, read_checkpoint


@pytest.fixture(scope="module")
def checkpoint(folder, tmp_path_factory):
    from convit.training import train

    out = tmp_path_factory.mktemp("run")
    args = ["--data-path", folder, *TINY_MODEL, "--epochs", "1", "--batch-size", "8", "--output-dir", out]
    train.main([str(a) for a in args])
    return out / "best.pth"


def test_predictions_match_the_evaluation_transform(checkpoint, folder, tmp_path):
    out = tmp_path / "labels.json"
    rows = main(parse_args([str(folder / "val"), "--checkpoint", str(checkpoint), "--topk", "2", "--output", str(out)]))
    assert len(rows) == 21 and json.loads(out.read_text()) == rows
    assert all(len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"] for r in rows)
    # the reference: the model on eval.py's dataset (the same files in the same sorted order)
    ckpt = read_checkpoint(checkpoint)
    _, val, names = build_datasets(from_dict(ckpt["config"]), need_train=False)
    model, _ = model_from_checkpoint(checkpoint)
    model.eval()
    with torch.no_grad():
        probs = model(torch.stack([val[i][0] for i in range(len(val))])).softmax(1)
    for i, r in enumerate(rows):
        assert r["file"] == val.samples[i][0]
        assert r["top"][0]["class"] == names[int(probs[i].argmax())]
        assert r["top"][0]["prob"] == pytest.approx(probs[i].max().item(), abs=1e-5)


def test_csv_from_a_glob(checkpoint, folder, tmp_path):
    out = tmp_path / "labels.csv"
    args = [f"{folder}/val/class_1/*.jpg", "--checkpoint", str(checkpoint), "--topk", "3", "--output", str(out)]
    main(parse_args(args))
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert len(rows) == 8 and {r[1] for r in rows[1:]} <= {"class_0", "class_1", "class_2"}
    assert all(
        abs(sum(float(v) for v in r[2::2]) - 1) < 1e-4 for r in rows[1:]
    )  # all 3 classes: probabilities sum to 1


def test_bad_inputs_fail_in_one_line_and_write_nothing(checkpoint, folder, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not an image")
    out = tmp_path / "labels.csv"
    image = str(folder / "val" / "class_0" / "000.jpg")
    for args in (
        [image, str(tmp_path / "notes.jpg")],
        [str(tmp_path / "nothing-*.png")],
        [image, "--topk", "0"],
        [image, "--class-map", str(tmp_path / "missing.txt")],
    ):
        line = fails_in_one_line(
            capsys, "predict.py", main, parse_args([*args, "--checkpoint", str(checkpoint), "--output", str(out)])
        )
        assert not out.exists(), line
    fails_in_one_line(
        capsys, "predict.py", main, parse_args([image, "--checkpoint", str(checkpoint), "--output", image])
    )


def test_attention_overlay_per_image(checkpoint, folder, tmp_path):
    image = folder / "val" / "class_2" / "003.jpg"
    main(parse_args([str(image), "--checkpoint", str(checkpoint), "--overlay-dir", str(tmp_path / "ov")]))
    (png,) = (tmp_path / "ov").iterdir()
    assert png.name == "0000_003.png" and png.stat().st_size > 5_000
