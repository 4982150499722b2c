"""experiments/transfer/run.py: the transfer and distillation experiment in its tiny form."""

import csv

from conftest import read_log, run_module

from convit.weights import read_checkpoint


def test_the_transfer_experiment_runs_in_tiny_form(tmp_path):
    proc = run_module("experiments.transfer.run", ["--tiny", "--seeds", "0", "--out", tmp_path], timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "| transfer | fine-tuned from 0-4 | 1 |" in proc.stdout
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    arms = {r["arm"] for r in rows}
    assert {"fine-tuned from 0-4", "from scratch", "student alone", "student + hard distillation"} <= arms
    updates = {r["arm"]: r["updates"] for r in rows}
    assert updates["fine-tuned from 0-4"] == updates["from scratch"]
    ft = read_checkpoint(tmp_path / "runs" / "finetune_s0" / "last.pth")
    assert "pretrain_s0" in ft["finetuned_from"] and ft["class_names"] == ["5", "6", "7", "8", "9"]
    assert ft["config"]["img_size"] == 24 and ft["model"]["pos_embed"].shape[1] == 36
    row = read_log(tmp_path / "runs" / "student_hard_s0")[0]
    assert "train_loss_distill" in row and "train_loss_cls" in row
    assert (tmp_path / "summary.md").read_text().startswith("Seeds 0")
