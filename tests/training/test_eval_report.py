"""eval.py's per-class report: checked against scikit-learn and engine.evaluate; several checkpoints in one call."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import fails_in_one_line, read_log
from doc_commands import page_commands, run_command
from torch.utils.data import DataLoader, TensorDataset

from convit.training.engine import evaluate
from convit.training.eval_report import evaluate_confusion, per_class
from convit.training.evaluate import main, parse_args
from convit.training.history import kept_epochs
from convit.training.history import main as history_main
from convit.training.history import parse_args as history_args
from convit.weights import read_checkpoint


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


def test_the_evaluation_page_commands(folder, tmp_path, monkeypatch, capsys):
    """docs/evaluation.md, run as written (the training command first) from a folder holding its images."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    commands = page_commands("evaluation.md")
    assert len(commands) == 8
    train_first = sorted(commands, key=lambda c: not c.startswith("python train.py"))
    results = {c: run_command(c, tmp_path) for c in train_first}
    run = tmp_path / "out" / "run"
    kept = sorted(p.name for p in run.glob("epoch_*.pth"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [Path(r["checkpoint"]).name for r in rows] == ["best.pth", *kept, "last.pth"]
    assert {r["data"] for r in rows} == {"imagefolder"} and {r["val_images"] for r in rows} == {"21"}
    report = tmp_path / "out" / "report" / "run_best"
    table = list(csv.reader(open(report / "confusion.csv")))
    assert table[0] == ["true \\ predicted", "class_0", "class_1", "class_2"]
    assert sum(int(v) for row in table[1:] for v in row[1:]) == 21
    assert (report / "confusion.png").stat().st_size > 10_000
    per = list(csv.DictReader(open(report / "per_class.csv")))
    assert [int(r["images"]) for r in per] == [7, 7, 7]
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["crop_pct"] == 1.0 and best["interpolation"] == "bilinear" and len(best["per_class"]) == 3
    labels = list(csv.reader(open(tmp_path / "out" / "labels.csv")))
    assert len(labels) == 22 and labels[0][:3] == ["file", "class_1", "prob_1"]
    assert len(json.loads((tmp_path / "out" / "labels.json").read_text())) == 21
    measured = json.loads((tmp_path / "out" / "run_locality" / "kept_epochs.json").read_text())
    assert [r["epoch"] for r in measured] == [int(name[6:-4]) for name in sorted(kept, key=lambda n: int(n[6:-4]))]
    assert (tmp_path / "out" / "run_locality" / "gates_over_epochs.png").stat().st_size > 0
    averaged = results["python eval.py --checkpoint out/run_avg.pth"]
    assert averaged["val_images"] == 21
    # the history: the best 2 epochs and every 3rd, and the average of the best 2 (the float64 mean)
    log = read_log(run)
    expected = kept_epochs(log, 2, 3)
    assert kept == sorted(f"epoch_{e}.pth" for e in expected) and 2 in expected
    for e in expected:
        assert read_checkpoint(run / f"epoch_{e}.pth")["val_acc1"] == log[e]["val_acc1"]
    best_two = sorted(expected, key=lambda e: (-log[e]["val_acc1"], e))[:2]
    avg = read_checkpoint(tmp_path / "out" / "run_avg.pth")
    assert sorted(Path(f).name for f in avg["averaged_from"]) == sorted(f"epoch_{e}.pth" for e in best_two)
    states = [read_checkpoint(run / f"epoch_{e}.pth")["model"] for e in best_two]
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (sum(s[k].double() for s in states) / 2).float(), msg=k)
    fails_in_one_line(capsys, "history", history_main, history_args([str(run), "--output", str(run / "epoch_2.pth")]))
    # never over an input; a folder without checkpoints
    fails_in_one_line(capsys, "eval.py", main, parse_args(["--checkpoint", str(run), "--csv", str(run / "last.pth")]))
    fails_in_one_line(capsys, "eval.py", main, parse_args(["--checkpoint", str(tmp_path / "out" / "report")]))
