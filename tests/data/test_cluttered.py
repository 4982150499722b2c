"""The cluttered digits (convit/data/cluttered.py), train.py/eval.py/locality on them, and the experiment."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, child_env, fails_in_one_line, read_log, run_script

from convit.data import build_datasets, cluttered, digits_split
from convit.data.cluttered import ClutteredError, cluttered_split, compose, source_split, upsample
from convit.errors import UserError
from convit.locality import __main__ as command
from convit.training import evaluate
from convit.training.config import Config, load_recipe, validate
from experiments.cluttered import run as experiment

TINY = ["--embed-dim", "16", "--num-heads", "4", "--depth", "2", "--local-up-to-layer", "1"]


@pytest.fixture(scope="module")
def split32():
    return cluttered_split(32)


def test_same_seed_same_tensors_other_seed_other_canvases(split32):
    again = cluttered_split(32)
    for (x, y), (x2, y2) in zip(split32, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    (other, other_y), _ = cluttered_split(32, seed=1)
    assert torch.equal(other_y, split32[0][1])  # the labels follow the source digits
    assert not torch.equal(other, split32[0][0])


def test_shapes_value_range_and_labels(split32):
    (xtr, ytr), (xva, yva) = split32
    (_, ytr_src), (_, yva_src) = source_split()
    assert xtr.shape == (1437, 1, 32, 32) and xva.shape == (1080, 1, 32, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert torch.equal(ytr, torch.from_numpy(ytr_src).long())
    assert torch.equal(yva, torch.from_numpy(np.repeat(yva_src, cluttered.VAL_COPIES)).long())
    for x in (xtr, xva):
        assert x.min() == -1 and x.max() <= 1
        assert 0.5 < (x == -1).float().mean() < 0.9  # mostly empty canvas, but ink of a digit and its fragments
    assert torch.bincount(ytr).min() > 130  # class-balanced, every class present
    (x48, _), (v48, _) = cluttered_split(48)
    assert x48.shape == (1437, 1, 48, 48) and v48.shape == (1080, 1, 48, 48)


def test_splits_come_from_disjoint_source_digits():
    (xtr, ytr), (xva, yva) = source_split()
    (dtr, dytr), (dva, dyva) = digits_split()  # the digits task's fixed split: a partition of the 1797 digits
    assert np.array_equal(xtr, dtr.numpy()) and np.array_equal(xva, dva.numpy())
    assert len(xtr) + len(xva) == 1797
    # no validation digit's pixels appear among the training digits (the few exact duplicates of the set aside)
    train_rows = {row.tobytes() for row in xtr.astype(np.int8)}
    shared = sum(row.tobytes() in train_rows for row in xva.astype(np.int8))
    assert shared <= 2


def test_digit_is_pasted_whole_and_fragments_come_from_other_digits():
    rng = np.random.default_rng(0)
    # five "digits" of constant, distinct intensity: each pixel tells which digit it came from
    values = np.array([0.1, 0.3, 0.5, 0.7, 0.9], dtype=np.float32)
    digits = np.repeat(values, 16 * 16).reshape(5, 16, 16)
    images, source, corners = compose(digits, 32, 4, 3, rng)
    assert images.shape == (15, 32, 32) and list(source) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    for img, i, (top, left) in zip(images, source, corners):
        box = img[top : top + 16, left : left + 16]
        assert np.array_equal(box, digits[i])  # fragments never overlap the digit
        assert cluttered.SHIFT <= top <= 32 - 16 - cluttered.SHIFT and cluttered.SHIFT <= left <= 32 - 16 - 2
        outside = img.copy()
        outside[top : top + 16, left : left + 16] = 0
        ink = set(np.unique(outside[outside > 0]).round(3))
        assert ink and values[i].round(3) not in ink and ink <= set(values.round(3))
    # on real digits: the pasted digit is the upsampled source, as the digits task feeds it
    (X, _), _ = source_split()
    real = upsample(X[:10])
    img, source, corners = compose(real, 48, 9, 1, np.random.default_rng(1))
    (top, left) = corners[3]
    assert np.array_equal(img[3, top : top + 16, left : left + 16], real[3])


def test_bad_settings_are_refused_in_one_line(capsys):
    with pytest.raises(ClutteredError, match="--img-size 32 or 48"):
        cluttered_split(40)
    with pytest.raises(UserError, match="at least two"):
        compose(np.zeros((1, 16, 16), np.float32), 32, 1, 1, np.random.default_rng(0))
    cfg = validate(Config(**{**load_recipe("cluttered"), "img_size": 40}))
    line = fails_in_one_line(capsys, "train.py", build_datasets, cfg)
    assert "not 40; set --img-size 32 or 48" in line


def write_up_commands() -> list[list[str]]:
    """The commands of the experiment's README (```bash blocks), split into words, comments dropped."""
    text = (ROOT / "experiments" / "cluttered" / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line.split())
    return commands


