"""eval.py's per-class report: checked against scikit-learn and engine.evaluate; several checkpoints in one call."""

import csv
import json

import pytest
import torch
from conftest import TINY_MODEL, fails_in_one_line
from torch.utils.data import DataLoader, TensorDataset

from convit.training.engine import evaluate
from convit.training.eval_report import evaluate_confusion, per_class
from convit.training.evaluate import main, parse_args


def test_confusion_and_per_class_match_sklearn_and_the_engine():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    x, y = torch.randn(50, 3, 2, 2), torch.randint(0, 6, (50,))  # class 6 never occurs: NaN recall
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    stats, confusion = evaluate_confusion(model, loader, torch.device("cpu"), 7)
    reference = evaluate(model, loader, torch.device("cpu"))
    assert stats == pytest.approx(reference)
    predicted = model(x).argmax(1)
    expected = confusion_matrix(y, predicted, labels=range(7))
    assert confusion.tolist() == expected.tolist()
    rows = per_class(confusion, [f"c{k}" for k in range(7)])
    present = [k for k in range(7) if expected[k].sum()]
    precision, recall, _, _ = precision_recall_fscore_support(y, predicted, labels=present, zero_division=0)
    for i, k in enumerate(present):
        assert rows[k]["recall"] == pytest.approx(100 * recall[i]) == pytest.approx(rows[k]["accuracy"])
        if expected[:, k].sum():
            assert rows[k]["precision"] == pytest.approx(100 * precision[i])
    assert rows[6]["images"] == 0 and rows[6]["recall"] != rows[6]["recall"]


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    from convit.training import train

    out = tmp_path_factory.mktemp("run")
    args = ["--data-path", folder, *TINY_MODEL, "--epochs", "1", "--batch-size", "8", "--output-dir", out]
    train.main([str(a) for a in args])
    return out


def test_a_run_folder_gives_one_row_per_checkpoint_and_a_report(run, tmp_path, capsys):
    results = main(
        parse_args(
            ["--checkpoint", str(run), "--csv", str(tmp_path / "r.csv"), "--report-dir", str(tmp_path / "rep")]
            + ["--output", str(tmp_path / "r.json"), "--crop-pct", "1.0", "--interpolation", "bilinear"]
        )
    )
    assert [r["checkpoint"] for r in results] == [str(run / "best.pth"), str(run / "last.pth")]
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["checkpoint"] for r in rows] == [str(run / "best.pth"), str(run / "last.pth")]
    assert {r["data"] for r in rows} == {"imagefolder"} and rows[0]["crop_pct"] == "1.0"
    assert float(rows[0]["val_acc1"]) == pytest.approx(results[0]["val_acc1"])
    assert len(json.loads((tmp_path / "r.json").read_text())) == 2
    folder = tmp_path / "rep" / f"{run.name}_best"
    table = list(csv.reader(open(folder / "confusion.csv")))
    assert table[0] == ["true \\ predicted", "class_0", "class_1", "class_2"]
    assert sum(int(v) for row in table[1:] for v in row[1:]) == 21
    assert (folder / "confusion.png").stat().st_size > 10_000
    per = list(csv.DictReader(open(folder / "per_class.csv")))
    assert [int(r["images"]) for r in per] == [7, 7, 7]
    # never over an input; a folder without checkpoints
    fails_in_one_line(capsys, "eval.py", main, parse_args(["--checkpoint", str(run), "--csv", str(run / "last.pth")]))
    fails_in_one_line(capsys, "eval.py", main, parse_args(["--checkpoint", str(tmp_path / "rep")]))
