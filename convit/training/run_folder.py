"""The output folder of a run: never clobbered, locked while a run writes to it, its log read back safely."""

import csv
import json
import os
import socket
from pathlib import Path

from ..errors import UserError

RUN_FILES = ("config.yaml", "log.jsonl", "summary.csv", "last.pth", "best.pth")
LOCK_NAME = ".lock"


class RunFolderError(UserError):
    """An output folder that holds another run, or is in use."""


def check_output_dir(out: Path, resuming: bool, overwrite: bool) -> None:
    """Stop before anything is written when ``out`` holds a previous run that this one would destroy.

    Read-only: every rank may call it.
    """
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--output-dir '{out}' is a file; choose a folder")
    held = lock_holder(out)
    if held is not None and held["alive"]:
        raise RunFolderError(
            f"another run (pid {held['pid']} on {held['host']}) is writing to '{out}'; "
            "wait for it to end or choose another --output-dir"
        )
    # a run that never finished an epoch (config.yaml and an empty log) leaves nothing worth keeping
    previous = [name for name in RUN_FILES if (out / name).exists() and (out / name).stat().st_size > 0]
    if previous == ["config.yaml"]:
        previous = []
    if previous and not resuming and not overwrite:
        raise RunFolderError(
            f"'{out}' holds a previous run ({', '.join(previous)}); continue it with --resume auto, "
            "replace it with --overwrite, or choose another --output-dir"
        )


def clear_previous_run(out: Path) -> None:
    """Remove the files of a previous run (``--overwrite``), so that none of them mixes with the new one."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(out: Path) -> dict | None:
    """{pid, host, alive} of the run that holds ``out``'s lock, or None. A lock from another host counts as alive."""
    try:
        info = json.loads((out / LOCK_NAME).read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        return {"pid": -1, "host": "?", "alive": False}  # a half-written lock: its writer died
    alive = _pid_alive(pid) if host == socket.gethostname() else True
    return {"pid": pid, "host": host, "alive": alive}


class RunLock:
    """``OUT/.lock`` for the lifetime of a run: a second run into the same folder stops with one line.

    A lock left by a process that no longer exists (on this host) is reported and replaced.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.held = False
        self.note = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                held = lock_holder(self.path.parent)
                if held is not None and held["alive"]:
                    raise RunFolderError(
                        f"another run (pid {held['pid']} on {held['host']}) is writing to '{self.path.parent}'; "
                        "wait for it to end or choose another --output-dir"
                    ) from None
                self.note = f"removed a stale lock of a dead run (pid {held['pid'] if held else '?'})"
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
            self.held = True
            return self
        raise RunFolderError(
            f"cannot lock '{self.path.parent}': another run keeps taking it; choose another --output-dir"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_log(path: Path, before_epoch: int) -> tuple[list[dict], str | None]:
    """(log rows of epochs before ``before_epoch``, a note or None). A truncated last line (a kill
    mid-write) is dropped with a note; a damaged line elsewhere is a one-line error."""
    if not path.is_file():
        return [], None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows, note = [], None
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                note = f"dropped a truncated last line of {path}"
                break
            raise RunFolderError(f"{path}:{number} is not a JSON line; repair or remove the file") from None
    return [r for r in rows if isinstance(r, dict) and r.get("epoch", -1) < before_epoch], note


SUMMARY_FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_acc1", "val_acc5", "val_acc1_ema", "val_acc5_ema")


def write_summary(path: Path, rows: list[dict]) -> None:
    """``summary.csv`` as timm's: one row per epoch with the scalar metrics (rewritten whole, so resumes agree)."""
    fields = [f for f in SUMMARY_FIELDS if any(f in r for r in rows)] + ["epoch_time_s", "train_images_per_s"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