def test_every_write_up_command_runs_here():
    """Each command of experiments/cluttered/README.md is one that the tests below run (with shrinking flags)."""
    assert [" ".join(c) for c in write_up_commands()] == [
        "python train.py --config cluttered",
        "python eval.py --checkpoint out/cluttered/best.pth",
        "python -m convit.locality --checkpoint out/cluttered/best.pth --data cluttered --out out/cluttered/locality",
        "OMP_NUM_THREADS=1 python -m experiments.cluttered.run --out experiments/cluttered/results",
        "OMP_NUM_THREADS=1 python -m experiments.cluttered.run --out experiments/cluttered/results --resume",
    ]


def test_train_eval_and_locality_on_cluttered(tmp_path):
    """The write-up's train, eval and locality commands, one epoch of a 2-block model on 20 % of the canvases."""
    train, evaluation, locality = (c for c in write_up_commands()[:3])
    out = tmp_path / "cluttered"
    shrink = ["--epochs", "1", "--sampling-ratio", "0.2", "--locality-images", "8", "--progress", "false"]
    run_script(train[1], [*train[2:], *TINY, *shrink, "--output-dir", out])
    (row,) = read_log(out)
    assert row["val_images"] == 1080
    assert [len(r) for r in row["locality"]["nonlocality"]] == [4, 4]
    moved = [a.replace("out/cluttered", str(out)) for a in evaluation[2:]]
    evaluated = evaluate.main(evaluate.parse_args(moved))
    assert evaluated["val_images"] == 1080 and evaluated["data"] == "cluttered"
    assert evaluated["val_acc1"] == pytest.approx(row["val_acc1"])
    moved = [a.replace("out/cluttered", str(out)) for a in locality[3:]]
    command.main(moved + ["--num-images", "8", "--images", "0"])
    report = json.loads((out / "locality" / "locality.json").read_text())
    assert report["data"] == "cluttered" and report["num_images"] == 8 and report["grid_size"] == [8, 8]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_chunked_training_equals_one_pass(split32):
    """The dynamics checkpoints split the step loop; the schedule, optimizer and batches run on unchanged."""
    args = experiment.parse_args(["--embed-dim", "16", "--depth", "2", "--local-up-to-layer", "1"])
    base = experiment.de.base_config(args)
    (xtr, ytr), (xva, yva) = split32
    val = cluttered.ClutteredDataset(xva[:60], yva[:60], 1, train=False)
    data = ((xtr, ytr), torch.utils.data.DataLoader(val, batch_size=30), val.images[:20], val.images[:20])
    cfg = experiment.de.run_config(base, "convit", 0.1, 0)
    one, _, dyn1 = experiment.train_run(cfg, 4, 1, 1, data)
    three, _, dyn3 = experiment.train_run(cfg, 4, 1, 3, data)
    assert one["val_loss"] == three["val_loss"] and one["final_train_loss"] == three["final_train_loss"]
    assert sorted({r["step"] for r in dyn3}) == [0, 1, 3, 4] and sorted({r["step"] for r in dyn1}) == [0, 4]
    assert experiment.checkpoint_steps(400, 10)[:3] == [0, 40, 80] and experiment.checkpoint_steps(3, 10) == [
        0,
        1,
        2,
        3,
    ]


def test_experiment_command_smallest_form(tmp_path, capsys):
    """The write-up's command at 2 steps of a 2-block model, one fraction and seed: every file and row, --resume."""
    run, resume = write_up_commands()[3:]
    assert run[0] == "OMP_NUM_THREADS=1"  # child_env sets it
    shrink = ["--fractions", "0.1", "--seeds", "0", "--steps", "2", "--warmup-steps", "1", "--checkpoints", "2", *TINY]
    assert run[1:4] == ["python", "-m", "experiments.cluttered.run"]
    moved = [a.replace("experiments/cluttered/results", str(tmp_path)) for a in run[4:]]
    cmd = [sys.executable, "-m", run[3], *moved, *shrink]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.csv",
        "locality.csv",
        "dynamics.csv",
        "summary.csv",
        "summary.md",
        "data_efficiency.png",
        "dynamics.png",
        "samples.png",
    }
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 2 and all("ETA" in line for line in progress)
    results = read(tmp_path / "results.csv")
    assert [r["model"] for r in results] == ["convit", "deit"] and {r["train_images"] for r in results} == {"142"}
    dynamics = read(tmp_path / "dynamics.csv")
    assert len(dynamics) == 2 * 3 * 2 * 4  # models x steps (0, 1, 2) x blocks x heads
    convit_gpsa = [r for r in dynamics if r["model"] == "convit" and r["type"] == "gpsa"]
    assert len(convit_gpsa) == 3 * 4 and all(0 < float(r["gate"]) < 1 for r in convit_gpsa)
    assert all(r["gate"] == "" for r in dynamics if r["model"] == "deit")
    assert "| 0.1 | 142 |" in (tmp_path / "summary.md").read_text()

    threads = ["--threads", str(torch.get_num_threads())]  # the same commands, in this process
    fails_in_one_line(
        capsys, "experiments.cluttered.run", experiment.main, moved + shrink + threads
    )  # a finished one is kept
    assert resume[-1] == "--resume" and resume[:-1] == run
    experiment.main(moved + shrink + threads + ["--resume"])
    assert "2 of 2 runs already" in capsys.readouterr().out
    assert read(tmp_path / "results.csv") == results and len(read(tmp_path / "dynamics.csv")) == len(dynamics)
