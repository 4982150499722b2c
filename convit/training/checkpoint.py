"""Training checkpoints, the one place of their format: building them, saving them atomically, the epoch end as
one transaction, and the state a run resumes from (reading any weights file is ``convit.weights``).

A checkpoint is a dict (``build_checkpoint``): ``format``, ``model_name`` (and timm's ``arch``), ``model_kwargs``,
``num_classes``, ``class_names``, ``config``, ``model``, ``epoch``; ``best.pth`` adds the metrics (``val_acc1``,
``metric``, ``best_acc1``, ``best_epoch``, ``model_ema``, ``finetuned_from``) and ``last.pth`` the training state
(``optimizer``, ``scheduler``, ``scaler``, ``sampler``, ``num_updates``) and every ``log`` row.

``last.pth`` is the record of a run: besides the training state it carries every log row and the epoch
of the best weights. It is written first at each epoch end; ``best.pth``, ``log.jsonl`` and
``summary.csv`` follow and can always be rebuilt from it, which a resume does when it finds them out
of step (an interruption between those writes).
"""

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import class_difference
from ..errors import UserError
from ..run_log import read_log
from ..weights import FORMAT, CheckpointError, is_training_checkpoint, read_checkpoint
from .config import Config, to_dict
from .run_folder import write_summary

# What a resumed run must share with the run it continues: the weights, optimizer state and schedule in last.pth
# were made for these (the optimizer's parameter groups for freeze, layer_decay and gate_lr_scale, the schedule's
# updates per epoch for accum_steps).
RESUME_FIXED = (
    "model",
    "model_kwargs",
    "img_size",
    "opt",
    "sched",
    "model_ema",
    "sampling_ratio",
    "hold_images_seen",
    "freeze",
    "layer_decay",
    "accum_steps",
    "gate_lr_scale",
)
# What the weights alone keep (best.pth): the training state is left out.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "sampler", "num_updates", "log")


def build_checkpoint(
    model: torch.nn.Module,
    model_name: str,
    model_kwargs: dict,
    class_names: Sequence[str] | None,
    *,
    num_classes: int | None = None,
    config: dict | None = None,
    epoch: int | None = None,
    **state,
) -> dict:
    """A checkpoint of ``model`` (a ``model_name`` variant built with ``model_kwargs``) in train.py's format.

    ``state`` adds entries; a value with a ``state_dict()`` (optimizer, scheduler, scaler, an EMA's module) is
    stored as its state dict.
    """
    ckpt = {
        "format": FORMAT,
        "model_name": model_name,
        "arch": model_name,
        "model_kwargs": dict(model_kwargs),
        "num_classes": len(class_names) if class_names is not None else num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "config": dict(config or {}),
        "model": model.state_dict(),
        "epoch": epoch,
    }
    for key, value in state.items():
        ckpt[key] = value.state_dict() if hasattr(value, "state_dict") else value
    return ckpt


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, then os.replace.

    A crash mid-write leaves the previous file intact and no partial file under ``path``; temp files
    that an earlier crash (a kill) left behind are removed first. The file follows the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_write_failure(e):
            raise WriteFailed(
                f"cannot write {path} ({_reason(e)}); the previous {path.name} is intact: free space, then "
                "continue with --resume auto"
            ) from None
        raise


class WriteFailed(UserError):
    """A run file could not be written (a full disk, a quota, a vanished mount)."""


def _is_write_failure(e: BaseException) -> bool:
    # torch.save reports a short write as RuntimeError("... unexpected pos ..."), an OSError as itself
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and "unexpected pos" in str(e))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno)
    return "the file system refused the write (a full disk?)" if "unexpected pos" in str(e) else str(e)[:120]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def training_state(ckpt: dict) -> dict:
    """Our `last.pth` contents, checked to be a resumable checkpoint."""
    if not is_training_checkpoint(ckpt) or "optimizer" not in ckpt:
        raise CheckpointError(
            "--resume needs a last.pth written by this train.py (other checkpoints hold weights only)"
        )
    return ckpt


def check_resumable(state: dict, cfg: Config, class_names: list[str], path) -> None:
    """Stop with one line when the command line changed what ``last.pth`` was made for, or the classes."""
    before, now = state.get("config", {}), to_dict(cfg)
    for key in RESUME_FIXED:
        if key in before and before[key] != now[key]:
            raise CheckpointError(
                f"--resume {path}: the run was trained with {key}={before[key]!r}, the command line now says "
                f"{key}={now[key]!r}; drop the change, or start a new run in another --output-dir"
            )
    stored = state.get("class_names")
    if stored is not None and list(stored) != list(class_names):
        raise CheckpointError(f"--resume {path}: {class_difference(stored, class_names)}")


def jsonable(row):
    """``row`` with NaN and infinities as null, so that every log line is valid JSON."""
    if isinstance(row, dict):
        return {k: jsonable(v) for k, v in row.items()}
    if isinstance(row, (list, tuple)):
        return [jsonable(v) for v in row]
    if isinstance(row, float) and not math.isfinite(row):
        return None
    return row


def write_log(out: Path, rows: list[dict]) -> None:
    """``log.jsonl`` and ``summary.csv`` rewritten whole from ``rows`` (each through a temp file)."""
    log = out / "log.jsonl"
    tmp = log.with_name(f".{log.name}.tmp")
    try:
        tmp.write_text("".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in rows))
        os.replace(tmp, log)
        write_summary(out / "summary.csv", rows)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(
            f"cannot write the log in {out} ({os.strerror(e.errno) if e.errno else e}); last.pth holds it: "
            "free space, then continue with --resume auto"
        ) from None


def best_weights(last: dict) -> dict:
    """The ``best.pth`` of the epoch ``last`` holds: its weights without the training state."""
    return {k: v for k, v in last.items() if k not in TRAINING_STATE}


def repair_run_record(out: Path, state: dict, start_epoch: int) -> tuple[list[dict], list[str]]:
    """Make ``best.pth``, ``log.jsonl`` and ``summary.csv`` agree with ``last.pth`` (``state``): (the log rows,
    notes of what was repaired). Checkpoints older than the log-carrying format keep the log file's rows."""
    notes = []
    rows = state.get("log")
    if rows is None:
        rows, note = read_log(out / "log.jsonl", start_epoch)
        notes += [note] if note else []
    else:
        try:
            on_disk, _ = read_log(out / "log.jsonl", start_epoch + 10**9)
        except UserError:
            on_disk = None
        if on_disk != jsonable(rows):
            have = {r.get("epoch") for r in on_disk or []}
            missing = [r["epoch"] for r in rows if r["epoch"] not in have]
            what = f"lacked epoch(s) {missing}" if missing and on_disk is not None else "was out of step or damaged"
            notes.append(f"log.jsonl {what} (an interrupted epoch end); rebuilt it and summary.csv from last.pth")
    best_epoch = state.get("best_epoch")
    if best_epoch is not None and best_epoch == state.get("epoch"):
        path = out / "best.pth"
        try:
            current = read_checkpoint(path).get("epoch") if path.is_file() else None
        except CheckpointError:
            current = None
        if current != best_epoch:
            save_checkpoint(best_weights(state), path)
            notes.append(f"best.pth did not hold the best epoch ({best_epoch}); rewrote it from last.pth")
    write_log(out, rows)
    return rows, notes
