"""Training checkpoints: atomic saving and the state a run resumes from (reading is ``convit.weights``)."""

import os
import tempfile
from pathlib import Path

import torch

from ..weights import FORMAT, CheckpointError
from .config import Config, to_dict

__all__ = ["FORMAT", "check_resumable", "save_checkpoint", "training_state"]

# What a resumed run must share with the run it continues (the weights, optimizer state and schedule
# in last.pth were made for these).
RESUME_FIXED = ("model", "model_kwargs", "img_size", "opt", "sched", "model_ema", "sampling_ratio", "hold_images_seen")


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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def training_state(ckpt: dict) -> dict:
    """Our `last.pth` contents, checked to be a resumable checkpoint."""
    if ckpt.get("format") != FORMAT or "optimizer" not in ckpt:
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


def class_difference(stored: list[str], data: list[str]) -> str:
    """One line saying how the checkpoint's class names differ from the data's."""
    if len(stored) != len(data):
        return f"the checkpoint has {len(stored)} classes, the data {len(data)}"
    diff = [(a, b) for a, b in zip(stored, data) if a != b]
    a, b = diff[0]
    return f"the checkpoint's classes differ from the data's at {len(diff)} place(s), e.g. '{a}' vs '{b}'"
