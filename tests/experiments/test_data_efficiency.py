"""experiments/data_efficiency/run.py: a tiny real run end to end, and its pure helpers."""

import csv
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, child_env, fails_in_one_line

from experiments import harness
from experiments.data_efficiency import run as de


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_every_output(tmp_path):
    """One fraction, one seed, both models, 3 steps of a 2-block model: all files, right rows."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.data_efficiency.run",
        "--fractions",
        "0.1",
        "--seeds",
        "0",
        "--steps",
        "3",
        "--warmup-steps",
        "1",
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--local-up-to-layer",
        "1",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.csv",
        "locality.csv",
        "locality_init.csv",
        "summary.csv",
        "summary.md",
        "data_efficiency.png",
        "locality.png",
    }
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 2 and all("ETA" in line for line in progress)

    results = read(tmp_path / "results.csv")
    assert list(results[0]) == harness.RESULT_FIELDS
    assert [r["model"] for r in results] == ["convit", "deit"]
    for r in results:
        assert float(r["fraction"]) == 0.1 and r["seed"] == "0" and r["steps"] == "3"
        # digits train split: 1437 images; 10 % of each class, rounded per class
        assert int(r["train_images"]) == 142
        assert 0.0 <= float(r["val_acc1"]) <= 100.0 and math.isfinite(float(r["val_loss"]))

    locality = read(tmp_path / "locality.csv")
    assert list(locality[0]) == harness.LOCALITY_FIELDS
    assert len(locality) == 2 * 2 * 4  # models x blocks x heads
    convit = [r for r in locality if r["model"] == "convit"]
    deit = [r for r in locality if r["model"] == "deit"]
    assert {r["type"] for r in convit if r["block"] == "0"} == {"GPSA"}
    assert {r["type"] for r in convit if r["block"] == "1"} == {"MHSA"}
    assert {r["type"] for r in deit} == {"MHSA"} and all(r["gate"] == "" for r in deit)
    assert all(0.0 < float(r["gate"]) < 1.0 for r in convit if r["type"] == "GPSA")
    assert all(r["gate"] == "" for r in convit if r["type"] == "MHSA")
    assert all(float(r["nonlocality"]) > 0 for r in locality)

    init = read(tmp_path / "locality_init.csv")
    assert list(init[0]) == de.INIT_FIELDS and len(init) == 2 * 2 * 4
    # untrained: every GPSA gate is sigmoid(1), the paper's (and timm's) initialisation
    assert all(float(r["gate"]) == pytest.approx(0.7311, abs=1e-4) for r in init if r["type"] == "GPSA")
    assert all(r["gate"] == "" for r in init if r["type"] == "MHSA")

    (summary,) = read(tmp_path / "summary.csv")
    assert float(summary["paper_gap"]) == pytest.approx(11.6)
    gap = float(results[0]["val_acc1"]) - float(results[1]["val_acc1"])
    assert float(summary["gap_mean"]) == pytest.approx(gap, abs=1e-6)
    md = (tmp_path / "summary.md").read_text()
    assert "| 0.1 | 142 |" in md and "+11.6" in md and "block 1" in md
    assert "| convit | untrained |" in md and "| deit | 0.1 |" in md


def test_every_run_takes_the_same_number_of_steps():
    g = torch.Generator().manual_seed(0)
    for n in (7, 70, 200):
        batches = harness.cycled_batches(n, 64, 10, g)
        assert len(batches) == 10 and all(len(b) == 64 for b in batches)
        flat = [i for b in batches for i in b]
        # whole shuffled passes: each complete pass holds every image exactly once
        passes = len(flat) // n
        assert passes >= 1
        for p in range(passes):
            assert sorted(flat[p * n : (p + 1) * n]) == list(range(n))


def test_summary_pairs_seeds_and_quotes_the_paper():
    rows = [
        {"model": m, "fraction": "0.05", "seed": s, "train_images": "70", "val_acc1": a}
        for m, s, a in [("convit", 0, 90), ("convit", 1, 80), ("deit", 0, 70), ("deit", 1, 70), ("convit", 2, 50)]
    ]
    (row,) = de.summarize(rows)
    assert row["convit_n"] == 3 and row["deit_n"] == 2
    assert row["gap_seeds"] == 2 and row["gap_mean"] == pytest.approx(15.0)
    assert row["gap_std"] == pytest.approx(math.sqrt(50.0))
    assert row["paper_gap"] == pytest.approx(13.0) and de.paper_gap(0.2) is None


def test_bad_models_and_a_finished_experiment_are_one_line(tmp_path, capsys):
    line = fails_in_one_line(
        capsys, "experiments.data_efficiency.run", de.main, ["--models", "convit,vit", "--out", str(tmp_path / "a")]
    )
    assert "--models must be from" in line and not (tmp_path / "a").exists()
    (tmp_path / "results.csv").write_text("model,fraction,seed\nconvit,0.1,0\n")
    line = fails_in_one_line(capsys, "experiments.data_efficiency.run", de.main, ["--out", str(tmp_path)])
    assert "--resume" in line and "--overwrite" in line
    assert (tmp_path / "results.csv").read_text() == "model,fraction,seed\nconvit,0.1,0\n"
