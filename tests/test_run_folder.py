import json
import os
import socket
import subprocess
import sys

import pytest

from convit.training.run_folder import (
    RunFolderError,
    RunLock,
    check_output_dir,
    clear_previous_run,
    lock_holder,
    read_log,
    write_summary,
)


def test_a_previous_run_is_never_clobbered(tmp_path):
    check_output_dir(tmp_path / "new", resuming=False, overwrite=False)  # a new folder is fine
    (tmp_path / "config.yaml").write_text("a: 1\n")
    (tmp_path / "log.jsonl").write_text("")
    check_output_dir(tmp_path, resuming=False, overwrite=False)  # a run that never finished an epoch
    (tmp_path / "log.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(RunFolderError, match=r"holds a previous run \(config.yaml, log.jsonl\)"):
        check_output_dir(tmp_path, resuming=False, overwrite=False)
    check_output_dir(tmp_path, resuming=True, overwrite=False)
    check_output_dir(tmp_path, resuming=False, overwrite=True)
    (tmp_path / "notes.txt").write_text("mine")
    clear_previous_run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # only the run's own files go
    with pytest.raises(RunFolderError, match="is a file"):
        check_output_dir(tmp_path / "notes.txt", resuming=False, overwrite=False)


def test_lock_stops_a_second_run_and_replaces_a_dead_ones(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock_holder(tmp_path) == {"pid": os.getpid(), "host": socket.gethostname(), "alive": True}
        with pytest.raises(RunFolderError, match=f"another run \\(pid {os.getpid()} on"):
            RunLock(tmp_path).acquire()
        with pytest.raises(RunFolderError, match="another run"):
            check_output_dir(tmp_path, resuming=True, overwrite=False)
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert lock_holder(tmp_path)["alive"] is False
    check_output_dir(tmp_path, resuming=True, overwrite=False)
    lock = RunLock(tmp_path).acquire()
    assert lock.note == f"removed a stale lock of a dead run (pid {pid})"
    lock.release()


def test_truncated_last_log_line_is_dropped_with_a_note(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 0, "a": 1}\n{"epoch": 1, "a": 2}\n{"epoch": 2, "a"')
    rows, note = read_log(path, before_epoch=5)
    assert [r["epoch"] for r in rows] == [0, 1] and "truncated last line" in note
    assert read_log(path, before_epoch=1)[0] == [{"epoch": 0, "a": 1}]
    path.write_text('{"epoch": 0\n{"epoch": 1}\n')
    with pytest.raises(RunFolderError, match="log.jsonl:1 is not a JSON line"):
        read_log(path, before_epoch=5)


def test_summary_csv(tmp_path):
    rows = [
        {"epoch": 0, "lr": 0.1, "train_loss": 2.0, "val_acc1": 50.0, "epoch_time_s": 1.0, "locality": {}},
        {"epoch": 1, "lr": 0.05, "train_loss": 1.0, "val_acc1": 70.0, "epoch_time_s": 1.0},
    ]
    write_summary(tmp_path / "summary.csv", rows)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,train_loss,val_acc1,epoch_time_s,train_images_per_s"
    assert lines[2].startswith("1,0.05,1.0,70.0")
