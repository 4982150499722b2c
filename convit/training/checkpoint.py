"""Training checkpoints: atomic saving and the state a run resumes from (reading is ``convit.weights``)."""

import os
import tempfile
from pathlib import Path

import torch

from ..weights import FORMAT, CheckpointError

__all__ = ["FORMAT", "save_checkpoint", "training_state"]


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, then os.replace.

    A crash mid-write leaves the previous file intact and no partial file under `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def training_state(ckpt: dict) -> dict:
    """Our `last.pth` contents, checked to be a resumable checkpoint."""
    if ckpt.get("format") != FORMAT or "optimizer" not in ckpt:
        raise CheckpointError(
            "--resume needs a last.pth written by this train.py (other checkpoints hold weights only)"
        )
    return ckpt
