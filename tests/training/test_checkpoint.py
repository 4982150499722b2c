"""What a run records is what it did: diverging weights are never saved, a resume applies what the
command line changes, and the run never writes into what it reads."""

import json

import pytest
import torch
import yaml
from conftest import NO_AUG, TINY_MODEL, fails_in_one_line, read_log, run_script

import train as train_script
from convit.weights import read_checkpoint

TINY = [*TINY_MODEL, *NO_AUG, "--batch-size", "8", "--model-ema", "false", "--repeated-aug", "false"]


def one_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_diverging_run_saves_nothing_that_is_not_finite(folder, tmp_path):
    blow_up = ["--opt", "sgd", "--lr", "1000", "--lr-base-batch", "0", "--sched", "none", "--weight-decay", "0"]
    proc = run_script(
        "train.py", ["--data-path", folder, *TINY, *blow_up, "--epochs", "2", "--output-dir", tmp_path], check=False
    )
    line = one_line(proc)
    assert "is nan" in line and "nothing of this epoch was saved" in line, line
    for name in ("last.pth", "best.pth"):
        if (tmp_path / name).exists():
            state = read_checkpoint(tmp_path / name)
            assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    saved = read_checkpoint(tmp_path / "last.pth")["epoch"] + 1 if (tmp_path / "last.pth").exists() else 0
    assert len(read_log(tmp_path)) == saved < 2


@pytest.fixture(scope="module")
def two_epochs(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    run_script("train.py", ["--data-path", folder, *TINY, "--epochs", "2", "--output-dir", out])
    return out


def test_checkpoints_with_non_finite_weights_are_refused(folder, two_epochs, tmp_path, capsys):
    broken = tmp_path / "run"
    broken.mkdir()
    state = read_checkpoint(two_epochs / "last.pth")
    state["model"]["head.weight"][0, 0] = float("nan")
    torch.save(state, broken / "last.pth")
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, tmp_path / "nan_best.pth")
    argv = ["--data-path", str(folder), *TINY, "--epochs", "3", "--output-dir", str(broken), "--resume", "auto"]
    line = fails_in_one_line(capsys, "train.py", train_script.main, [str(a) for a in argv])
    assert "its weights hold NaN or infinity (head.weight)" in line
    proc = run_script(
        "eval.py", ["--checkpoint", tmp_path / "nan_best.pth", "--data-path", folder, "--num-workers", "0"], check=False
    )
    assert "outputs are not finite" in one_line(proc)


def test_a_resume_applies_a_new_lr_weight_decay_and_epochs(folder, two_epochs, tmp_path):
    base = ["--data-path", folder, *TINY]
    new = ["--lr", "0.004", "--weight-decay", "0.3", "--epochs", "4"]
    part = tmp_path / "part"
    run_script("train.py", base + ["--epochs", "2", "--stop-after", "1", "--output-dir", part])
    resumed = run_script("train.py", base + new + ["--output-dir", part, "--resume", "auto"])
    assert "note: resuming with lr 0.004 (last.pth: 0.0005), epochs 4 (last.pth: 2), weight_decay 0.3" in resumed.stdout
    fresh = tmp_path / "fresh"
    run_script("train.py", base + new + ["--output-dir", fresh])
    # from the resumed epoch on, the lr is the new run's, epoch for epoch
    assert [r["lr"] for r in read_log(part)][1:] == [r["lr"] for r in read_log(fresh)][1:]
    state = read_checkpoint(part / "last.pth")
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.0, 0.3}
    recorded = yaml.safe_load((part / "config.yaml").read_text())
    assert (
        (recorded["lr"], recorded["weight_decay"], recorded["epochs"])
        == (0.004, 0.3, 4)
        == (
            state["config"]["lr"],
            state["config"]["weight_decay"],
            state["config"]["epochs"],
        )
    )


def test_checkpoints_carry_what_timm_tools_read(two_epochs):
    last = read_checkpoint(two_epochs / "last.pth")
    assert last["arch"] == "convit_tiny" and last["metric"] == last["val_acc1"]
    assert [r["epoch"] for r in last["log"]] == [0, 1] == [r["epoch"] for r in read_log(two_epochs)]
    for line in (two_epochs / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def test_the_run_never_writes_into_what_it_reads(folder, two_epochs, tmp_path, capsys):
    argv = ["--data-path", str(folder), *TINY, "--output-dir", str(folder / "runs")]
    assert "lies inside --data-path" in fails_in_one_line(capsys, "train.py", train_script.main, argv)
    argv = ["--data-path", str(folder), *TINY, "--output-dir", str(two_epochs), "--overwrite"]
    argv += ["--finetune", str(two_epochs / "best.pth")]
    assert "is a file this run writes in --output-dir" in fails_in_one_line(capsys, "train.py", train_script.main, argv)
    assert not (folder / "runs").exists() and (two_epochs / "best.pth").exists()


def test_finetune_refuses_integer_weights(folder, two_epochs, tmp_path, capsys):
    state = read_checkpoint(two_epochs / "best.pth")["model"]
    torch.save({k: v.long() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "ints.pth")
    argv = [
        "--data-path",
        str(folder),
        *TINY,
        "--output-dir",
        str(tmp_path / "o"),
        "--finetune",
        str(tmp_path / "ints.pth"),
    ]
    line = fails_in_one_line(capsys, "train.py", train_script.main, argv)
    assert "as torch.int64, not floating point" in line
    assert not (tmp_path / "o").exists()


def test_a_teacher_that_does_not_take_the_students_images(folder, tmp_path, capsys):
    argv = ["--data-path", str(folder), *TINY, "--output-dir", str(tmp_path / "o")]
    argv += ["--distillation-type", "soft", "--teacher", "deit_tiny_patch16_224"]
    line = fails_in_one_line(capsys, "train.py", train_script.main, argv)
    assert "does not take the student's 16x16 images" in line
    assert not (tmp_path / "o").exists()
