import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

from convit.training.run_folder import (
    RunFolderError,
    RunLock,
    check_output_dir,
    clear_previous_run,
    lock_holder,
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


def test_lock_stops_a_second_run_and_dies_with_its_holder(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert lock_holder(tmp_path) == {"pid": os.getpid(), "host": socket.gethostname(), "alive": True}
        with pytest.raises(RunFolderError, match=f"another run \\(pid {os.getpid()} on .*holds the lock .*\\.lock"):
            RunLock(tmp_path).acquire()
        with pytest.raises(RunFolderError, match="delete that file"):
            check_output_dir(tmp_path, resuming=True, overwrite=False)
        check_output_dir(tmp_path, resuming=True, overwrite=False, check_lock=False)  # the other ranks
    assert not (tmp_path / ".lock").exists()
    # a holder killed with -9 releases the OS lock: its file stays, and blocks nothing
    code = f"from convit.training.run_folder import RunLock; RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=child_env())
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderError, match=f"pid {holder.pid} on"):
        check_output_dir(tmp_path, resuming=True, overwrite=False)
    holder.kill()
    holder.wait()
    assert (tmp_path / ".lock").exists() and lock_holder(tmp_path) is None
    RunLock(tmp_path).acquire().release()


@pytest.mark.parametrize("owner", ["another host", "a reused pid", "pid 1", "garbage"])
def test_a_lock_file_nobody_holds_never_blocks(tmp_path, owner):
    info = {
        "another host": {"pid": 12345, "host": "gpu-node-017"},
        "a reused pid": {"pid": os.getpid(), "host": socket.gethostname()},
        "pid 1": {"pid": 1, "host": socket.gethostname()},
    }.get(owner)
    (tmp_path / ".lock").write_text(json.dumps(info) if info else "\x00 not json")
    assert lock_holder(tmp_path) is None
    check_output_dir(tmp_path, resuming=True, overwrite=False)
    with RunLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_output_dirs_that_cannot_be_made_are_refused_first(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in [
        (tmp_path / "file" / "run", "is a file, so no folder can be made under it"),
        (Path("/proc/convit-run"), "cannot write in '/proc'"),
        (tmp_path / ("n" * 300), "longer than 255 bytes"),
        ("", "--output-dir is empty"),
    ]:
        with pytest.raises(RunFolderError, match=message):
            check_output_dir(out, resuming=False, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_resume_auto_without_last_pth_keeps_the_previous_run(tmp_path):
    (tmp_path / "config.yaml").write_text("a: 1\n")
    check_output_dir(tmp_path, resuming=True, overwrite=False, resume_auto=True)  # never finished an epoch
    (tmp_path / "best.pth").write_bytes(b"weights")
    (tmp_path / "log.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(RunFolderError, match=r"--resume auto: .* \(config.yaml, log.jsonl, best.pth\) but no last.pth"):
        check_output_dir(tmp_path, resuming=True, overwrite=False, resume_auto=True)


def test_summary_csv(tmp_path):
    rows = [
        {"epoch": 0, "lr": 0.1, "train_loss": 2.0, "val_acc1": 50.0, "epoch_time_s": 1.0, "locality": {}},
        {"epoch": 1, "lr": 0.05, "train_loss": 1.0, "val_acc1": 70.0, "epoch_time_s": 1.0},
    ]
    write_summary(tmp_path / "summary.csv", rows)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,train_loss,val_acc1,epoch_time_s,train_images_per_s"
    assert lines[2].startswith("1,0.05,1.0,70.0")
