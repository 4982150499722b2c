"""experiments/ablations/run.py: a tiny real run of all five settings, resuming, and the paired statistics."""

import csv
import math
import subprocess
import sys

import pytest
from conftest import ROOT, child_env, fails_in_one_line

from experiments import harness
from experiments.ablations import run as ab

TINY = ["--steps", "3", "--warmup-steps", "1", "--embed-dim", "32", "--depth", "2", "--local-up-to-layer", "1"]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(args, out):
    cmd = [sys.executable, "-m", "experiments.ablations.run", *args, "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)


def test_tiny_run_of_every_setting_then_resume(tmp_path):
    """Two seeds, both fractions, five settings, 3 steps of a 2-block model: every file and row; frozen gates
    stay at their init; without local init the positional part starts elsewhere; --resume adds a seed only."""
    proc = run(["--seeds", "0,1", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.csv",
        "locality.csv",
        "summary.csv",
        "summary.md",
        "ablations.png",
    }
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 20 and all("ETA" in line for line in progress)

    results = read(tmp_path / "results.csv")
    assert len(results) == 20 and list(results[0])[0] == "setting"
    assert {(r["setting"], float(r["fraction"])) for r in results} == {(s, f) for s in ab.SETTINGS for f in (1.0, 0.1)}
    assert {r["steps"] for r in results} == {"3"} and {r["batch_size"] for r in results} == {"64"}
    # the same subset for every setting of a seed and fraction
    for f in ("1.0", "0.1"):
        assert len({r["train_images"] for r in results if r["fraction"] == f}) == 1

    locality = read(tmp_path / "locality.csv")
    gpsa = [r for r in locality if r["type"] == "GPSA"]
    frozen = [float(r["gate"]) for r in gpsa if r["setting"] in ("gates_frozen", "neither")]
    trained = [float(r["gate"]) for r in gpsa if r["setting"] in ("full", "no_local_init")]
    assert frozen and all(g == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-4) for g in frozen)
    assert any(abs(g - 1 / (1 + math.exp(-1))) > 1e-5 for g in trained)
    assert not [r for r in locality if r["setting"] == "deit" and r["type"] == "GPSA"]
    full = {(r["fraction"], r["seed"], r["block"], r["head"]): r["nonlocality"] for r in gpsa if r["setting"] == "full"}
    other = {
        (r["fraction"], r["seed"], r["block"], r["head"]): r["nonlocality"]
        for r in gpsa
        if r["setting"] == "no_local_init"
    }
    assert full.keys() == other.keys() and full != other

    summary = read(tmp_path / "summary.csv")
    assert [(r["fraction"], r["setting"]) for r in summary][:5] == [("1.0", s) for s in ab.SETTINGS]
    deit = next(r for r in summary if r["setting"] == "deit" and r["fraction"] == "0.1")
    assert float(deit["paper_diff"]) == pytest.approx(47.8 - 59.7, abs=0.05) and deit["pairs"] == "2"
    md = (tmp_path / "summary.md").read_text()
    assert "| 0.1 | neither | no | no |" in md and "Gate σ(λ) per GPSA block" in md

    again = run(["--seeds", "0,1,2", *TINY, "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming: 20 of 30 runs" in again.stdout
    assert len(read(tmp_path / "results.csv")) == 30
    assert read(tmp_path / "results.csv")[:20] == results


def test_a_finished_experiment_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "results.csv").write_text("setting,fraction,seed\nfull,1.0,0\n")
    line = fails_in_one_line(capsys, "experiments.ablations.run", ab.main, ["--out", str(tmp_path), *TINY])
    assert "--resume" in line and "--overwrite" in line
    assert (tmp_path / "results.csv").read_text() == "setting,fraction,seed\nfull,1.0,0\n"
    line = fails_in_one_line(
        capsys, "experiments.ablations.run", ab.main, ["--settings", "full,gates", "--out", str(tmp_path / "x")]
    )
    assert "gates_frozen" in line and not (tmp_path / "x").exists()


def test_paired_difference_is_the_paired_t_test():
    from scipy import stats

    full = {0: 90.0, 1: 85.0, 2: 88.0, 3: 91.0, 4: 80.0}
    ours = {0: 86.0, 1: 84.0, 2: 85.0, 3: 90.0, 4: 79.0, 7: 10.0}  # seed 7 has no pair and is left out
    d = harness.paired_difference(ours, full)
    assert d["pairs"] == 5 and d["lower_in"] == 5
    assert d["diff_mean"] == pytest.approx(-2.0)
    keys = sorted(full)
    expected = stats.ttest_rel([ours[k] for k in keys], [full[k] for k in keys])
    assert d["p_value"] == pytest.approx(expected.pvalue)
    ci = stats.t.interval(0.95, 4, loc=-2.0, scale=stats.sem([ours[k] - full[k] for k in keys]))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(ci)
    same = harness.paired_difference(full, full)
    assert same["diff_mean"] == 0 and same["p_value"] == 1.0 and same["lower_in"] == 0
