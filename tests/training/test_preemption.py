"""Interruptions of a real train.py: signals at every moment of an epoch, kill -9 between the epoch-end
writes, a full disk. After a resume, the weights and the run's record equal an uninterrupted run's."""

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import NO_AUG, ROOT, TINY_MODEL, child_env, read_log, run_script

from convit.training.preemption import Preempted
from convit.weights import read_checkpoint

TIMING = ("epoch_time_s", "train_images_per_s")
PREEMPTED = 3


@pytest.fixture(scope="module")
def args(folder):
    # 3 epochs of 3 steps; EMA, so that every piece of state must survive
    return [
        "--data-path",
        folder,
        *TINY_MODEL,
        *NO_AUG,
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--model-ema",
        "--model-ema-decay",
        "0.9",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "1",
    ]


@pytest.fixture(scope="module")
def full(args, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run_script("train.py", args + ["--output-dir", out])
    return out


def summary(out) -> list[dict]:
    with open(out / "summary.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def assert_same_run(full, out) -> None:
    a, b = read_checkpoint(full / "last.pth"), read_checkpoint(out / "last.pth")
    for key in ("model", "model_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert b["epoch"] == a["epoch"] and b["best_epoch"] == a["best_epoch"]
    assert summary(out) == summary(full)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(read_log(out)) == strip(read_log(full))
    assert read_checkpoint(out / "best.pth")["epoch"] == a["best_epoch"]
    for name, value in read_checkpoint(full / "best.pth")["model"].items():
        assert torch.equal(value, read_checkpoint(out / "best.pth")["model"][name]), name
    assert not (out / ".lock").exists()


def interrupted(args, out, action, where, count):
    cmd = [sys.executable, str(ROOT / "tests" / "interrupt_harness.py"), action, where, str(count), "--"]
    cmd += [str(a) for a in args + ["--output-dir", out]]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize(
    "action, where, count",
    [
        ("TERM", "step", 5),  # inside epoch 1, its second step
        ("INT", "step", 1),  # Ctrl-C in the first step: no epoch complete
        ("USR1", "step", 9),  # the last step of the last epoch
        ("TERM", "last.pth", 2),
        ("TERM", "best.pth", 1),
        ("TERM", "log.jsonl", 2),
    ],
)
def test_a_stop_signal_at_any_moment_then_resume(args, full, tmp_path, action, where, count):
    proc = interrupted(args, tmp_path, action, where, count)
    if where == "step" and count == 9:
        # the signal came in the last step: the run ends as it would have, with nothing left to train
        assert proc.returncode in (0, PREEMPTED), proc.stderr
    else:
        assert proc.returncode == PREEMPTED, proc.stdout[-2000:] + proc.stderr[-2000:]
        lines = [line for line in proc.stdout.splitlines() if line.startswith("stopped by")]
        assert len(lines) == 1 and f"SIG{action}" in lines[0] and "--resume auto" in lines[0], proc.stdout
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".lock").exists()
    run_script("train.py", args + ["--output-dir", tmp_path, "--resume", "auto"])
    assert_same_run(full, tmp_path)


@pytest.mark.parametrize("where", ["last.pth", "best.pth"])
def test_kill_9_between_the_epoch_end_writes_is_repaired(args, full, tmp_path, where):
    proc = interrupted(args, tmp_path, "KILL", where, 2 if where == "last.pth" else 1)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_script("train.py", args + ["--output-dir", tmp_path, "--resume", "auto"])
    if where == "last.pth":  # the second last.pth (epoch 1) was written, its log row was not
        assert "log.jsonl lacked epoch(s) [1]" in resumed.stdout, resumed.stdout
    assert_same_run(full, tmp_path)


@pytest.mark.parametrize("where", ["last.pth", "log.jsonl"])
def test_a_full_disk_is_one_line_and_loses_nothing(args, full, tmp_path, where):
    proc = interrupted(args, tmp_path, "ENOSPC", where, 2)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--resume auto" in lines[0], lines
    assert read_checkpoint(tmp_path / "last.pth")["epoch"] == (0 if where == "last.pth" else 1)
    run_script("train.py", args + ["--output-dir", tmp_path, "--resume", "auto"])
    assert_same_run(full, tmp_path)


def wait_for(proc, text, timeout=180):
    start, seen = time.time(), []
    while time.time() - start < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never printed {text!r}:\n{''.join(seen)}")


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_from_outside_then_resume(args, full, tmp_path, nproc):
    """A scheduler's SIGTERM to train.py, or to torchrun (which forwards it to every rank)."""
    launch = [sys.executable, str(ROOT / "train.py")]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launch.append(str(ROOT / "train.py"))
    flags = [str(a) for a in args + ["--output-dir", tmp_path, "--batch-size", str(8 // nproc)]]
    proc = subprocess.Popen(
        launch + flags, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for(proc, "epoch 0/2")
    proc.send_signal(signal.SIGTERM)
    output = proc.stdout.read()
    proc.wait(timeout=120)
    if nproc == 1:
        assert proc.returncode == PREEMPTED, output
    assert output.count("stopped by SIGTERM") == 1, output
    assert "convit/" not in output, output  # no traceback of ours (torchrun prints its own SignalException)
    assert not (tmp_path / ".lock").exists()
    assert len(read_log(tmp_path)) == read_checkpoint(tmp_path / "last.pth")["epoch"] + 1
    if nproc == 1:
        run_script("train.py", args + ["--output-dir", tmp_path, "--resume", "auto"])
        assert_same_run(full, tmp_path)
    else:  # the resumed job goes on from the same last.pth, under torchrun again
        run_script("train.py", args + ["--output-dir", tmp_path, "--resume", "auto", "--batch-size", "4"], nproc=2)
        assert len(read_log(tmp_path)) == 3 and read_checkpoint(tmp_path / "last.pth")["epoch"] == 2


def test_the_slurm_script_stops_the_run_and_requeues_at_the_time_limit(args, tmp_path):
    """scripts/train.sbatch under stand-ins for srun and scontrol: USR1 (Slurm's --signal=B:USR1@300)
    stops the run cleanly and requeues the job; the requeued job finishes the run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> {tmp_path / "scontrol.log"}; fi\n'
    )
    (bin_dir / "torchrun").write_text(f'#!/bin/sh\nexec {sys.executable} -m torch.distributed.run "$@"\n')
    for tool in ("srun", "scontrol", "torchrun"):
        (bin_dir / tool).chmod(0o755)
    env = child_env()
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_NNODES="1",
        SLURM_GPUS_ON_NODE="1",
        SLURM_JOB_NODELIST="node1",
    )
    out = tmp_path / "run"
    job = ["bash", str(ROOT / "scripts" / "train.sbatch"), *[str(a) for a in args], "--output-dir", str(out)]
    proc = subprocess.Popen(job, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(proc, "epoch 0/2")
    proc.send_signal(signal.SIGUSR1)
    output = proc.stdout.read()
    proc.wait(timeout=120)
    assert "time limit near" in output and output.count("stopped by SIGTERM") == 1, output
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert not (out / ".lock").exists() and (out / "last.pth").exists()
    requeued = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert requeued.returncode == 0, requeued.stdout[-2000:] + requeued.stderr[-2000:]
    assert len(read_log(out)) == 3 and read_checkpoint(out / "last.pth")["epoch"] == 2


def test_the_stopped_line_counts_epochs_from_0_as_the_log_does():
    from convit.training.train import preempted_line

    mid = preempted_line(Preempted(signal.SIGTERM, 2, 4), Path("out"))
    assert "at step 5 of epoch 2;" in mid and "last.pth holds epoch 1 " in mid
    after = preempted_line(Preempted(signal.SIGUSR1, 3, None), Path("out"))
    assert "SIGUSR1 after epoch 2;" in after and "last.pth holds epoch 2 " in after
    assert "no epoch was complete" in preempted_line(Preempted(signal.SIGINT, 0, 0), Path("out"))
