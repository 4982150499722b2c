"""The output folder of a run: never clobbered, locked while a run writes to it, its log read back safely."""

import csv
import fcntl
import json
import os
import socket
from pathlib import Path

from ..errors import UserError

RUN_FILES = ("config.yaml", "log.jsonl", "summary.csv", "last.pth", "best.pth")
LOCK_NAME = ".lock"


class RunFolderError(UserError):
    """An output folder that holds another run, or is in use."""


def check_output_dir(
    out: Path, resuming: bool, overwrite: bool, resume_auto: bool = False, check_lock: bool = True
) -> None:
    """Stop before anything is written when ``out`` cannot be a run folder, or holds a previous run that this
    one would destroy. ``resume_auto``: ``--resume auto``, which starts afresh only in a folder without a run.

    Read-only: every rank may call it; only the rank that will take the lock should ``check_lock``.
    """
    if not str(out).strip():
        raise RunFolderError("--output-dir is empty; name a folder, e.g. --output-dir out/run1")
    out = Path(out)
    check_creatable(out)
    held = lock_holder(out) if check_lock else None
    if held is not None:
        raise RunFolderError(_held_message(out, held))
    # a run that never finished an epoch (config.yaml and an empty log) leaves nothing worth keeping
    previous = [name for name in RUN_FILES if (out / name).exists() and (out / name).stat().st_size > 0]
    if previous == ["config.yaml"]:
        previous = []
    if previous and resume_auto and "last.pth" not in previous:
        raise RunFolderError(
            f"--resume auto: '{out}' holds a previous run ({', '.join(previous)}) but no last.pth to continue "
            "from; put last.pth back, replace the run with --overwrite, or choose another --output-dir"
        )
    if previous and not resuming and not overwrite:
        raise RunFolderError(
            f"'{out}' holds a previous run ({', '.join(previous)}); continue it with --resume auto, "
            "replace it with --overwrite, or choose another --output-dir"
        )


def check_creatable(out: Path) -> None:
    """A one-line error unless ``out`` is a folder, or can be made one, that this process may write in."""
    out = Path(out)
    limit = 255
    for part in out.parts:
        if len(os.fsencode(part)) > limit:
            raise RunFolderError(f"--output-dir: the name '{part[:40]}...' is longer than {limit} bytes; shorten it")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--output-dir '{out}' is a file; choose a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"--output-dir '{out}': '{existing}' is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK) or _is_virtual(existing):
        raise RunFolderError(f"--output-dir '{out}': cannot write in '{existing}'; choose a folder you can write to")


def _is_virtual(path: Path) -> bool:
    """True on kernel file systems (/proc, /sys) where os.access says yes to root but nothing can be made."""
    resolved = Path(os.path.realpath(path))
    return any(resolved == Path(v) or Path(v) in resolved.parents for v in ("/proc", "/sys"))


def check_inputs_apart(cfg, out: Path) -> None:
    """A one-line error when the run would write into what it reads: the output folder inside the data
    folder (new folders there would become classes), or an input file that is one of the run's own files."""
    out = Path(out).resolve()
    if cfg.data_path:
        data = Path(cfg.data_path).resolve()
        if out == data or data in out.parents:
            raise RunFolderError(
                f"--output-dir '{cfg.output_dir}' lies inside --data-path '{cfg.data_path}'; the run would write "
                "into its own data: choose a folder outside it"
            )
    own = {out / name for name in RUN_FILES}
    for flag in ("finetune", "teacher", "pretrained_file"):
        value = getattr(cfg, flag, None)
        if value and value != "pretrained" and Path(value).resolve() in own:
            raise RunFolderError(
                f"--{flag.replace('_', '-')} '{value}' is a file this run writes in --output-dir; copy it elsewhere "
                "or choose another --output-dir"
            )


def clear_previous_run(out: Path) -> None:
    """Remove the files of a previous run (``--overwrite``), so that none of them mixes with the new one."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _held_message(out: Path, held: dict) -> str:
    return (
        f"another run (pid {held['pid']} on {held['host']}) holds the lock {Path(out) / LOCK_NAME}; wait for it to "
        "end or choose another --output-dir (if no such run exists, e.g. the folder is on a network file system "
        "without locks, delete that file)"
    )


def lock_holder(out: Path) -> dict | None:
    """{pid, host, alive} of the run that holds ``out``'s lock, or None when no process holds it.

    The lock is the OS's (``fcntl.flock``), which dies with the process that held it: a file left by a
    killed run, another host's run or a reused pid never counts as held.
    """
    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {**_lock_info(fd), "alive": True}
        except OSError:  # a file system without locks: nothing to test
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_info(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return {"pid": int(info["pid"]), "host": str(info["host"])}
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
        return {"pid": "?", "host": "?"}


class RunLock:
    """``OUT/.lock``, held with ``fcntl.flock`` for the lifetime of a run: a second run into the same folder
    stops with one line. The OS releases the lock when the process ends however it ends (kill -9 included),
    so a stale file never blocks a resume. On network file systems flock is as good as the server's locks
    (NFSv4 and Lustre with flock enabled honour it across hosts); where the file system has none, the run
    goes on unlocked and says so.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.fd = None
        self.note = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _lock_info(fd)
                os.close(fd)
                raise RunFolderError(_held_message(self.path.parent, info)) from None
            except OSError as e:
                os.close(fd)
                self.note = (
                    f"the file system of '{self.path.parent}' has no file locks ({e.strerror}); running unlocked"
                )
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and our lock
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
            self.fd = fd
            return self
        raise RunFolderError(
            f"cannot lock '{self.path.parent}': another run keeps taking it; choose another --output-dir"
        )

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held, so that no one locks a file about to vanish
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
